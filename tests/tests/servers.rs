//! Root tests of the servers Python web apps run under besides gunicorn's sync workers: gunicorn
//! `gthread` (requests on a pool of threads, tid != pid), uWSGI with `--harakiri` (SIGKILL of a
//! stuck worker) and uvicorn serving a Django ASGI app (many requests at once on one event-loop
//! thread). Real servers from the test venv, real clients.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::*;
use serde_json::Value;

fn bin(name: &str) -> std::path::PathBuf {
    let b = venv().join("bin").join(name);
    assert!(b.exists(), "{} missing: run cargo xtask setup", b.display());
    b
}

/// Frames of `file` in a capture, innermost first, as "function:line".
fn frames_in(capture: &Value, file: &str) -> Vec<String> {
    capture["python"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["file"].as_str().unwrap_or("").ends_with(file))
        .map(|f| format!("{}:{}", f["function"].as_str().unwrap(), f["line"]))
        .collect()
}

fn captures(slow: &Value) -> &Vec<Value> {
    slow["captures"].as_array().unwrap()
}

fn one<'a>(slow: &'a [Value], endpoint: &str) -> &'a Value {
    let v: Vec<&Value> = slow.iter().filter(|s| s["endpoint"] == endpoint).collect();
    assert_eq!(v.len(), 1, "{endpoint}: {slow:#?}");
    v[0]
}

