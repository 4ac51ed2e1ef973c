//! Clear errors instead of panics: each bad input is one line naming the problem, with its
//! sysexits code (docs/errors.md). The rows that need no root are also unit-tested in
//! tracer-user (`the_bad_input_table`); here the real binary runs them end to end, and the root
//! rows (privileges, mounts, the kernel) run only here.

use std::process::{Command, Output};

use integration_tests::*;

fn record(args: &[&str]) -> Output {
    Command::new(slowtrace_bin())
        .arg("record")
        .args(args)
        .output()
        .expect("run slowtrace")
}

/// Exit code `code`, and stderr exactly one line holding `needle`.
fn assert_exit(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("slowtrace: error: "), "{err}");
}

#[test]
fn no_target() {
    assert_exit(&record(&[]), 64, "nothing to trace");
}

#[test]
fn pid_not_found() {
    assert_exit(
        &record(&["--pid", "999999999"]),
        66,
        "no process with pid 999999999",
    );
}

#[test]
fn command_not_found() {
    assert_exit(
        &record(&["--", "no-such-server-binary"]),
        66,
        "command not found: no-such-server-binary",
    );
}

#[test]
fn unwritable_output_dir() {
    let me = std::process::id().to_string();
    assert_exit(
        &record(&["--pid", &me, "-o", "/proc/self/slowtrace"]),
        73,
        "output directory /proc/self/slowtrace",
    );
}

