//! Root tests: `--handler` uprobes on a native server, and the opt-in `--interrupt-after`.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::*;

fn jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    read_records(path)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn handler_calls_match_requests() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_native_server(dir.path());
    let mut server = Proc::spawn(Command::new(&exe).stdout(Stdio::piped()));
    let port = read_port(server.child.stdout.take().unwrap());
    let handler = format!("{}:handle_request", exe.display());
    let glob = format!("{}:*_handler*", exe.display());
    let trace = Trace::start(&[
        "--pid",
        &server.pid().to_string(),
        "--handler",
        &handler,
        "--handler",
        &glob,
    ]);
    for i in 0..8 {
        assert_eq!(curl(&[format!("http://127.0.0.1:{port}/fast/{i}")]), [200]);
    }
    assert_eq!(curl(&[format!("http://127.0.0.1:{port}/spin")]), [200]);
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    let calls = jsonl(&done.dir.join("handlers.jsonl"));
    let named = |n: &str| {
        calls
            .iter()
            .filter(|c| c["handler"] == n)
            .collect::<Vec<_>>()
    };
    assert_eq!(named("handle_request").len(), 9, "{calls:#?}");
    assert_eq!(
        named("fast_handler").len(),
        8,
        "the glob matched fast_handler"
    );
    assert_eq!(
        named("slow_handler_spin").len(),
        1,
        "…and slow_handler_spin"
    );
    assert!(
        named("fast_handler").iter().all(|c| c["depth"] == 1),
        "nested inside handle_request"
    );
    // Each handler call lies within its request's duration. This handler itself calls recv and
    // send, so it starts a few µs before the request's first byte and ends just after its last:
    // the bound allows 1 ms of that.
    assert_eq!(done.records.len(), 9);
    let spin_req = done.with_endpoint("GET /spin")[0]["duration_us"]
        .as_u64()
        .unwrap();
    let spin_call = named("handle_request")
        .iter()
        .map(|c| c["duration_us"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        spin_call <= spin_req + 1000 && spin_call >= 1_900_000,
        "call {spin_call} µs, request {spin_req} µs"
    );
    let with_req: Vec<_> = named("handle_request")
        .into_iter()
        .filter(|c| c["request"]["endpoint"].is_string())
        .collect();
    assert!(with_req.len() >= 8, "enclosing requests named: {calls:#?}");
    // Over the threshold (1 s): the outermost call is captured like a slow request, and the
    // nested slow function shows in its native frames.
    let outer = named("handle_request")
        .into_iter()
        .max_by_key(|c| c["duration_us"].as_u64().unwrap())
        .unwrap();
    let caps = outer["captures"].as_array().cloned().unwrap_or_default();
    assert!(
        caps.iter().any(|c| c["native"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["function"] == "slow_handler_spin")),
        "{outer:#?}"
    );
    assert!(
        done.stdout.contains("handle_request"),
        "summary has handler rows: {}",
        done.stdout
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn unknown_handler_lists_closest_symbols() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_native_server(dir.path());
    let out = Command::new(slowtrace_bin())
        .args(["record", "--pid", &std::process::id().to_string(), "-o"])
        .arg(dir.path().join("out"))
        .arg("--handler")
        .arg(format!("{}:handle_reqest", exe.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "EX_DATAERR: {err}");
    assert!(
        err.contains("no function matches") && err.contains("handle_request"),
        "{err}"
    );
}

/// gunicorn, one sync worker, serving tests/servers/interrupt_app.py (SIGALRM raises; with a
/// dump file, faulthandler dumps on SIGUSR2).
fn interrupt_app(dump: Option<&std::path::Path>) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new(venv().join("bin/gunicorn"));
    cmd.current_dir(server_script(""))
        .args([
            "--workers",
            "1",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "critical",
        ])
        .arg("interrupt_app:app")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(d) = dump {
        cmd.env("DUMP_FILE", d);
    }
    let master = Proc::spawn(&mut cmd);
    wait_port(port);
    // The worker imports the app, which installs its handlers, after the master listens.
    let mut signals = vec![libc::SIGALRM];
    signals.extend(dump.map(|_| libc::SIGUSR2));
    wait_until(
        Duration::from_secs(60),
        &format!("gunicorn's worker to catch {signals:?}"),
        || {
            children(master.pid())
                .iter()
                .any(|w| signals.iter().all(|s| catches(*w, *s)))
        },
    );
    (master, port)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn interrupt_after_fails_a_runaway_request_early() {
    require_root();
    let (master, port) = interrupt_app(None);
    let trace = Trace::start(&[
        "--pid",
        &master.pid().to_string(),
        "--interrupt-after",
        "1s:SIGALRM",
    ]);
    let t = Instant::now();
    let status = curl(&[format!("http://127.0.0.1:{port}/slow")]);
    let took = t.elapsed();
    assert_eq!(status, [500], "the app raised on SIGALRM");
    assert!(took < Duration::from_secs(4), "ended early: {took:?}");
    let done = trace.stop();
    let r = &done.with_endpoint("GET /slow")[0];
    assert_eq!(r["status"], 500);
    assert_eq!(r["signals"][0]["signal"], "SIGALRM");
    assert_eq!(r["signals"][0]["why"], "interrupt");
    let slow = jsonl(&done.dir.join("slow.jsonl"));
    assert_eq!(slow[0]["signals"][0]["signal"], "SIGALRM", "{slow:#?}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn interrupt_is_refused_for_a_process_that_does_not_catch_it() {
    require_root();
    let (server, port) = py_server(&["threading"]);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(slowtrace_bin())
        .args([
            "record",
            "--pid",
            &server.pid().to_string(),
            "--interrupt-after",
            "1s:SIGALRM",
            "-o",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "EX_DATAERR: {err}");
    assert!(err.contains("does not catch SIGALRM"), "{err}");
    assert_eq!(
        curl(&[format!("http://127.0.0.1:{port}/hello")]),
        [200],
        "the server is alive"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn dump_signal_lets_the_app_dump_its_own_traceback() {
    require_root();
    let dump = tempfile::NamedTempFile::new().unwrap();
    let (master, port) = interrupt_app(Some(dump.path()));
    let trace = Trace::start(&[
        "--pid",
        &master.pid().to_string(),
        "--threshold",
        "1s",
        "--dump-signal",
        "SIGUSR2",
    ]);
    // The view sleeps 5 s; faulthandler's handler is not an exception, so it keeps sleeping.
    assert_eq!(curl(&[format!("http://127.0.0.1:{port}/slow")]), [200]);
    let done = trace.stop();
    let r = &done.with_endpoint("GET /slow")[0];
    assert_eq!(r["signals"][0]["signal"], "SIGUSR2", "{r:#?}");
    assert_eq!(r["signals"][0]["why"], "dump");
    let text = std::fs::read_to_string(dump.path()).unwrap();
    assert!(
        text.contains("interrupt_app.py") && text.contains("in app"),
        "faulthandler dump: {text}"
    );
}
