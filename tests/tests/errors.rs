//! Clear errors instead of panics: each bad input is one line naming the problem, exit code 1.

use std::process::{Command, Output};

use integration_tests::*;

fn record(args: &[&str]) -> Output {
    Command::new(slowtrace_bin())
        .arg("record")
        .args(args)
        .output()
        .expect("run slowtrace")
}

fn assert_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn no_target() {
    assert_error(&record(&[]), "nothing to trace");
}

#[test]
fn pid_not_found() {
    assert_error(
        &record(&["--pid", "999999999"]),
        "no process with pid 999999999",
    );
}

#[test]
fn command_not_found() {
    assert_error(
        &record(&["--", "no-such-server-binary"]),
        "command not found: no-such-server-binary",
    );
}

#[test]
fn unwritable_output_dir() {
    let me = std::process::id().to_string();
    assert_error(
        &record(&["--pid", &me, "-o", "/proc/self/slowtrace"]),
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
    let out = record(&["--port", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value '0' for '--port"), "{err}");
}

#[test]
fn bad_duration_is_a_usage_error() {
    let out = record(&["--pid", "1", "--duration", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"));
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
    assert_error(&out, "needs root or these capabilities: CAP_BPF");
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
