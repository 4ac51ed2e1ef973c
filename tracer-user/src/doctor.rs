//! `slowtrace doctor`: what this host allows, checked the way `record` would use it. The checks
//! are the ones `record` runs (preflight, BTF, tracefs, `Probes::load`, the CPython reader), here
//! run to the end and reported one per line instead of stopping at the first failure.
//!
//! The attach types are tried for real: every program `record` attaches is loaded and attached
//! with no target registered (the kernel side ignores every process until one is), and dropped.

use std::{path::Path, process::ExitCode};

use crate::{
    cli::DoctorArgs,
    exit,
    probes::{btf, preflight, tracefs, Plan, Probes, ProfileSettings},
    python::{PyError, PythonProcess},
};

/// What a failed check costs `record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impact {
    /// Nothing `record` does by default (said for information).
    Info,
    /// `record` runs, without something (said on the line).
    Degrades,
    /// `record` would not start; the exit code it would give.
    Blocks(u8),
}

#[derive(Debug, Clone)]
pub struct Check {
    pub ok: bool,
    pub name: String,
    pub detail: String,
    /// What a failure costs (unused when ok).
    pub impact: Impact,
}

impl Check {
    fn new(ok: bool, name: impl Into<String>, detail: impl Into<String>, impact: Impact) -> Self {
        Self {
            ok,
            name: name.into(),
            detail: detail.into(),
            impact,
        }
    }

    fn line(&self) -> String {
        let mark = match (self.ok, self.impact) {
            (true, _) => "✓",
            (false, Impact::Info) => "-",
            (false, _) => "✗",
        };
        let cost = match (self.ok, self.impact) {
            (false, Impact::Degrades) => " [record runs degraded]",
            (false, Impact::Blocks(_)) => " [record cannot start]",
            _ => "",
        };
        format!("  {mark} {:<38} {}{cost}", self.name, self.detail)
    }
}

/// The exit code for a set of checks: the first blocking failure's code, else 1 when something
/// degrades, else 0.
pub fn verdict(checks: &[Check]) -> u8 {
    let failed = || checks.iter().filter(|c| !c.ok);
    if let Some(code) = failed().find_map(|c| match c.impact {
        Impact::Blocks(code) => Some(code),
        _ => None,
    }) {
        return code;
    }
    if failed().any(|c| c.impact == Impact::Degrades) {
        exit::DOCTOR_DEGRADED
    } else {
        0
    }
}

/// A function of ours that nothing calls in normal use: the uprobe check attaches to it.
#[no_mangle]
#[inline(never)]
pub extern "C" fn slowtrace_doctor_uprobe_target() {
    std::hint::black_box(());
}

