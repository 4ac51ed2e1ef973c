//! Root tests of capture fidelity (#15): the first capture of a slow request is taken at the
//! threshold (not on the next 250 ms scan), its native and kernel frames come from one instant
//! inside the request (never a stack from before it), and `--interrupt-after` leaves on time.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::*;
use serde_json::Value;

const THRESHOLD_MS: u64 = 300;

fn names(frames: &Value) -> Vec<String> {
    frames
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Blocked captures of `slow`: (syscall, native names, kernel names), printed on failure.
fn blocked(slow: &Value) -> Vec<(String, Vec<String>, Vec<String>)> {
    slow["captures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "blocked")
        .map(|c| {
            (
                c["syscall"].as_str().unwrap_or("").to_owned(),
                names(&c["native"]),
                names(&c["kernel"]),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn sleeps_are_captured_at_the_threshold_from_inside_the_request() {
    require_root();
    let (server, port) = py_server(&["threading"]);
    let trace = Trace::start(&[
        "--pid",
        &server.pid().to_string(),
        "--threshold",
        &format!("{THRESHOLD_MS}ms"),
    ]);
    // threshold + 60 ms … threshold + 400 ms, four keep-alive connections at once: between
    // requests each connection's thread waits in recv on its socket, which is the stale stack a
    // capture must never show for a sleep.
    let extra = [60u64, 110, 170, 230, 290, 340, 400];
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let path = format!("/sleep?ms={}", THRESHOLD_MS + extra[(i * 2) % extra.len()]);
            let p = port.to_string();
            std::thread::spawn(move || {
                let out = Command::new(python())
                    .arg(server_script("keepalive_client.py"))
                    .args([&p, "3", &path])
                    .stderr(Stdio::inherit())
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            })
        })
        .collect();
    let mut one_by_one = Vec::new();
    for e in extra {
        one_by_one.push(curl(&[format!(
            "http://127.0.0.1:{port}/sleep?ms={}",
            THRESHOLD_MS + e
        )]));
    }
    for c in clients {
        assert_eq!(c.join().unwrap(), "200 200 200");
    }
    assert!(one_by_one.iter().all(|s| s == &[200]), "{one_by_one:?}");
    // A socket wait: blocked in recv on a TCP connection whose peer answers after 500 ms.
    assert_eq!(
        curl(&[format!("http://127.0.0.1:{port}/recv?ms=500")]),
        [200]
    );
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    let slow = read_records(&done.dir.join("slow.jsonl"));
    let sleeps: Vec<&Value> = slow
        .iter()
        .filter(|s| s["endpoint"] == "GET /sleep")
        .collect();
    assert_eq!(sleeps.len(), 4 * 3 + extra.len(), "{slow:#?}");
    for s in &sleeps {
        let caps = s["captures"].as_array().unwrap();
        let offsets: Vec<u64> = caps
            .iter()
            .map(|c| c["offset_ms"].as_u64().unwrap())
            .collect();
        assert!(
            offsets
                .iter()
                .any(|o| (THRESHOLD_MS..=THRESHOLD_MS + 20).contains(o)),
            "{} {}: a capture within 20 ms of the threshold, got offsets {offsets:?}",
            s["path"],
            s["duration_us"]
        );
        for c in caps {
            assert_eq!(c["state"], "blocked", "{c:#}");
            assert_eq!(c["syscall"], "clock_nanosleep", "{c:#}");
            let native = names(&c["native"]);
            let kernel = names(&c["kernel"]);
            assert!(
                native
                    .first()
                    .is_some_and(|f| f.contains("clock_nanosleep")),
                "native leaf of a sleep: {native:?} ({})",
                c["native_source"]
            );
            assert!(
                kernel.iter().any(|f| f.contains("nanosleep")),
                "kernel stack of a sleep: {kernel:?}"
            );
            assert!(
                !native
                    .iter()
                    .chain(&kernel)
                    .any(|f| f.contains("recv") || f.contains("select") || f.contains("poll")),
                "a stack from before the request: {native:?} / {kernel:?}"
            );
        }
    }
    let recv: Vec<&Value> = slow
        .iter()
        .filter(|s| s["endpoint"] == "GET /recv")
        .collect();
    assert_eq!(recv.len(), 1, "{slow:#?}");
    let caps = blocked(recv[0]);
    assert!(!caps.is_empty(), "{:#}", recv[0]);
    for (syscall, native, kernel) in &caps {
        assert_eq!(syscall, "recvfrom", "{native:?}");
        assert!(
            native.first().is_some_and(|f| f.contains("recv")),
            "native leaf of a socket wait: {native:?}"
        );
        assert!(
            kernel
                .iter()
                .any(|f| f.contains("tcp_recvmsg") || f.contains("sk_wait_data")),
            "kernel stack of a socket wait: {kernel:?}"
        );
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn interrupt_after_is_delivered_on_time() {
    require_root();
    let port = free_port();
    let master = Proc::spawn(
        Command::new(venv().join("bin/gunicorn"))
            .current_dir(server_script(""))
            .args(["--workers", "1", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--log-level", "critical", "interrupt_app:app"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_port(port);
    wait_until(
        Duration::from_secs(60),
        "gunicorn's worker to catch SIGALRM",
        || {
            children(master.pid())
                .iter()
                .any(|w| catches(*w, libc::SIGALRM))
        },
    );
    let trace = Trace::start(&[
        "--pid",
        &master.pid().to_string(),
        "--interrupt-after",
        "1s:SIGALRM",
    ]);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let out = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{port}/slow")])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        let secs: f64 = body
            .strip_prefix("interrupted after ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("the app saw no signal: {body:?}"));
        seen.push(secs);
    }
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    // The view starts ~1 ms after the request's first bytes, where the deadline counts from.
    for s in &seen {
        assert!((0.98..=1.05).contains(s), "delivered after {s} s: {seen:?}");
    }
    for r in done.with_endpoint("GET /slow") {
        let at = r["signals"][0]["at_ms"].as_u64().unwrap();
        assert!((1000..=1050).contains(&at), "sent at {at} ms: {r:#}");
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn native_frames_between_python_frames_without_frame_pointers() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libchain.so");
    let st = Command::new("gcc")
        .args([
            "-O2",
            "-g",
            "-fomit-frame-pointer",
            "-shared",
            "-fPIC",
            "-o",
        ])
        .arg(&lib)
        .arg(server_script("native_chain.c"))
        .status()
        .expect("gcc");
    assert!(st.success(), "building native_chain.c");
    let mut server = Proc::spawn(
        Command::new(python())
            .arg(server_script("pyserver.py"))
            .arg("threading")
            .env("SLOWTRACE_NATIVE_CHAIN", &lib)
            .stdout(Stdio::piped()),
    );
    let port = read_port(server.child.stdout.take().unwrap());
    let trace = Trace::start(&[
        "--pid",
        &server.pid().to_string(),
        "--threshold",
        &format!("{THRESHOLD_MS}ms"),
    ]);
    // First a slow request without the library: its capture reads the process's mappings
    // before ctypes loads libchain.so, as a long-running server's earlier captures and samples
    // would. The unwind of the next one must still see the library loaded since.
    assert_eq!(
        curl(&[format!(
            "http://127.0.0.1:{port}/sleep?ms={}",
            THRESHOLD_MS + 200
        )]),
        [200]
    );
    assert_eq!(
        curl(&[format!("http://127.0.0.1:{port}/native?ms=700")]),
        [200]
    );
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    let slow = read_records(&done.dir.join("slow.jsonl"));
    let s: Vec<&Value> = slow
        .iter()
        .filter(|s| s["endpoint"] == "GET /native")
        .collect();
    assert_eq!(s.len(), 1, "{slow:#?}");
    let caps = s[0]["captures"].as_array().unwrap();
    assert!(!caps.is_empty());
    for c in caps {
        let native = names(&c["native"]);
        let at = |f: &str| native.iter().position(|n| n == f);
        let (i, m, o) = (at("chain_inner"), at("chain_middle"), at("chain_outer"));
        assert!(
            native.first().is_some_and(|f| f.contains("nanosleep")),
            "leaf: {native:?}"
        );
        assert!(
            i.is_some() && i < m && m < o,
            "the three C frames in order: {native:?}"
        );
        // ctypes' call machinery and the interpreter loop above them: the unwind went on
        // through libffi and libpython, neither built with frame pointers.
        assert!(
            native[o.unwrap()..]
                .iter()
                .any(|f| f.contains("_PyEval_EvalFrameDefault")),
            "the interpreter above the C frames: {native:?}"
        );
        assert!(
            names(&c["python"]).iter().any(|f| f.ends_with("do_GET")),
            "{:#}",
            c["python"]
        );
    }
}

/// A threshold shorter than the 250 ms scan: requests are looked for in between, so the first
/// capture is still on time.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_threshold_shorter_than_the_scan_is_still_on_time() {
    require_root();
    let (server, port) = py_server(&["threading"]);
    let trace = Trace::start(&["--pid", &server.pid().to_string(), "--threshold", "100ms"]);
    for ms in [160, 200, 260, 330, 400, 170, 220] {
        assert_eq!(
            curl(&[format!("http://127.0.0.1:{port}/sleep?ms={ms}")]),
            [200]
        );
    }
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    let slow = read_records(&done.dir.join("slow.jsonl"));
    let sleeps: Vec<&Value> = slow
        .iter()
        .filter(|s| s["endpoint"] == "GET /sleep")
        .collect();
    assert_eq!(sleeps.len(), 7, "{slow:#?}");
    for s in sleeps {
        let offsets: Vec<u64> = s["captures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["offset_ms"].as_u64().unwrap())
            .collect();
        assert!(
            offsets.iter().any(|o| (100..=120).contains(o)),
            "{}: offsets {offsets:?}",
            s["duration_us"]
        );
    }
}