/// Run `urls` at once, one curl each; returns their status codes in order.
fn concurrently(urls: &[String]) -> Vec<u16> {
    let handles: Vec<_> = urls
        .iter()
        .map(|u| {
            let u = u.clone();
            std::thread::spawn(move || curl(&[u]))
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn gthread_captures_and_breakdown_are_of_the_serving_thread() {
    require_root();
    let port = free_port();
    let ready = GunicornReady::default();
    let master = Proc::spawn(
        ready
            .configure(
                Command::new(bin("gunicorn"))
                    .current_dir(server_script(""))
                    .args(["-k", "gthread", "--workers", "1", "--threads", "4"]),
            )
            .args([
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--log-level",
                "warning",
                "threadapp:application",
            ])
            .stdout(Stdio::null()),
    );
    wait_port(port);
    let worker = ready.workers(master.pid(), 1)[0];
    let trace = Trace::start(&[
        "--port",
        &port.to_string(),
        "--threshold",
        "500ms",
        "--resample",
        "300ms",
    ]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // One worker process, two requests at once on two of its threads: one sleeps, one spins.
    assert_eq!(
        concurrently(&[url("/sleep?s=1.5"), url("/spin?s=1.5")]),
        [200, 200]
    );
    for _ in 0..5 {
        assert_eq!(curl(&[url("/fast")]), [200]);
    }
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    assert_eq!(done.records.len(), 7, "{:#?}", done.records);
    let sleep = done.with_endpoint("GET /sleep");
    let spin = done.with_endpoint("GET /spin");
    let (sleep, spin) = (sleep[0], spin[0]);
    for r in [sleep, spin] {
        assert_eq!(r["pid"], worker, "{r}");
        assert_ne!(
            r["tid"], worker,
            "served on a pool thread, not the main one: {r}"
        );
    }
    assert_ne!(
        sleep["tid"], spin["tid"],
        "two requests at once, two threads"
    );
    // The breakdown is of the serving thread: the sleeper slept, the spinner ran, though both
    // were in one process at the same time.
    let (sb, pb) = (&sleep["breakdown"], &spin["breakdown"]);
    eprintln!(
        "gthread worker {worker}: sleep on tid {} {sb}; spin on tid {} {pb}",
        sleep["tid"], spin["tid"]
    );
    let share = |r: &Value, part: &str| {
        r["breakdown"][part].as_f64().unwrap() / r["duration_us"].as_f64().unwrap()
    };
    assert!(share(sleep, "sleep_us") >= 0.8, "sleeper: {sb}");
    assert!(share(sleep, "on_cpu_us") <= 0.1, "sleeper: {sb}");
    assert!(share(spin, "on_cpu_us") >= 0.7, "spinner: {pb}");
    assert!(share(spin, "sleep_us") <= 0.1, "spinner: {pb}");

    // The captures are of the serving thread too: the sleeper's show nap, the spinner's spin.
    let slow = read_records(&done.dir.join("slow.jsonl"));
    assert_eq!(slow.len(), 2, "{slow:#?}");
    let want_nap = [
        format!("nap:{}", mark("threadapp.py", "nap")),
        format!("application:{}", mark("threadapp.py", "sleep_app")),
    ];
    let s = one(&slow, "GET /sleep");
    assert_eq!(s["tid"], sleep["tid"]);
    assert!(!captures(s).is_empty());
    for c in captures(s) {
        let f = frames_in(c, "threadapp.py");
        assert!(f.starts_with(&want_nap), "sleeper capture {f:?}: {c}");
        assert_eq!(c["state"], "blocked", "{c}");
    }
    let want_spin = [
        format!("spin:{}", mark("threadapp.py", "spin")),
        format!("application:{}", mark("threadapp.py", "spin_app")),
    ];
    let p = one(&slow, "GET /spin");
    assert!(!captures(p).is_empty());
    for c in captures(p) {
        let f = frames_in(c, "threadapp.py");
        assert!(f.starts_with(&want_spin), "spinner capture {f:?}: {c}");
    }
}

/// uWSGI with a master and two workers, harakiri after 3 s, serving tests/servers/threadapp.py;
/// `extra` options appended. Returns it and its port.
fn uwsgi(extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let p = Proc::spawn(
        Command::new(bin("uwsgi"))
            .current_dir(server_script(""))
            .args([
                "--http-socket",
                &format!("127.0.0.1:{port}"),
                "--wsgi-file",
                "threadapp.py",
                "--master",
                "--processes",
                "2",
                "--harakiri",
                "3",
                "--need-app",
                "--die-on-term",
                "--disable-logging",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_port(port);
    (p, port)
}

/// Serve a few fast requests, a slow one and a stuck one that harakiri kills; returns the
/// finished trace and its slow records, after checking what any uWSGI configuration must give:
/// exact records of the served requests and a `killed` record of SIGKILL for the stuck one.
fn uwsgi_harakiri_case(extra: &[&str]) -> (Finished, Vec<Value>) {
    let (_uwsgi, port) = uwsgi(extra);
    let trace = Trace::start(&[
        "--port",
        &port.to_string(),
        "--threshold",
        "1s",
        "--resample",
        "500ms",
    ]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for _ in 0..3 {
        assert_eq!(curl(&[url("/fast")]), [200]);
    }
    assert_eq!(curl(&[url("/sleep?s=1.5")]), [200]);
    // Harakiri: uWSGI's master kills the stuck worker; the client gets no answer at all.
    assert_eq!(curl(&[url("/stuck")]), [0]);
    trace.wait_records("slow.jsonl", "the killed GET /stuck", |slow| {
        slow.iter().any(|s| s["endpoint"] == "GET /stuck")
    });
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    let slow = read_records(&done.dir.join("slow.jsonl"));
    assert_eq!(slow.len(), 2, "{slow:#?}");
    let k = one(&slow, "GET /stuck");
    eprintln!("harakiri record: {k}");
    assert_eq!(k["kind"], "killed", "{k:#}");
    assert_eq!(k["killed"]["signal"], "SIGKILL", "{k:#}");
    assert_eq!(k["killed"]["process_died"], true, "{k:#}");
    assert_eq!(k["end"], "process_exit", "{k:#}");
    let at = k["killed"]["at_ms"].as_u64().unwrap();
    // uWSGI keeps harakiri deadlines in whole seconds and checks them once a second: the kill
    // comes 2 to 4 s after the request started.
    assert!(
        (1_500..6_000).contains(&at),
        "harakiri 3 s, killed at {at} ms"
    );
    // The killer is uWSGI's master, the parent of the worker that died.
    let sender = k["killed"]["sender_pid"].as_u64().unwrap();
    assert_ne!(sender, k["pid"].as_u64().unwrap(), "{k:#}");
    assert!(!captures(k).is_empty(), "captured before it died: {k:#}");
    // Native frames: the worker inside uWSGI's WSGI call, asleep in time.sleep.
    // (A capture whose thread ran while its stack was copied has none, and says so.)
    let with_native: Vec<&Value> = captures(k)
        .iter()
        .filter(|c| c["native_source"] != "none")
        .collect();
    assert!(!with_native.is_empty(), "{k:#}");
    for c in with_native {
        let native: Vec<&str> = c["native"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["function"].as_str().unwrap())
            .collect();
        if c["native_source"] == "syscall pc" {
            // The fallback kernel path (no BTF) has the blocked thread's innermost frame only.
            assert!(native[0].contains("clock_nanosleep"), "{native:?}");
        } else {
            assert!(
                native.contains(&"uwsgi_request_wsgi") && native.contains(&"time_sleep"),
                "{native:?}"
            );
        }
    }
    assert_eq!(
        done.with_endpoint("GET /fast").len(),
        3,
        "{:#?}",
        done.records
    );
    assert_eq!(one(&slow, "GET /sleep")["kind"], "slow");
    (done, slow)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn uwsgi_harakiri_is_a_killed_record_with_sigkill_and_the_stuck_line() {
    require_root();
    // With the option, CPython's after-fork hook renews the worker's thread id.
    let (_done, slow) = uwsgi_harakiri_case(&["--py-call-osafterfork"]);
    stuck_line_in_every_capture(&slow);
}

/// The killed request's captures show the stuck line under the application, and the slow
/// one's its own nap.
fn stuck_line_in_every_capture(slow: &[Value]) {
    let k = one(slow, "GET /stuck");
    let want = [
        format!("stuck:{}", mark("threadapp.py", "stuck")),
        format!("application:{}", mark("threadapp.py", "stuck_app")),
    ];
    for c in captures(k) {
        let f = frames_in(c, "threadapp.py");
        assert!(f.starts_with(&want), "{f:?}, want {want:?}: {c}");
    }
    let s = one(slow, "GET /sleep");
    assert!(captures(s).iter().all(|c| frames_in(c, "threadapp.py")
        .first()
        .is_some_and(|f| f.starts_with("nap:"))));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn uwsgi_harakiri_with_default_options_is_a_killed_record_with_the_stuck_line() {
    require_root();
    // uWSGI's defaults fork the workers without telling CPython, so a worker's thread state
    // keeps the master's thread id; the reader takes the one state no live thread claims as
    // the main thread's (python/threads.rs), and the frames are the worker's.
    let (_done, slow) = uwsgi_harakiri_case(&[]);
    stuck_line_in_every_capture(&slow);
}

/// uvicorn serving tests/servers/asgiapp.py with one worker process; returns it and its port.
fn uvicorn() -> (Proc, u16) {
    let port = free_port();
    let p = Proc::spawn(
        Command::new(bin("uvicorn"))
            .current_dir(server_script(""))
            .args([
                "asgiapp:application",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--log-level",
                "warning",
                "--no-access-log",
                "--lifespan",
                "off",
            ])
            .stdout(Stdio::null()),
    );
    wait_port(port);
    (p, port)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn uvicorn_counts_and_times_concurrent_requests_exactly() {
    require_root();
    let (server, port) = uvicorn();
    let trace = Trace::start(&["--port", &port.to_string()]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // Eight requests at once, all on the one event-loop thread, each awaiting 600 ms.
    let sleeps: Vec<String> = (0..8).map(|_| url("/sleep?s=0.6")).collect();
    assert_eq!(concurrently(&sleeps), [200; 8]);
    // Ten on one keep-alive connection, then five separate ones.
    let fast: Vec<String> = (0..10).map(|_| url("/fast")).collect();
    assert_eq!(curl(&fast), [200; 10]);
    for _ in 0..5 {
        assert_eq!(curl(&[url("/fast")]), [200]);
    }
    assert_eq!(curl(&[url("/missing")]), [404]);
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    assert_eq!(done.records.len(), 8 + 15 + 1, "{:#?}", done.records);
    let sleeps = done.with_endpoint("GET /sleep");
    assert_eq!(sleeps.len(), 8);
    let tids: std::collections::BTreeSet<u64> =
        sleeps.iter().map(|r| r["tid"].as_u64().unwrap()).collect();
    assert_eq!(tids.len(), 1, "one event-loop thread: {tids:?}");
    for r in &sleeps {
        assert_eq!(r["pid"], server.pid(), "{r}");
        assert_eq!(r["status"], 200, "{r}");
        let d = r["duration_us"].as_u64().unwrap();
        eprintln!("uvicorn /sleep?s=0.6: {d} µs, breakdown {}", r["breakdown"]);
        // Each its own 600 ms, not the sum of the ones in flight beside it.
        assert!((600_000..900_000).contains(&d), "{d} µs: {r}");
    }
    let fast = done.with_endpoint("GET /fast");
    assert_eq!(fast.len(), 15);
    assert!(fast
        .iter()
        .all(|r| r["status"] == 200 && r["duration_us"].as_u64().unwrap() < 100_000));
    assert_eq!(done.with_endpoint("GET /missing")[0]["status"], 404);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn uvicorn_captures_say_whose_stack_they_show() {
    require_root();
    let (_server, port) = uvicorn();
    let trace = Trace::start(&[
        "--port",
        &port.to_string(),
        "--threshold",
        "500ms",
        "--resample",
        "300ms",
    ]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // The awaiting request first, then one that blocks the loop while the first waits.
    let sleeper = std::thread::spawn({
        let u = url("/sleep?s=3");
        move || curl(&[u])
    });
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(curl(&[url("/block?s=1.5")]), [200]);
    assert_eq!(sleeper.join().unwrap(), [200]);
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    let slow = read_records(&done.dir.join("slow.jsonl"));
    let s = one(&slow, "GET /sleep");
    let b = one(&slow, "GET /block");
    assert_eq!(s["tid"], b["tid"], "one event-loop thread");
    for ep in ["GET /sleep", "GET /block"] {
        let r = done.with_endpoint(ep)[0];
        eprintln!(
            "uvicorn {ep}: {} µs, breakdown {}",
            r["duration_us"], r["breakdown"]
        );
    }
    // Every capture of a request on the loop thread says it is the loop's stack.
    for c in captures(s).iter().chain(captures(b)) {
        assert_eq!(c["stack_of"], "event_loop", "{c}");
    }
    // And that matters: while /block held the loop, the awaiting /sleep's captures show
    // /block's code, not /sleep's.
    let block_frames = [
        format!("spin:{}", mark("asgiapp.py", "spin")),
        format!("block_view:{}", mark("asgiapp.py", "block_view")),
    ];
    let shows = |c: &Value| frames_in(c, "asgiapp.py").starts_with(&block_frames);
    assert!(
        captures(s).iter().any(shows),
        "no capture of /sleep during /block: {s:#}"
    );
    assert!(captures(b).iter().all(shows), "{b:#}");
    // Before and after /block, the loop was idle: waiting in its selector.
    assert!(
        captures(s).iter().any(|c| c["python"][0]["function"]
            .as_str()
            .is_some_and(|f| f.ends_with("select"))),
        "no capture of the idle loop: {s:#}"
    );
    // The awaiting request's own coroutine is never on the loop's stack while it waits.
    assert!(
        captures(s).iter().all(|c| frames_in(c, "asgiapp.py")
            .iter()
            .all(|f| !f.starts_with("async_nap:"))),
        "{s:#}"
    );
    // The human report says so too.
    let report = std::fs::read_dir(done.dir.join("slow"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .find(|t| t.contains("GET /sleep"))
        .unwrap();
    assert!(
        report.contains("the asyncio event loop's thread"),
        "{report}"
    );
}