pub fn run(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut sections: Vec<(&str, Vec<Check>)> = Vec::new();
    let caps = preflight::cap_eff();
    let has = |bit: u32| caps & (1 << bit) != 0;

    let release = preflight::kernel_release();
    let btf = btf::Btf::from_file(Path::new(btf::VMLINUX)).and_then(|b| btf::kernel_offsets(&b));
    let tracefs = tracefs::find();
    let mut kernel = vec![Check::new(
        !preflight::kernel_older_than(&release, preflight::MIN_KERNEL),
        "kernel",
        format!(
            "Linux {release} (the BPF ring buffer needs {}.{}+)",
            preflight::MIN_KERNEL.0,
            preflight::MIN_KERNEL.1
        ),
        Impact::Blocks(exit::UNAVAILABLE),
    )];
    kernel.push(Check::new(
        btf.is_ok(),
        "BTF",
        match &btf {
            Ok(_) => format!("{} (struct offsets found)", btf::VMLINUX),
            Err(e) => format!(
                "{e}: syscall and classic sched tracepoints instead, every process's syscalls \
                 pay a little while tracing"
            ),
        },
        Impact::Degrades,
    ));
    let admin = has(preflight::CAP_SYS_ADMIN);
    kernel.push(match &tracefs {
        Some(p) => Check::new(true, "tracefs", p.display().to_string(), Impact::Info),
        None if admin => Check::new(
            true,
            "tracefs",
            "not mounted; record mounts it at /sys/kernel/tracing (CAP_SYS_ADMIN held)",
            Impact::Info,
        ),
        None => Check::new(
            false,
            "tracefs",
            "not mounted, and no CAP_SYS_ADMIN to mount it: as root run \
             mount -t tracefs nodev /sys/kernel/tracing",
            Impact::Blocks(exit::NOPERM),
        ),
    });
    sections.push(("Kernel", kernel));

    let mut cap_checks = Vec::new();
    for &(bit, name, why) in preflight::NEEDED {
        let ok = has(bit) || admin;
        let detail = match (has(bit), ok) {
            (true, _) => format!("to {why}"),
            (false, true) => format!("to {why} (CAP_SYS_ADMIN stands in)"),
            (false, false) => format!("to {why}: missing"),
        };
        cap_checks.push(Check::new(ok, name, detail, Impact::Blocks(exit::NOPERM)));
    }
    for &(bit, name, why) in preflight::OPTIONAL {
        let detail = if has(bit) {
            format!("to {why}")
        } else {
            format!("missing: cannot {why}")
        };
        cap_checks.push(Check::new(has(bit), name, detail, Impact::Info));
    }
    sections.push(("Capabilities (effective)", cap_checks));

    sections.push((
        "Attach types (loaded and attached, no target)",
        attach_checks(&tracefs, btf.is_ok(), &caps),
    ));
    sections.push(("Host settings", host_checks()));
    if !args.pids.is_empty() || !args.ports.is_empty() {
        sections.push(("Targets", target_checks(args)));
    }

    println!("slowtrace doctor {}", env!("CARGO_PKG_VERSION"));
    let mut all = Vec::new();
    for (title, checks) in sections {
        println!("\n{title}");
        for c in &checks {
            println!("{}", c.line());
        }
        all.extend(checks);
    }
    let code = verdict(&all);
    println!(
        "\n{} (exit {code})",
        match code {
            0 => "record would work fully",
            exit::DOCTOR_DEGRADED => "record would work, degraded (the ✗ lines say what is lost)",
            _ => "record would not start (the ✗ lines marked [record cannot start] say why)",
        }
    );
    Ok(ExitCode::from(code))
}

