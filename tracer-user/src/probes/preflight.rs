//! Checks before loading anything, so a missing privilege is one clear line and not an EPERM
//! from deep inside the loader.

use std::fs;

/// Capabilities slowtrace uses, with why.
const NEEDED: &[(u32, &str, &str)] = &[
    (39, "CAP_BPF", "load eBPF programs and maps"),
    (
        38,
        "CAP_PERFMON",
        "attach tracepoints and read process memory from eBPF",
    ),
    (
        19,
        "CAP_SYS_PTRACE",
        "read /proc/PID/fd of other users' processes",
    ),
];
const CAP_SYS_ADMIN: u32 = 21;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "slowtrace needs root or these capabilities: {missing} \
         (run it with sudo, or: setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep $(which slowtrace))"
    )]
    Privileges { missing: String },
    #[error("this kernel has no BPF ring buffer (needs Linux 5.8 or newer; found {0})")]
    KernelTooOld(String),
}

/// Effective capability set of this process.
fn cap_eff() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn check() -> Result<Vec<String>, PreflightError> {
    let mut notes = Vec::new();
    let caps = cap_eff();
    let has = |bit: u32| caps & (1 << bit) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|(bit, ..)| !has(*bit) && !admin)
        .map(|(_, name, why)| format!("{name} (to {why})"))
        .collect();
    if !missing.is_empty() {
        return Err(PreflightError::Privileges {
            missing: missing.join(", "),
        });
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim().to_owned();
    if kernel_older_than(&release, (5, 8)) {
        return Err(PreflightError::KernelTooOld(release));
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        // Syscall tracepoints do not need BTF; say so instead of failing.
        notes.push(
            "no kernel BTF at /sys/kernel/btf/vmlinux: request timing works, \
             BTF-based probes will be unavailable"
                .to_owned(),
        );
    }
    Ok(notes)
}

fn kernel_older_than(release: &str, (maj, min): (u32, u32)) -> bool {
    let mut it = release.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(a), Some(b)) => (a, b) < (maj, min),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_versions() {
        assert!(super::kernel_older_than("5.4.0-150-generic", (5, 8)));
        assert!(!super::kernel_older_than("6.18.44-fc-v657", (5, 8)));
        assert!(!super::kernel_older_than("garbage", (5, 8)));
    }
}
