//! Root test: `slowtrace top` in a real terminal. tmux gives it one (160×48, on a private tmux
//! server), we drive the Python test server with curl, read the screen with `capture-pane`, open
//! the slow request's captures, press `q`, and check the process exited cleanly, gave the terminal
//! back and exported its requests and slow requests.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use integration_tests::{tmux::Tmux, *};

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

fn read_status(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .filter(|s| s.ends_with('\n'))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn top_shows_endpoints_and_slow_requests_live_and_quits_cleanly() {
    require_root();
    let (server, port) = py_server(&["threading"]);
    let tmp = tempfile::tempdir().unwrap();
    let export: PathBuf = tmp.path().join("export");
    let status = tmp.path().join("status");
    // The shell records how top exited, then keeps the pane open so the restored (normal)
    // screen with top's exit message can be read.
    let shell = format!(
        "{} top --port {port} --threshold 200ms --export {}; echo \"exit=$?\" > {}; sleep 120",
        slowtrace_bin().display(),
        export.display(),
        status.display()
    );
    let tmux = Tmux::start("top", 160, 48, &shell);

    // Up, or exited already (an attach error is one line on the normal screen).
    let started = tmux.wait_for(Duration::from_secs(60), |s| {
        s.contains("slowtrace top") && s.contains("Endpoints") || read_status(&status).is_some()
    });
    let screen = started.unwrap_or_else(|s| panic!("the dashboard did not come up:\n{s}"));
    assert!(
        read_status(&status).is_none(),
        "top exited at once:\n{screen}"
    );
    assert!(screen.contains(&format!("port {port}")), "{screen}");

    for _ in 0..5 {
        assert_eq!(curl(&[url(port, "/hello")]), [200]);
    }
    let slow = std::thread::spawn(move || curl(&[url(port, "/sleep?ms=1500")]));
    // Past 200 ms and still running: listed as RUNNING with its duration ticking.
    let pid_tid = format!("{}/", server.pid());
    let running = tmux.wait_for(Duration::from_secs(3), |s| {
        s.lines()
            .any(|l| l.contains("RUNNING") && l.contains("GET /sleep") && l.contains(&pid_tid))
    });
    let running = running.unwrap_or_else(|s| panic!("no running GET /sleep row:\n{s}"));
    eprintln!("while /sleep runs:\n{running}");
    assert_eq!(slow.join().unwrap(), [200]);

    let done = tmux.wait_for(Duration::from_secs(10), |s| {
        let endpoints = s
            .lines()
            .any(|l| l.contains("GET /hello") && l.contains(" 5 "));
        let finished = s.lines().any(|l| {
            l.contains("GET /sleep")
                && l.contains(" 200 ")
                && l.contains("1.5")
                && l.contains(&pid_tid)
        });
        endpoints && finished
    });
    let done =
        done.unwrap_or_else(|s| panic!("GET /hello ×5 and a finished slow GET /sleep:\n{s}"));
    eprintln!("after:\n{done}");

    // The slow pane has the focus and its top row (the newest slow request, /sleep) selected:
    // Enter opens it. Its captures follow its end by up to a few seconds; the handler's Python
    // frame, blocked in time.sleep, is in them.
    tmux.keys("Enter");
    let detail = tmux.wait_for(Duration::from_secs(10), |s| {
        s.contains("Slow request") && s.contains("GET /sleep") && s.contains("do_GET")
    });
    let detail = detail.unwrap_or_else(|s| panic!("no do_GET frame in the detail view:\n{s}"));
    eprintln!("detail of the slow request:\n{detail}");
    assert!(
        detail.contains("Traceback (most recent call last):"),
        "{detail}"
    );
    assert!(
        detail.contains("clock_nanosleep"),
        "blocked in time.sleep: {detail}"
    );
    tmux.keys("Escape");

    tmux.keys("q");
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = read_status(&status) {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "top did not exit after q:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(exit.trim(), "exit=0", "{}", tmux.screen());
    // The terminal is back: the normal screen shows top's exit message.
    let after = tmux.screen();
    assert!(after.contains("records written to"), "{after}");
    assert!(
        !after.contains("Endpoints ("),
        "alternate screen left: {after}"
    );

    let records = read_records(&export.join("requests.jsonl"));
    assert_eq!(count_where(&records, |r| r["endpoint"] == "GET /hello"), 5);
    let sleep: Vec<_> = records
        .iter()
        .filter(|r| r["endpoint"] == "GET /sleep")
        .collect();
    assert_eq!(sleep.len(), 1, "{records:#?}");
    assert!(sleep[0]["duration_us"].as_u64().unwrap() >= 1_500_000);

    // The slow request went to slow.jsonl with its captures, and to a report, as with record.
    let slow = read_records(&export.join("slow.jsonl"));
    assert_eq!(slow.len(), 1, "{slow:#?}");
    assert_eq!(slow[0]["endpoint"], "GET /sleep");
    let has_do_get = slow[0]["captures"].as_array().unwrap().iter().any(|c| {
        c["python"].as_array().unwrap().iter().any(|f| {
            f["function"]
                .as_str()
                .is_some_and(|f| f.ends_with("do_GET"))
        })
    });
    assert!(has_do_get, "{:#}", slow[0]);
    let reports = std::fs::read_dir(export.join("slow")).unwrap().count();
    assert_eq!(reports, 1);
}
