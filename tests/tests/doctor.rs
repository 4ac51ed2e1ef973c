//! `slowtrace doctor` on this host: as root, with dropped capabilities (setpriv), without BTF
//! (a private mount namespace hides it), and against a real Python server.

use std::process::{Command, Output};

use integration_tests::*;

fn doctor(prefix: &[&str], args: &[&str]) -> (i32, String) {
    let out: Output = match prefix.split_first() {
        Some((prog, rest)) => Command::new(prog)
            .args(rest)
            .arg(slowtrace_bin())
            .arg("doctor")
            .args(args)
            .output(),
        None => Command::new(slowtrace_bin())
            .arg("doctor")
            .args(args)
            .output(),
    }
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The line of check `name`.
fn line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.trim_start()
                .split_once(' ')
                .is_some_and(|(_mark, rest)| rest.starts_with(name))
        })
        .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn as_root_everything_is_there_and_the_exit_code_is_0() {
    require_root();
    let (code, text) = doctor(&[], &[]);
    assert_eq!(code, 0, "{text}");
    for name in [
        "kernel",
        "BTF",
        "tracefs",
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_PTRACE",
        "tracepoint (syscalls",
        "raw_tracepoint (sock:*)",
        "raw_tracepoint (sched:sched_switch)",
        "perf_event (cpu-clock)",
        "tracepoint (signal:signal_generate)",
        "uprobe + uretprobe",
    ] {
        assert!(line(&text, name).starts_with("  ✓ "), "{name}: {text}");
    }
    for name in ["perf_event_paranoid", "lockdown", "cgroup v2", "bpf_stats"] {
        line(&text, name);
    }
    assert!(text.contains("record would work fully (exit 0)"), "{text}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn with_only_the_three_needed_capabilities_record_runs_degraded_exit_1() {
    require_root();
    let setpriv = [
        "setpriv",
        "--bounding-set=-all,+bpf,+perfmon,+sys_ptrace",
        "--inh-caps=-all",
    ];
    let (code, text) = doctor(&setpriv, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(line(&text, "CAP_PERFMON").starts_with("  ✓ "), "{text}");
    assert!(line(&text, "CAP_SYS_ADMIN").starts_with("  - "), "{text}");
    // Measured on Linux 6.18: uprobes (--handler) need CAP_SYS_ADMIN; the rest attaches.
    assert!(
        line(&text, "uprobe + uretprobe").starts_with("  ✗ "),
        "{text}"
    );
    assert!(line(&text, "uprobe + uretprobe").contains("[record runs degraded]"));
    assert!(
        line(&text, "perf_event (cpu-clock)").starts_with("  ✓ "),
        "{text}"
    );
    assert!(text.contains("record would work, degraded"), "{text}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn without_cap_perfmon_record_cannot_start_exit_77() {
    require_root();
    let setpriv = [
        "setpriv",
        "--bounding-set=-all,+bpf,+sys_ptrace",
        "--inh-caps=-all",
    ];
    let (code, text) = doctor(&setpriv, &[]);
    assert_eq!(code, 77, "{text}");
    let perfmon = line(&text, "CAP_PERFMON");
    assert!(
        perfmon.starts_with("  ✗ ") && perfmon.contains("[record cannot start]"),
        "{text}"
    );
    assert!(line(&text, "eBPF programs").contains("not tried: missing CAP_PERFMON"));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn without_btf_it_says_what_degrades_exit_1() {
    require_root();
    let script = "mount --bind /dev/null /sys/kernel/btf/vmlinux || exit 90; \"$@\"";
    let (code, text) = doctor(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ],
        &[],
    );
    assert_eq!(code, 1, "{text}");
    assert!(line(&text, "BTF").starts_with("  ✗ "), "{text}");
    assert!(
        line(&text, "raw_tracepoint (sock:*)").starts_with("  ✗ "),
        "{text}"
    );
    assert!(
        line(&text, "tracepoint (syscalls").starts_with("  ✓ "),
        "{text}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_python_target_shows_its_version_and_readable_frames() {
    require_root();
    let (server, port) = py_server(&["threading"]);
    let (code, text) = doctor(&[], &["--port", &port.to_string()]);
    assert_eq!(code, 0, "{text}");
    let target = line(&text, &format!("port {port}: pid {}", server.pid()));
    assert!(target.starts_with("  ✓ "), "{text}");
    assert!(target.contains("Python 3.1"), "{text}");
    assert!(target.contains("frames readable"), "{text}");
    let (code, text) = doctor(&[], &["--pid", "999999999"]);
    assert_eq!(code, 66, "{text}");
    assert!(line(&text, "pid 999999999").contains("no such process"));
}