/// Load and attach what `record` attaches, then the uprobe `--handler` uses; report each.
fn attach_checks(tracefs: &Option<std::path::PathBuf>, btf_ok: bool, caps: &u64) -> Vec<Check> {
    const WHAT: &str = "eBPF programs";
    let missing = preflight::missing(*caps);
    if !missing.is_empty() {
        return vec![Check::new(
            false,
            WHAT,
            format!("not tried: missing {}", missing.join(", ")),
            Impact::Blocks(exit::NOPERM),
        )];
    }
    let Some(tracefs) = tracefs else {
        return vec![Check::new(
            false,
            WHAT,
            "not tried without tracefs (record mounts it first)",
            Impact::Info,
        )];
    };
    let offsets = match tracefs::offsets(tracefs) {
        Ok(o) => o,
        Err(e) => {
            let code = exit::code(&anyhow::Error::from(e));
            return vec![Check::new(
                false,
                WHAT,
                "tracefs layouts unreadable",
                Impact::Blocks(code),
            )];
        }
    };
    let settings = ProfileSettings {
        sample_hz: 99,
        off_cpu: true,
    };
    let (mut probes, _ring, maps, _profile) = match Probes::load(tracefs, offsets, settings) {
        Ok(p) => p,
        Err(e) => {
            let line = e.to_string();
            let code = exit::code(&anyhow::Error::from(e));
            return vec![Check::new(false, WHAT, line, Impact::Blocks(code))];
        }
    };
    let plan = Plan::detect(tracefs, btf_ok);
    let lost = |what: &str| maps.degraded.iter().find(|d| d.starts_with(what)).cloned();
    let mut out = vec![Check::new(
        true,
        "tracepoint (syscalls, sched process)",
        "requests, forks, exits",
        Impact::Blocks(exit::UNAVAILABLE),
    )];
    out.push(Check::new(
        plan.sock,
        "raw_tracepoint (sock:*)",
        if plan.sock {
            "socket I/O without syscall tracepoints"
        } else {
            "not used here: syscall tracepoints time requests instead"
        },
        Impact::Degrades,
    ));
    out.push(Check::new(
        plan.raw_sched,
        "raw_tracepoint (sched:sched_switch)",
        if plan.raw_sched {
            "off-CPU time, wall-clock flamegraphs"
        } else {
            "not used here (no BTF): classic sched tracepoints instead"
        },
        Impact::Degrades,
    ));
    let perf = lost("on-CPU stacks");
    out.push(Check::new(
        perf.is_none(),
        "perf_event (cpu-clock)",
        perf.unwrap_or_else(|| "on-CPU stacks of slow requests, CPU profiles".to_owned()),
        Impact::Degrades,
    ));
    let signal = lost("signal notes");
    out.push(Check::new(
        signal.is_none(),
        "tracepoint (signal:signal_generate)",
        signal.unwrap_or_else(|| "which signal killed a request".to_owned()),
        Impact::Degrades,
    ));
    slowtrace_doctor_uprobe_target();
    let uprobe = std::env::current_exe()
        .map_err(anyhow::Error::from)
        .and_then(|exe| {
            let spec = format!("{}:slowtrace_doctor_uprobe_target", exe.display());
            let handlers = crate::handlers::resolve(&spec)?;
            probes.attach_handlers(&handlers)?;
            Ok(())
        });
    out.push(Check::new(
        uprobe.is_ok(),
        "uprobe + uretprobe",
        match uprobe {
            Ok(()) => "--handler timing of native functions".to_owned(),
            Err(e) => format!("--handler unavailable: {}", crate::one_line(&e)),
        },
        Impact::Degrades,
    ));
    out
}

fn host_checks() -> Vec<Check> {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned());
    let mut out = Vec::new();
    let paranoid = read("/proc/sys/kernel/perf_event_paranoid").unwrap_or_else(|_| "?".into());
    out.push(Check::new(
        true,
        "perf_event_paranoid",
        format!("{paranoid} (CAP_PERFMON is what counts)"),
        Impact::Info,
    ));
    // [none] integrity confidentiality: the bracketed one is in force.
    let lockdown = read("/sys/kernel/security/lockdown").ok().and_then(|s| {
        s.split_whitespace()
            .find_map(|w| w.strip_prefix('[')?.strip_suffix(']').map(str::to_owned))
    });
    out.push(match lockdown.as_deref() {
        Some("confidentiality") => Check::new(
            false,
            "lockdown",
            "confidentiality: eBPF may not read kernel memory (kernel frames, BTF offsets)",
            Impact::Degrades,
        ),
        Some(mode) => Check::new(
            true,
            "lockdown",
            format!("{mode} (eBPF reads of user and kernel memory allowed)"),
            Impact::Info,
        ),
        None => Check::new(
            true,
            "lockdown",
            "unknown: securityfs not mounted (/sys/kernel/security/lockdown)",
            Impact::Info,
        ),
    });
    let v2 = cgroup2_mount();
    out.push(Check::new(
        v2.is_some(),
        "cgroup v2",
        match v2 {
            Some(p) => format!("{p} (not needed by record)"),
            None => "not mounted (not needed by record)".to_owned(),
        },
        Impact::Info,
    ));
    let stats = read("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_else(|_| "?".into());
    out.push(Check::new(
        stats == "1",
        "bpf_stats",
        format!(
            "kernel.bpf_stats_enabled={stats} (1: bpftool prog shows the run time of \
             slowtrace's programs; not needed by record)"
        ),
        Impact::Info,
    ));
    out
}

