//! Root tests of "dogslow from outside": gunicorn + Django on CPython 3.9 to 3.13, each
//! slow view parked somewhere known; the captures must name the app's functions and lines. Plus
//! a native server whose spinning handler must be named in the native frames.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::*;
use serde_json::Value;

fn venv_for(minor: &str) -> Option<PathBuf> {
    let v = if minor == "3.11" {
        venv()
    } else {
        repo().join(format!("target/venv-{minor}"))
    };
    v.join("bin/gunicorn").exists().then_some(v)
}

fn read_jsonl(path: &std::path::Path) -> Vec<Value> {
    read_records(path)
}

/// Python frames of a capture, innermost first, as "function:line".
fn py_frames(c: &Value) -> Vec<String> {
    c["python"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{}:{}", f["function"].as_str().unwrap(), f["line"]))
        .collect()
}

/// The innermost frame of djangoapp.py in any capture of `slow`, as "function:line".
fn app_frames(slow: &Value) -> Vec<Vec<String>> {
    slow["captures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["python"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["file"].as_str().unwrap_or("").ends_with("djangoapp.py"))
                .map(|f| format!("{}:{}", f["function"].as_str().unwrap(), f["line"]))
                .collect()
        })
        .collect()
}

fn django_case(minor: &str) {
    let Some(venv) = venv_for(minor) else {
        panic!("no python {minor} venv: cargo xtask setup makes it when pyenv has CPython {minor}");
    };
    let port = free_port();
    let lock = tempfile::NamedTempFile::new().unwrap();
    let ready = GunicornReady::default();
    let master = Proc::spawn(
        ready
            .configure(
                Command::new(venv.join("bin/gunicorn"))
                    .current_dir(server_script(""))
                    .env("SLOWTRACE_LOCK", lock.path())
                    .args([
                        "--workers",
                        "4",
                        "--timeout",
                        "5",
                        "--graceful-timeout",
                        "1",
                    ]),
            )
            .args([
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--log-level",
                "warning",
                "djangoapp:application",
            ])
            .stdout(Stdio::null()),
    );
    wait_port(port);
    // The slow requests below run at once, one per worker: all four must be serving.
    ready.workers(master.pid(), 4);
    let trace = Trace::start(&[
        "--port",
        &port.to_string(),
        "--threshold",
        "1s",
        "--resample",
        "500ms",
    ]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // (a) sleep in a helper, (b) evil regex, (c) wait on a lock another request holds,
    // (d) outlive gunicorn's timeout. (a)-(c) at once on 4 workers, (c) on two of them.
    let a = std::thread::spawn({
        let u = url("/sleep?s=2.5");
        move || curl(&[u])
    });
    let b = std::thread::spawn({
        let u = url("/regex?s=2.5");
        move || curl(&[u])
    });
    let holder = std::thread::spawn({
        let u = url("/lock?hold=3.5");
        move || curl(&[u])
    });
    wait_until(
        Duration::from_secs(10),
        "the holder to take the lock",
        || flock_held(lock.path()),
    );
    let waiter = std::thread::spawn({
        let u = url("/lock");
        move || curl(&[u])
    });
    assert_eq!(a.join().unwrap(), [200]);
    assert_eq!(b.join().unwrap(), [200]);
    assert_eq!(holder.join().unwrap(), [200]);
    assert_eq!(waiter.join().unwrap(), [200]);
    for _ in 0..5 {
        assert_eq!(curl(&[url("/fast")]), [200]);
    }
    let killed = curl(&[url("/forever")]);
    assert!(
        killed == [500] || killed == [0] || killed == [502],
        "gunicorn timeout answer: {killed:?}"
    );
    // The killed request is written once its worker is gone.
    trace.wait_records("slow.jsonl", "the killed GET /forever", |slow| {
        slow.iter().any(|s| s["endpoint"] == "GET /forever")
    });
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    let slow = read_jsonl(&done.dir.clone().join("slow.jsonl"));
    let by = |ep: &str| -> Vec<&Value> { slow.iter().filter(|s| s["endpoint"] == ep).collect() };
    eprintln!("python {minor}: {} slow records", slow.len());

    assert!(
        by("GET /fast").is_empty(),
        "fast requests leave no slow record"
    );
    // (a)
    let s = by("GET /sleep");
    assert_eq!(s.len(), 1, "{slow:#?}");
    let frames = app_frames(s[0]);
    let want = [
        format!("nap:{}", mark("djangoapp.py", "nap")),
        format!("sleep_view:{}", mark("djangoapp.py", "sleep_view")),
    ];
    assert!(
        frames.iter().any(|f| f.starts_with(&want)),
        "(a) {minor}: {frames:?}, want {want:?}"
    );
    assert!(s[0]["captures"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["state"] == "blocked"));
    // (b)
    let s = by("GET /regex");
    assert_eq!(s.len(), 1);
    let want = format!("regex_view:{}", mark("djangoapp.py", "regex"));
    let frames = app_frames(s[0]);
    assert!(
        frames.iter().any(|f| f.first() == Some(&want)),
        "(b) {minor}: {frames:?}, want {want}; captures: {}",
        s[0]["captures"]
    );
    // (c): the waiter is blocked in flock at its line.
    let waits: Vec<&Value> = by("GET /lock")
        .into_iter()
        .filter(|s| s["path"] == "/lock")
        .collect();
    assert_eq!(waits.len(), 1, "{:#?}", by("GET /lock"));
    let want = [
        format!("wait_lock:{}", mark("djangoapp.py", "wait_lock")),
        format!("lock_view:{}", mark("djangoapp.py", "lock_view")),
    ];
    let frames = app_frames(waits[0]);
    assert!(
        frames.iter().any(|f| f.starts_with(&want)),
        "(c) {minor}: {frames:?}, want {want:?}"
    );
    // (d)
    let k = by("GET /forever");
    assert_eq!(k.len(), 1, "{slow:#?}");
    assert_eq!(k[0]["kind"], "killed", "{:#?}", k[0]);
    let sig = k[0]["killed"]["signal"].as_str().unwrap();
    assert!(sig == "SIGABRT" || sig == "SIGKILL", "{sig}");
    assert!(
        !k[0]["captures"].as_array().unwrap().is_empty(),
        "captured before it died"
    );
    let first = py_frames(&k[0]["captures"][0]);
    assert!(
        first.iter().any(|f| f.starts_with("forever_view:")),
        "{first:?}"
    );
    // The human reports exist, one per slow record.
    let reports = std::fs::read_dir(done.dir.clone().join("slow"))
        .unwrap()
        .count();
    assert_eq!(reports, slow.len());
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn django_slow_requests_py39() {
    require_root();
    django_case("3.9");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn django_slow_requests_py310() {
    require_root();
    django_case("3.10");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn django_slow_requests_py311() {
    require_root();
    django_case("3.11");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn django_slow_requests_py312() {
    require_root();
    django_case("3.12");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn django_slow_requests_py313() {
    require_root();
    django_case("3.13");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn native_handler_is_named_in_native_frames() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_native_server(dir.path());
    let mut server = Proc::spawn(Command::new(&exe).stdout(Stdio::piped()));
    let port = read_port(server.child.stdout.take().unwrap());
    let trace = Trace::start(&["--pid", &server.pid().to_string(), "--threshold", "500ms"]);
    assert_eq!(curl(&[format!("http://127.0.0.1:{port}/spin")]), [200]);
    assert_eq!(curl(&[format!("http://127.0.0.1:{port}/fast")]), [200]);
    let done = trace.stop();
    let slow = read_jsonl(&done.dir.join("slow.jsonl"));
    assert_eq!(slow.len(), 1, "{slow:#?}");
    let caps = slow[0]["captures"].as_array().unwrap();
    assert!(!caps.is_empty());
    let named = caps.iter().any(|c| {
        c["native"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["function"] == "slow_handler_spin")
    });
    assert!(named, "{caps:#?}");
    assert!(caps.iter().any(|c| c["state"] == "running"));
}
