//! Root tests: nginx (Debian) with keep-alive, pipelining and wrk; gunicorn sync workers,
//! including workers forked after slowtrace attached.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::*;

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn nginx_keepalive_pipelining_and_wrk() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, port) = nginx(dir.path(), false);
    let trace = Trace::start(&["--port", &port.to_string()]);

    // One curl, five URLs: one keep-alive connection.
    let urls: Vec<String> = [
        "/",
        "/static/app.css",
        "/missing.html",
        "/",
        "/static/app.css",
    ]
    .iter()
    .map(|p| url(port, p))
    .collect();
    assert_eq!(curl(&urls), [200, 200, 404, 200, 200]);
    pipelined(port, &["/", "/static/app.css", "/nope"]);
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    assert_eq!(done.records.len(), 8, "{:#?}", done.records);
    assert_eq!(done.with_endpoint("GET /").len(), 3);
    assert_eq!(done.with_endpoint("GET /static/app.css").len(), 3);
    assert_eq!(done.with_endpoint("GET /missing.html")[0]["status"], 404);
    assert_eq!(done.with_endpoint("GET /nope")[0]["status"], 404);
    assert!(done
        .records
        .iter()
        .all(|r| r["comm"] == "nginx" && r["local_port"] == port));

    // A few seconds of wrk: every completed response is a record; requests wrk abandoned at
    // its stop (at most one per connection) may be recorded too.
    let trace = Trace::start(&["--port", &port.to_string()]);
    let out = Command::new("wrk")
        .args(["-t2", "-c8", "-d3s", &url(port, "/index.html")])
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let served: usize = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in")
                .map(|(n, _)| n.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("wrk output: {text}"));
    trace.wait_records(
        "requests.jsonl",
        &format!("the {served} requests wrk completed to be written"),
        |r| r.len() >= served,
    );
    let done = trace.stop();
    let n = done.with_endpoint("GET /index.html").len();
    assert!(served > 1000, "wrk served only {served}");
    assert!(
        n >= served && n <= served + 8,
        "wrk completed {served}, slowtrace recorded {n}"
    );
    assert!(done.stdout.contains(" 0 dropped"), "{}", done.stdout);
}

fn gunicorn(port: u16, ready: &GunicornReady) -> Proc {
    let p = Proc::spawn(
        ready
            .configure(
                Command::new(venv().join("bin/gunicorn"))
                    .current_dir(repo().join("tests/servers"))
                    .args([
                        "--workers",
                        "2",
                        "--bind",
                        &format!("127.0.0.1:{port}"),
                        "--log-level",
                        "warning",
                    ]),
            )
            .arg("wsgi_app:app")
            .stdout(Stdio::null()),
    );
    wait_port(port);
    p
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn gunicorn_workers_forked_after_attach_are_traced() {
    require_root();
    let port = free_port();
    let ready = GunicornReady::default();
    let master = gunicorn(port, &ready);
    // gunicorn listens before it has forked all its workers.
    let old = ready.workers(master.pid(), 2);
    let trace = Trace::start(&["--pid", &master.pid().to_string()]);
    // Replace every worker: the master forks new ones after slowtrace attached.
    for w in &old {
        // SAFETY: killing a gunicorn worker we started.
        unsafe { libc::kill(*w as i32, libc::SIGKILL) };
    }
    wait_until(
        Duration::from_secs(60),
        "gunicorn to respawn both workers and them to load the app",
        || {
            let now = children(master.pid());
            now.len() == 2 && now.iter().all(|p| !old.contains(p) && ready.is_ready(*p))
        },
    );
    wait_port(port);
    let new_workers = children(master.pid());
    for i in 0..12 {
        assert_eq!(curl(&[url(port, &format!("/items/{i}"))]), [200]);
    }
    assert_eq!(curl(&[url(port, "/missing")]), [404]);
    assert_eq!(curl(&[url(port, "/sleep?ms=300")]), [200]);
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    // wait_port's probe connections carry no request and leave no record.
    assert_eq!(done.records.len(), 14, "{:#?}", done.records);
    assert!(done
        .records
        .iter()
        .all(|r| new_workers.contains(&(r["pid"].as_u64().unwrap() as u32))));
    assert_eq!(done.with_endpoint("GET /items/:int").len(), 12);
    assert_eq!(done.with_endpoint("GET /missing")[0]["status"], 404);
    let us = done.with_endpoint("GET /sleep")[0]["duration_us"]
        .as_u64()
        .unwrap();
    assert!((300_000..400_000).contains(&us), "{us}");
}
