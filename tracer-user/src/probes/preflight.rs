//! Checks before loading anything, so a missing privilege is one clear line and not an EPERM
//! from deep inside the loader.

use std::fs;

/// Capabilities slowtrace cannot start without (CAP_SYS_ADMIN stands in for all three), with why.
pub const NEEDED: &[(u32, &str, &str)] = &[
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
pub const CAP_SYS_ADMIN: u32 = 21;

/// Capabilities that only some uses need: what is lost without each.
pub const OPTIONAL: &[(u32, &str, &str)] = &[
    (
        CAP_SYS_ADMIN,
        "CAP_SYS_ADMIN",
        "mount tracefs when it is not mounted",
    ),
    (
        2,
        "CAP_DAC_READ_SEARCH",
        "read /proc/PID/maps and binaries of other users' processes (symbols, Python)",
    ),
    (
        34,
        "CAP_SYSLOG",
        "name kernel frames when kernel.kptr_restrict is 1",
    ),
    (
        5,
        "CAP_KILL",
        "send --interrupt-after/--dump-signal to other users' processes",
    ),
];

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
pub fn cap_eff() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The needed capabilities this process lacks, as `CAP_X (to why)`.
pub fn missing(caps: u64) -> Vec<String> {
    let has = |bit: u32| caps & (1 << bit) != 0;
    let admin = has(CAP_SYS_ADMIN);
    NEEDED
        .iter()
        .filter(|(bit, ..)| !has(*bit) && !admin)
        .map(|(_, name, why)| format!("{name} (to {why})"))
        .collect()
}

pub fn check() -> Result<Vec<String>, PreflightError> {
    let mut notes = Vec::new();
    let missing = missing(cap_eff());
    if !missing.is_empty() {
        return Err(PreflightError::Privileges {
            missing: missing.join(", "),
        });
    }
    let release = kernel_release();
    if kernel_older_than(&release, MIN_KERNEL) {
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

/// The BPF ring buffer arrived in Linux 5.8.
pub const MIN_KERNEL: (u32, u32) = (5, 8);

pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

pub fn kernel_older_than(release: &str, (maj, min): (u32, u32)) -> bool {
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
