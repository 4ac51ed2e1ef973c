//! The minimum capability set (docs/security.md): `record`'s core case, exact counts on a real
//! Python server, run as uid 0 holding only CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::*;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn record_counts_exactly_with_only_bpf_perfmon_and_sys_ptrace() {
    require_root();
    let (server, port) = py_server(&["threading"]);
    let dir = tempfile::tempdir().unwrap();
    let mut rec = Proc::spawn(
        Command::new("setpriv")
            .args([
                "--bounding-set=-all,+bpf,+perfmon,+sys_ptrace",
                "--inh-caps=-all",
            ])
            .arg(slowtrace_bin())
            .args([
                "record",
                "--pid",
                &server.pid().to_string(),
                "--threshold",
                "200ms",
            ])
            .arg("-o")
            .arg(dir.path())
            .stderr(Stdio::piped()),
    );
    let err = rec.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("  slowtrace: {l}");
            let _ = tx.send(l);
        }
    });
    loop {
        let l = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("slowtrace started tracing");
        assert!(!l.contains("error"), "{l}");
        if l.starts_with("slowtrace: tracing") {
            break;
        }
    }
    // It holds those three capabilities and nothing else.
    let status = std::fs::read_to_string(format!("/proc/{}/status", rec.pid())).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(eff, (1 << 39) | (1 << 38) | (1 << 19), "CapEff {eff:x}");
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for i in 0..15 {
        assert_eq!(curl(&[url(&format!("/users/{i}?token=secret"))]), [200]);
    }
    assert_eq!(curl(&[url("/nope")]), [404]);
    assert_eq!(curl(&[url("/sleep?ms=400")]), [200]);
    // SAFETY: signalling our child (setpriv execs slowtrace: same pid).
    unsafe { libc::kill(rec.pid() as i32, libc::SIGINT) };
    let status = rec.child.wait().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "{rest:#?}");
    let records = read_records(&dir.path().join("requests.jsonl"));
    assert_eq!(records.len(), 17, "{records:#?}");
    let users = count_where(&records, |r| r["endpoint"] == "GET /users/:int");
    assert_eq!(users, 15);
    assert!(records
        .iter()
        .all(|r| !r["path"].as_str().unwrap_or_default().contains("secret")));
    // The slow one was captured: Python frames read with CAP_SYS_PTRACE alone.
    let slow = read_records(&dir.path().join("slow.jsonl"));
    assert_eq!(slow.len(), 1, "{slow:#?}");
    // Files are private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("requests.jsonl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
