//! Root tests: Python servers (recvfrom on worker threads; os.read/os.write), real clients.

use integration_tests::*;

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn threading_server_counts_every_request_exactly() {
    require_root();
    let (_server, port) = py_server(&["threading"]);
    let trace = Trace::start(&["--port", &port.to_string()]);

    // 10 separate connections (curl, one request each).
    for i in 0..10 {
        assert_eq!(
            curl(&[url(port, &format!("/users/{i}?token=secret"))]),
            [200]
        );
    }
    // 20 requests on one keep-alive connection (Python http.client).
    let out = std::process::Command::new(python())
        .arg(server_script("keepalive_client.py"))
        .args([&port.to_string(), "20", "/hello"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .count(),
        20
    );
    // 3 pipelined requests in one write.
    pipelined(port, &["/hello", "/missing", "/status/503"]);
    // A 404 and the timed endpoint.
    assert_eq!(curl(&[url(port, "/nope")]), [404]);
    assert_eq!(curl(&[url(port, "/sleep?ms=300")]), [200]);

    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    let r = &done.records;
    assert_eq!(r.len(), 10 + 20 + 3 + 2, "one record per request: {r:#?}");
    let users = done.with_endpoint("GET /users/:int");
    assert_eq!(users.len(), 10);
    assert!(users
        .iter()
        .all(|u| u["status"] == 200 && u["path"].as_str().unwrap().ends_with("?[redacted]")));
    assert!(users
        .iter()
        .all(|u| u["local_port"] == port && u["comm"].as_str().is_some()));
    let hello = done.with_endpoint("GET /hello");
    assert_eq!(hello.len(), 21, "20 keep-alive + 1 pipelined");
    let keepalive_seqs: Vec<u64> = hello
        .iter()
        .filter_map(|h| h["seq"].as_u64())
        .filter(|s| *s > 0)
        .collect();
    assert!(
        keepalive_seqs.len() >= 19,
        "keep-alive requests carry their index: {keepalive_seqs:?}"
    );
    assert_eq!(done.with_endpoint("GET /missing")[0]["status"], 404);
    assert_eq!(done.with_endpoint("GET /status/:int")[0]["status"], 503);
    assert_eq!(
        done.with_endpoint("GET /status/:int")[0]["pipeline_index"],
        2
    );
    assert_eq!(done.with_endpoint("GET /nope")[0]["status"], 404);
    let sleep = done.with_endpoint("GET /sleep");
    let us = sleep[0]["duration_us"].as_u64().unwrap();
    assert!(
        (300_000..400_000).contains(&us),
        "/sleep?ms=300 took {us} µs"
    );
    assert!(
        done.stdout.contains("GET /sleep"),
        "summary table: {}",
        done.stdout
    );
    assert!(done.stdout.contains("0 dropped"), "{}", done.stdout);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn idle_keepalive_request_is_written_within_a_second() {
    require_root();
    let (_server, port) = py_server(&["threading"]);
    let trace = Trace::start(&["--pid", &_server.pid().to_string()]);
    // One request, then the connection stays open and idle.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read as _, Write as _};
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    assert!(n > 0);
    let answered = std::time::Instant::now();
    let mut seen = None;
    while answered.elapsed() < std::time::Duration::from_millis(1500) {
        if !trace.records_now().is_empty() {
            seen = Some(answered.elapsed());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let seen = seen.expect("request on the idle connection was not written");
    assert!(
        seen < std::time::Duration::from_secs(1),
        "written after {seen:?}"
    );
    let done = trace.stop();
    drop(s);
    assert_eq!(
        done.records.len(),
        1,
        "the kernel's later record is not a second request"
    );
    assert_eq!(done.records[0]["end"], "idle");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn in_flight_requests_are_reported_at_exit() {
    require_root();
    let (server, port) = py_server(&["threading"]);
    let trace = Trace::start(&["--pid", &server.pid().to_string()]);
    let client = std::thread::spawn(move || curl(&[url(port, "/sleep?ms=4000")]));
    // The workload, not a wait: tracing stops while the 4 s request is 1.5 s old.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let done = trace.stop();
    let _ = client.join();
    assert_eq!(done.records.len(), 1, "{:#?}", done.records);
    let r = &done.records[0];
    assert_eq!(r["end"], "in_flight");
    assert_eq!(r["endpoint"], "GET /sleep");
    assert!(r["duration_us"].as_u64().unwrap() >= 1_000_000);
    assert!(done.stdout.contains("still in flight"), "{}", done.stdout);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn os_read_write_server() {
    require_root();
    let (server, port) = py_server(&["osread"]);
    let trace = Trace::start(&["--pid", &server.pid().to_string()]);
    for p in ["/a", "/b/1", "/missing", "/sleep"] {
        curl(&[url(port, p)]);
    }
    let done = trace.stop();
    assert_eq!(done.records.len(), 4, "{:#?}", done.records);
    assert_eq!(done.with_endpoint("GET /missing")[0]["status"], 404);
    assert_eq!(done.with_endpoint("GET /b/:int")[0]["protocol"], "http/1.1");
    let slow = done.with_endpoint("GET /sleep")[0]["duration_us"]
        .as_u64()
        .unwrap();
    assert!(slow >= 200_000, "{slow}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn non_http_traffic_is_timed_and_labelled() {
    require_root();
    let (server, port) = py_server(&["binary"]);
    let trace = Trace::start(&["--pid", &server.pid().to_string()]);
    for _ in 0..3 {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(b"\x16\x03\x01\x00\xff\xfe garbage \x00")
            .unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
    }
    let done = trace.stop();
    assert_eq!(done.records.len(), 3, "{:#?}", done.records);
    assert!(done
        .records
        .iter()
        .all(|r| r["protocol"] == "other" && r["endpoint"] == "(non-http)"));
    assert!(done
        .records
        .iter()
        .all(|r| r["bytes_out"].as_u64() == Some(16)));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn launched_command_is_traced_and_ends_the_trace() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(slowtrace_bin())
        .args(["record", "-o"])
        .arg(dir.path())
        .arg("--")
        .arg(python())
        .arg(server_script("pyserver.py"))
        .args(["serve-n", "5"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    // The server's own stdout comes through slowtrace's: its first line is the PORT line.
    let out = child.stdout.take().unwrap();
    let port = read_port(out);
    for i in 0..5 {
        assert_eq!(curl(&[url(port, &format!("/users/{i}"))]), [200]);
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    let records = read_records(&dir.path().join("requests.jsonl"));
    assert_eq!(records.len(), 5, "{records:#?}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn port_target_that_starts_later_is_traced() {
    require_root();
    let port = free_port();
    let trace = Trace::start(&["--port", &port.to_string()]);
    // Only now does a server bind the port: sys_enter_bind makes it a target.
    let mut server = Proc::spawn(
        std::process::Command::new(python())
            .arg(server_script("pyserver.py"))
            .arg("threading")
            .env("SLOWTRACE_TEST_PORT", port.to_string())
            .stdout(std::process::Stdio::piped()),
    );
    assert_eq!(read_port(server.child.stdout.take().unwrap()), port);
    for i in 0..3 {
        assert_eq!(curl(&[url(port, &format!("/users/{i}"))]), [200]);
    }
    let done = trace.stop();
    assert_eq!(done.records.len(), 3, "{:#?}", done.records);
    assert!(done.stdout.contains("1 port binds"), "{}", done.stdout);
}