/// Where a cgroup v2 hierarchy is mounted, from /proc/self/mounts.
fn cgroup2_mount() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_src, at, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| at.to_owned())
    })
}

fn target_checks(args: &DoctorArgs) -> Vec<Check> {
    let mut out = Vec::new();
    let mut pids: Vec<(u32, String)> = args.pids.iter().map(|&p| (p, format!("pid {p}"))).collect();
    for &port in &args.ports {
        let listeners = crate::procfs::listeners(port);
        if listeners.is_empty() {
            out.push(Check::new(
                false,
                format!("port {port}"),
                "nothing listens there yet (record would wait for it)",
                Impact::Info,
            ));
        }
        pids.extend(
            listeners
                .into_iter()
                .map(|p| (p, format!("port {port}: pid {p}"))),
        );
    }
    for (pid, name) in pids {
        if !crate::procfs::alive(pid) {
            out.push(Check::new(
                false,
                name,
                "no such process",
                Impact::Blocks(exit::NOINPUT),
            ));
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        out.push(python_check(pid, format!("{name} ({comm})")));
    }
    out
}

/// The target's Python and whether one of its threads' frames can be read now.
fn python_check(pid: u32, name: String) -> Check {
    let mut proc = match PythonProcess::attach(pid) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Check::new(
                true,
                name,
                "no CPython 3.11-3.13: native and kernel frames only",
                Impact::Info,
            )
        }
        Err(e @ PyError::Permission(_)) => {
            return Check::new(
                false,
                name,
                format!("no Python frames: {e}"),
                Impact::Degrades,
            )
        }
        Err(e) => return Check::new(false, name, format!("{e}"), Impact::Degrades),
    };
    let (major, minor) = proc.version();
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    let mut last_err = None;
    let mut threads = 0;
    let mut deepest = 0;
    for tid in &tids {
        // A thread mid-call can tear a read; a few tries settle it.
        for _ in 0..5 {
            match proc.stack(*tid) {
                Ok(frames) => {
                    threads += 1;
                    deepest = deepest.max(frames.len());
                    break;
                }
                Err(PyError::Torn(_)) => continue,
                Err(e) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
    }
    match (threads, last_err) {
        (0, Some(e)) => Check::new(
            false,
            name,
            format!("Python {major}.{minor}, frames unreadable: {e}"),
            Impact::Degrades,
        ),
        _ => Check::new(
            true,
            name,
            format!(
                "Python {major}.{minor}, frames readable ({threads} of {} threads read, \
                 deepest {deepest} frames)",
                tids.len()
            ),
            Impact::Info,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ok: bool, impact: Impact) -> Check {
        Check::new(ok, "x", "y", impact)
    }

    #[test]
    fn the_verdict_is_full_degraded_or_the_blocking_code() {
        assert_eq!(
            verdict(&[c(true, Impact::Blocks(77)), c(false, Impact::Info)]),
            0
        );
        assert_eq!(
            verdict(&[c(false, Impact::Degrades), c(true, Impact::Blocks(69))]),
            exit::DOCTOR_DEGRADED
        );
        assert_eq!(
            verdict(&[c(false, Impact::Degrades), c(false, Impact::Blocks(77))]),
            77
        );
        assert!(c(false, Impact::Blocks(77)).line().contains("✗"));
        assert!(c(false, Impact::Info).line().starts_with("  - "));
    }

    #[test]
    fn this_process_is_a_target_without_python() {
        let args = DoctorArgs {
            pids: vec![std::process::id(), u32::MAX - 3],
            ports: vec![],
        };
        let checks = target_checks(&args);
        assert!(checks[0].ok, "{:?}", checks[0]);
        assert_eq!(checks[1].impact, Impact::Blocks(exit::NOINPUT));
        assert!(!checks[1].ok);
    }
}