#[test]
fn unwritable_output_dir_says_its_cause_once() {
    let me = std::process::id().to_string();
    let out = record(&["--pid", &me, "-o", "/proc/nonexistent/slowtrace"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn port_zero_is_a_usage_error() {
    assert_exit(
        &record(&["--port", "0"]),
        64,
        "invalid value '0' for '--port",
    );
}

#[test]
fn bad_duration_is_a_usage_error() {
    assert_exit(
        &record(&["--pid", "1", "--duration", "soon"]),
        64,
        "invalid value 'soon' for '--duration",
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn without_privileges_names_the_capabilities() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(slowtrace_bin())
        .args(["record", "--pid", "1", "-o"])
        .arg(dir.path())
        .output()
        .expect("setpriv");
    assert_exit(&out, 77, "needs root or these capabilities: CAP_BPF");
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_PERFMON"));
}

/// In a private mount namespace, where tracefs is unmounted for slowtrace alone: the machine's
/// tracefs stays mounted for everyone else, and files others hold open there cannot make it busy.
/// `sh -c SCRIPT sh CMD...`: unmount, run CMD, say whether tracefs is mounted afterwards.
const WITHOUT_TRACEFS: &str = r#"
for m in /sys/kernel/debug /sys/kernel/tracing; do
    if mountpoint -q "$m"; then umount -R "$m" || exit 90; fi
done
"$@"
rc=$?
if [ -d /sys/kernel/tracing/events ]; then echo "tracefs is mounted after the run" >&2; fi
exit $rc
"#;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn mounts_tracefs_when_missing() {
    require_root();
    let (server, _port) = py_server(&["threading"]);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .args([WITHOUT_TRACEFS, "sh"])
        .arg(slowtrace_bin())
        .args([
            "record",
            "--duration",
            "1s",
            "--pid",
            &server.pid().to_string(),
            "-o",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(90),
        "could not unmount tracefs in a private mount namespace: {err}"
    );
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("mounted tracefs at /sys/kernel/tracing"),
        "{err}"
    );
    assert!(err.contains("tracefs is mounted after the run"), "{err}");
}

/// Run slowtrace as uid 0 holding only `caps` (setpriv names: `bpf`, `perfmon`…).
fn with_caps(caps: &[&str]) -> Command {
    let set: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!(
        "--bounding-set=-all{}{}",
        if set.is_empty() { "" } else { "," },
        set.join(",")
    ))
    .arg("--inh-caps=-all")
    .arg(slowtrace_bin());
    cmd
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn each_missing_capability_alone_is_named_with_exit_77() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let me = std::process::id().to_string();
    let all = ["bpf", "perfmon", "sys_ptrace"];
    for missing in all {
        let keep: Vec<&str> = all.iter().copied().filter(|c| *c != missing).collect();
        let out = with_caps(&keep)
            .args(["record", "--duration", "1s", "--pid", &me, "-o"])
            .arg(dir.path())
            .output()
            .unwrap();
        let name = format!("CAP_{}", missing.to_uppercase());
        assert_exit(
            &out,
            77,
            &format!("needs root or these capabilities: {name} (to "),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        for other in &keep {
            let other = format!("CAP_{}", other.to_uppercase());
            assert!(
                !err.contains(&other),
                "only the missing one is named: {err}"
            );
        }
    }
}

/// `sh -c SCRIPT sh CMD...` in a private mount namespace: SETUP, then CMD, exit with its code.
fn in_private_mounts(setup: &str, cmd: &mut Command) -> Output {
    let script = format!("{setup} || exit 90\n\"$@\"");
    let mut sh = Command::new("unshare");
    sh.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(script)
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    let out = sh.output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(90),
        "setup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tracefs_missing_without_cap_sys_admin_says_what_to_run() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let me = std::process::id().to_string();
    let mut cmd = with_caps(&["bpf", "perfmon", "sys_ptrace"]);
    cmd.args(["record", "--duration", "1s", "--pid", &me, "-o"])
        .arg(dir.path());
    let out = in_private_mounts(
        "for m in /sys/kernel/debug /sys/kernel/tracing; do \
           if mountpoint -q $m; then umount -R $m || exit 90; fi; done",
        &mut cmd,
    );
    assert_exit(&out, 77, "mount -t tracefs nodev /sys/kernel/tracing");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_kernel_older_than_5_8_is_refused_with_exit_69() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("osrelease");
    std::fs::write(&fake, "5.4.0-150-generic\n").unwrap();
    let me = std::process::id().to_string();
    let mut cmd = Command::new(slowtrace_bin());
    cmd.args(["record", "--duration", "1s", "--pid", &me, "-o"])
        .arg(dir.path().join("out"));
    let out = in_private_mounts(
        &format!("mount --bind {} /proc/sys/kernel/osrelease", fake.display()),
        &mut cmd,
    );
    assert_exit(
        &out,
        69,
        "needs Linux 5.8 or newer; found 5.4.0-150-generic",
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_output_directory_on_a_read_only_mount_is_refused_with_exit_73() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let me = std::process::id().to_string();
    let mut cmd = Command::new(slowtrace_bin());
    cmd.args(["record", "--duration", "1s", "--pid", &me, "-o"])
        .arg(ro.join("trace"));
    let out = in_private_mounts(
        &format!("mount -t tmpfs -o ro tmpfs {}", ro.display()),
        &mut cmd,
    );
    assert_exit(&out, 73, "Read-only file system");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("os error"));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_pid_that_exits_during_attach_is_said_with_exit_66() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // Alive when the flags are checked (milliseconds after start), gone once the programs are
    // loaded and attached (hundreds of milliseconds).
    let mut short = Command::new("sleep").arg("0.15").spawn().unwrap();
    let pid = short.id().to_string();
    let out = record(&["--pid", &pid, "-o", dir.path().to_str().unwrap()]);
    let _ = short.wait();
    assert_exit(
        &out,
        66,
        &format!("pid {pid} exited while slowtrace attached to it"),
    );
    // The headless agent too.
    let mut short = Command::new("sleep").arg("0.15").spawn().unwrap();
    let pid = short.id().to_string();
    let out = Command::new(slowtrace_bin())
        .args(["agent", "--pid", &pid, "--metrics-addr", "off"])
        .output()
        .expect("run slowtrace");
    let _ = short.wait();
    assert_exit(
        &out,
        66,
        &format!("pid {pid} exited while slowtrace attached to it"),
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_launched_commands_own_exit_status_passes_through() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = record(&[
        "-o",
        dir.path().to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = record(&["-o", dir.path().to_str().unwrap(), "--", "true"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn errors_are_one_line_without_a_backtrace_and_verbose_adds_detail() {
    let out = record(&["--pid", "999999999"]);
    assert_exit(&out, 66, "no process with pid 999999999");
    let out = Command::new(slowtrace_bin())
        .env("RUST_BACKTRACE", "1")
        .args(["record", "--port", "0"])
        .output()
        .unwrap();
    assert_exit(&out, 64, "0 is not in 1..=65535 (see --help)");
    let help = Command::new(slowtrace_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit codes (sysexits): 0 ok, 1 other failure, 64 bad flag"),
        "{help}"
    );
    assert!(help.contains("docs/errors.md"), "{help}");
}

#[test]
fn a_symlinked_output_directory_is_refused_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let me = std::process::id().to_string();
    let out = record(&["--pid", &me, "-o", link.to_str().unwrap()]);
    assert_exit(
        &out,
        73,
        "is a symbolic link; give the directory it points to",
    );
    assert_eq!(
        std::fs::read_dir(&real).unwrap().count(),
        0,
        "nothing written through it"
    );
}
