//! Root tests: faults around a running `slowtrace record` (issue 17, docs/reliability.md
//! "Faults"). In every case: no panic, the exit status docs/errors.md gives, the target unharmed
//! (same pid, same answers, still serving after slowtrace exits), none of the BPF programs or
//! links slowtrace held left once it exited, losses counted in the summary, and every JSON-lines
//! file written so far whole (no torn last line), SIGKILL and full disk included.

use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use integration_tests::{faults::*, *};
use serde_json::Value;

/// The checks every case ends with, once slowtrace has exited.
#[track_caller]
fn after_exit(done: &Finished, held: &Held) {
    assert_no_panic(&done.stderr);
    held.assert_released();
    assert_whole_jsonl(&done.dir);
}

/// The summary's loss lines are there (kernel and user space), for a slowtrace that stopped
/// cleanly.
#[track_caller]
fn losses_printed(done: &Finished) {
    assert!(
        done.stdout.contains("\nkernel: ") && done.stdout.contains("\nuser space: "),
        "no loss lines in the summary:\n{}",
        done.stdout
    );
}

/// The target is the same process and answers as before.
#[track_caller]
fn unharmed(target: &mut Proc, port: u16, path: &str, before: &(u16, String)) {
    assert!(
        target.child.try_wait().unwrap().is_none(),
        "the target {} exited",
        target.pid()
    );
    assert_eq!(
        get(port, path).as_ref(),
        Some(before),
        "{path} after the fault"
    );
}

fn gunicorn(port: u16, ready: &GunicornReady, extra: &[&str]) -> Proc {
    let p = Proc::spawn(
        ready
            .configure(
                Command::new(venv().join("bin/gunicorn"))
                    .current_dir(repo().join("tests/servers"))
                    .args([
                        "--bind",
                        &format!("127.0.0.1:{port}"),
                        "--log-level",
                        "warning",
                    ])
                    .args(extra),
            )
            .arg("wsgi_app:app")
            .stdout(Stdio::null()),
    );
    wait_port(port);
    p
}

fn slow_records(done: &Finished) -> Vec<Value> {
    read_records(&done.dir.join("slow.jsonl"))
}

/// Python frames of every capture of `slow` records.
fn python_frames(slow: &[Value]) -> Vec<&Value> {
    slow.iter()
        .flat_map(|s| s["captures"].as_array().into_iter().flatten())
        .flat_map(|c| c["python"].as_array().into_iter().flatten())
        .collect()
}

/// N client threads, each getting `paths(i)`; returns the statuses they got (None: no whole
/// response).
fn clients(
    n: usize,
    each: usize,
    port: u16,
    path: impl Fn(usize) -> String + Sync,
) -> Vec<Option<u16>> {
    thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|c| {
                let path = &path;
                s.spawn(move || {
                    (0..each)
                        .map(|i| get(port, &path(c * each + i)).map(|r| r.0))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_worker_sigkilled_mid_request() {
    require_root();
    let port = free_port();
    let ready = GunicornReady::default();
    let mut master = gunicorn(port, &ready, &["--workers", "1"]);
    let old = ready.workers(master.pid(), 1);
    let before = get(port, "/items/1").expect("gunicorn answers");
    let trace = Trace::start(&["--pid", &master.pid().to_string(), "--threshold", "300ms"]);
    let held = held_by(trace.pid());
    let stuck = thread::spawn(move || get(port, "/sleep?ms=30000"));
    // Killed while its request has run for a while (and been captured).
    thread::sleep(Duration::from_millis(1200));
    // SAFETY: killing the gunicorn worker we started.
    unsafe { libc::kill(old[0] as i32, libc::SIGKILL) };
    assert_eq!(
        stuck.join().unwrap(),
        None,
        "a killed worker answers nothing"
    );
    wait_until(
        Duration::from_secs(60),
        "gunicorn to respawn its worker",
        || {
            let now = children(master.pid());
            now.len() == 1 && now[0] != old[0] && ready.is_ready(now[0])
        },
    );
    unharmed(&mut master, port, "/items/1", &before);
    let done = trace.stop();
    after_exit(&done, &held);
    losses_printed(&done);
    assert!(done.success, "{}", done.stderr);
    let killed: Vec<Value> = slow_records(&done)
        .into_iter()
        .filter(|s| s["kind"] == "killed")
        .collect();
    assert_eq!(killed.len(), 1, "{killed:#?}");
    assert_eq!(killed[0]["killed"]["signal"], "SIGKILL");
    assert_eq!(killed[0]["pid"], old[0]);
    assert_eq!(done.with_endpoint("GET /items/:int").len(), 1);
    unharmed(&mut master, port, "/items/1", &before);
}

/// An exec from a request thread (not the main one): the old main thread exits in the kernel's
/// de_thread, which the kernel side takes for the process's exit and unmarks it; slowtrace marks
/// its `--pid` target again at its next scan (requests in between, ≤ 250 ms, are not seen).
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_target_that_execs_itself() {
    require_root();
    let (mut app, port) = fault_app(&[]);
    let before = get(port, "/hello").unwrap();
    let trace = Trace::start(&["--pid", &app.pid().to_string(), "--threshold", "300ms"]);
    let held = held_by(trace.pid());
    assert_eq!(get(port, "/exec").unwrap(), (200, "exec\n".into()));
    // A new image under the same pid, serving the inherited socket, traced again.
    wait_until(
        Duration::from_secs(30),
        "the exec'd server to be traced",
        || {
            let answered = get(port, "/gen").is_some_and(|r| r.1 == "1\n");
            answered
                && trace
                    .records_now()
                    .iter()
                    .any(|r| r["endpoint"] == "GET /gen")
        },
    );
    unharmed(&mut app, port, "/hello", &before);
    // A slow request of the new image: captured from its memory, not the old image's.
    assert_eq!(get(port, "/churn?ms=900").unwrap().0, 200);
    trace.wait_records("slow.jsonl", "the slow request after exec", |r| {
        !r.is_empty()
    });
    let done = trace.stop();
    after_exit(&done, &held);
    losses_printed(&done);
    assert!(done.success, "{}", done.stderr);
    assert!(
        done.stdout
            .contains(" 1 targets traced again after an exec"),
        "{}",
        done.stdout
    );
    assert_eq!(done.with_endpoint("GET /exec").len(), 1);
    assert_eq!(done.with_endpoint("GET /hello").len(), 1);
    assert_eq!(done.with_endpoint("GET /churn").len(), 1);
    // (A /gen sent while the new image was starting can be slow too: it waited in the backlog.)
    let slow: Vec<Value> = slow_records(&done)
        .into_iter()
        .filter(|s| s["endpoint"] == "GET /churn")
        .collect();
    assert_eq!(slow.len(), 1, "{slow:#?}");
    assert!(
        python_frames(&slow)
            .iter()
            .any(|f| f["function"] == "churn" || f["function"] == "dive"),
        "no frame of the exec'd image's churn() in its captures: {slow:#?}"
    );
    unharmed(&mut app, port, "/hello", &before);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn gunicorn_recycling_workers_under_load_is_counted_exactly() {
    require_root();
    let port = free_port();
    let ready = GunicornReady::default();
    let mut master = gunicorn(
        port,
        &ready,
        &[
            "--workers",
            "2",
            "--max-requests",
            "10",
            "--max-requests-jitter",
            "0",
        ],
    );
    let first = ready.workers(master.pid(), 2);
    let before = get(port, "/items/0").unwrap();
    let trace = Trace::start(&["--pid", &master.pid().to_string()]);
    let held = held_by(trace.pid());
    let got = clients(4, 40, port, |i| format!("/items/{i}"));
    let ok = got.iter().filter(|s| **s == Some(200)).count();
    trace.wait_records("requests.jsonl", "every answered request", |r| {
        r.len() >= ok
    });
    let done = trace.stop();
    after_exit(&done, &held);
    losses_printed(&done);
    assert!(done.success, "{}", done.stderr);
    // A worker finishes its request before it is recycled: every client is answered.
    assert_eq!(ok, 160, "{got:?}");
    let items = done.with_endpoint("GET /items/:int");
    assert_eq!(items.len(), ok, "clients got {ok} answers");
    assert!(items.iter().all(|r| r["status"] == 200));
    let pids: std::collections::BTreeSet<u64> =
        items.iter().map(|r| r["pid"].as_u64().unwrap()).collect();
    assert!(
        pids.len() >= 8 && first.iter().any(|p| pids.contains(&(*p as u64))),
        "160 requests at --max-requests 10 went through ≥ 8 workers: {pids:?}"
    );
    unharmed(&mut master, port, "/items/0", &before);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn threads_exiting_while_their_requests_are_captured() {
    require_root();
    let (mut app, port) = fault_app(&[]);
    let before = get(port, "/hello").unwrap();
    // Captures from 100 ms on, again every 250 ms: each request's thread exits right after its
    // answer, often with a capture of it queued or running.
    let trace = Trace::start(&[
        "--pid",
        &app.pid().to_string(),
        "--threshold",
        "100ms",
        "--resample",
        "250ms",
    ]);
    let held = held_by(trace.pid());
    let got = clients(6, 8, port, |i| format!("/sleep?ms={}", 90 + (i * 37) % 400));
    assert!(got.iter().all(|s| *s == Some(200)), "{got:?}");
    trace.wait_records("requests.jsonl", "the 48 requests", |r| r.len() >= 48);
    let done = trace.stop();
    after_exit(&done, &held);
    losses_printed(&done);
    assert!(done.success, "{}", done.stderr);
    assert_eq!(done.with_endpoint("GET /sleep").len(), 48);
    let slow = slow_records(&done);
    assert!(!slow.is_empty());
    assert!(
        !python_frames(&slow).is_empty(),
        "no Python frame in any capture: {slow:#?}"
    );
    unharmed(&mut app, port, "/hello", &before);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn python_frames_changing_under_the_reader() {
    require_root();
    // A background thread and the slow requests create and free frames all the time, while the
    // profiler samples at 997 Hz and captures are taken every 250 ms.
    let (mut app, port) = fault_app(&["--churn"]);
    let before = get(port, "/hello").unwrap();
    let trace = Trace::start(&[
        "--pid",
        &app.pid().to_string(),
        "--threshold",
        "200ms",
        "--resample",
        "250ms",
        "--sample-hz",
        "997",
    ]);
    let held = held_by(trace.pid());
    let got = clients(3, 2, port, |_| "/churn?ms=1200".into());
    assert!(got.iter().all(|s| *s == Some(200)), "{got:?}");
    trace.wait_records("slow.jsonl", "the 6 slow requests", |r| r.len() >= 6);
    let done = trace.stop();
    after_exit(&done, &held);
    losses_printed(&done);
    assert!(done.success, "{}", done.stderr);
    assert_eq!(done.with_endpoint("GET /churn").len(), 6);
    let slow = slow_records(&done);
    let frames = python_frames(&slow);
    // What the reader shows held still while it read: names of this program, never garbage.
    let source = std::fs::read_to_string(server_script("fault_app.py")).unwrap();
    assert!(
        frames.iter().any(|f| f["function"] == "dive"),
        "no dive() frame in any capture: {slow:#?}"
    );
    for f in &frames {
        let qualified = f["function"].as_str().unwrap_or("");
        let name = qualified.rsplit('.').next().unwrap_or("");
        let file = f["file"].as_str().unwrap_or("");
        assert!(
            file.ends_with(".py")
                && !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || "_.<>".contains(c)),
            "a frame that is not this program's: {f}"
        );
        if file.ends_with("fault_app.py") {
            assert!(
                source.contains(&format!("def {name}(")) || name.starts_with('<'),
                "a fault_app.py frame with an unknown name: {f}"
            );
        }
    }
    assert!(done.stdout.contains("\nprofile: "), "{}", done.stdout);
    unharmed(&mut app, port, "/hello", &before);
}

/// (lines written, lines lost) of `file` from the summary's "WARNING: output lost: …" line.
fn output_lost(text: &str, file: &str) -> Option<(usize, usize)> {
    // record prints it in its summary (stdout), the agent on stderr after "slowtrace: ".
    let line = text
        .lines()
        .map(|l| l.strip_prefix("slowtrace: ").unwrap_or(l))
        .find(|l| l.starts_with("WARNING: output lost: ") && l.contains(file))?;
    let (_, rest) = line.split_once(&format!("{file}: "))?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    Some((words[0].parse().ok()?, words[3].parse().ok()?))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_full_output_disk() {
    require_root();
    let (mut app, port) = fault_app(&[]);
    let before = get(port, "/hello").unwrap();
    let disk = Tmpfs::mount("2m");
    let out = disk.path().join("out");
    let trace = Trace::start_out(&["--pid", &app.pid().to_string()], &out);
    let held = held_by(trace.pid());
    // Room for a few dozen request lines (~600 bytes each), then none.
    disk.fill_leaving(24 * 1024);
    let got = clients(4, 100, port, |i| format!("/users/{i}"));
    assert!(got.iter().all(|s| *s == Some(200)), "{got:?}");
    let done = trace.stop();
    after_exit(&done, &held);
    losses_printed(&done);
    // The run went on to its summary; its files are incomplete: 74 (docs/errors.md).
    assert_eq!(done.status.code(), Some(74), "{}", done.stderr);
    let warnings: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.contains("WARNING") && l.contains("requests.jsonl"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for requests.jsonl: {}",
        done.stderr
    );
    assert!(
        warnings[0].contains("No space left on device"),
        "{}",
        warnings[0]
    );
    let (written, lost) = output_lost(&done.stdout, "requests.jsonl")
        .unwrap_or_else(|| panic!("no loss line for requests.jsonl:\n{}", done.stdout));
    assert_eq!(
        done.records.len(),
        written,
        "the lines on disk are the ones said written"
    );
    assert_eq!(written + lost, 400, "every request written or counted lost");
    assert!(written > 0 && lost > 0, "{written} written, {lost} lost");
    assert!(done.stdout.contains("\n400 requests in"), "{}", done.stdout);
    unharmed(&mut app, port, "/hello", &before);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_agent_goes_on_when_its_output_disk_fills() {
    require_root();
    let (mut app, port) = fault_app(&[]);
    let before = get(port, "/hello").unwrap();
    let disk = Tmpfs::mount("2m");
    let out = disk.path().join("out");
    let trace = Trace::start_agent_out(
        &["--pid", &app.pid().to_string(), "--metrics-addr", "off"],
        &out,
    );
    let held = held_by(trace.pid());
    disk.fill_leaving(24 * 1024);
    let got = clients(4, 50, port, |i| format!("/users/{i}"));
    assert!(got.iter().all(|s| *s == Some(200)), "{got:?}");
    let done = trace.stop();
    after_exit(&done, &held);
    assert_eq!(done.status.code(), Some(74), "{}", done.stderr);
    let warnings = done
        .stderr
        .lines()
        .filter(|l| l.contains("WARNING") && l.contains("requests.jsonl") && !l.contains("lost:"))
        .count();
    assert_eq!(warnings, 1, "one warning as it happens: {}", done.stderr);
    let (written, lost) = output_lost(&done.stderr, "requests.jsonl")
        .unwrap_or_else(|| panic!("no loss line for requests.jsonl:\n{}", done.stderr));
    assert_eq!(
        done.records.len(),
        written,
        "the lines on disk are the ones said written"
    );
    assert_eq!(written + lost, 200, "every request written or counted lost");
    // The agent's own count (its status line) is not touched by the files' losses.
    assert!(
        done.stderr.contains(": 200 requests;"),
        "the status line counts every request: {}",
        done.stderr
    );
    unharmed(&mut app, port, "/hello", &before);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_output_directory_removed_while_running() {
    require_root();
    let (mut app, port) = fault_app(&[]);
    let before = get(port, "/hello").unwrap();
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    let trace = Trace::start_out(
        &["--pid", &app.pid().to_string(), "--threshold", "300ms"],
        &out,
    );
    let held = held_by(trace.pid());
    let got = clients(2, 10, port, |i| format!("/users/{i}"));
    assert!(got.iter().all(|s| *s == Some(200)));
    trace.wait_records("requests.jsonl", "the first 20 requests", |r| r.len() >= 20);
    std::fs::remove_dir_all(&out).unwrap();
    // Seen at the next flush (every 250 ms), before these are handed out.
    thread::sleep(Duration::from_secs(1));
    let got = clients(2, 10, port, |i| format!("/users/{i}"));
    assert!(got.iter().all(|s| *s == Some(200)));
    assert_eq!(get(port, "/sleep?ms=700").unwrap().0, 200);
    let done = trace.stop();
    assert_no_panic(&done.stderr);
    held.assert_released();
    losses_printed(&done);
    assert_eq!(done.status.code(), Some(74), "{}", done.stderr);
    for file in ["requests.jsonl", "slow.jsonl"] {
        let n = done
            .stderr
            .lines()
            .filter(|l| l.contains("WARNING") && l.contains(file))
            .count();
        assert_eq!(n, 1, "one warning for {file}:\n{}", done.stderr);
    }
    assert!(
        done.stderr.contains("writing a slow-request report failed"),
        "{}",
        done.stderr
    );
    assert_eq!(
        output_lost(&done.stdout, "requests.jsonl"),
        Some((20, 21)),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout.contains("1 reports not written"),
        "{}",
        done.stdout
    );
    unharmed(&mut app, port, "/hello", &before);
}

/// A number from the summary's "kernel: …" line: the word before `label`.
fn kernel_count(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("kernel: "))
        .unwrap_or_else(|| panic!("no kernel line:\n{stdout}"));
    let at = line
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {line}"));
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {label:?} in {line}"))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_burst_bigger_than_the_ring_buffer() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (mut nginx, port) = nginx(dir.path(), true);
    let before = get(port, "/index.html").unwrap();
    let trace = Trace::start(&[
        "--port",
        &port.to_string(),
        "--sample-hz",
        "0",
        "--threshold",
        "0",
    ]);
    let held = held_by(trace.pid());
    let log = dir.path().join("access.log");
    let logged = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let served_before = logged();
    // slowtrace stopped as a loaded machine stops a reader: the kernel keeps writing records
    // (~460 bytes each into 4 MiB, ~9,000) while nothing reads them; the burst is several times
    // that.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(trace.pid() as i32, libc::SIGSTOP) };
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c16",
            "-d3s",
            &format!("http://127.0.0.1:{port}/index.html"),
        ])
        .output()
        .expect("wrk");
    // SAFETY: as above.
    unsafe { libc::kill(trace.pid() as i32, libc::SIGCONT) };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let served = logged() - served_before;
    let done = trace.stop();
    after_exit(&done, &held);
    losses_printed(&done);
    assert!(done.success, "{}", done.stderr);
    let recorded = done.with_endpoint("GET /index.html").len();
    let dropped = kernel_count(&done.stdout, "dropped (ring buffer full)") as usize;
    let untracked = kernel_count(&done.stdout, "connections untracked") as usize;
    eprintln!("burst: nginx served {served}, recorded {recorded}, dropped {dropped}, untracked {untracked}");
    assert!(served > 20_000, "the burst was only {served} requests");
    assert!(
        dropped > 0,
        "a burst of {served} did not overflow the ring:\n{}",
        done.stdout
    );
    assert!(
        done.stdout.contains("WARNING: events were lost"),
        "{}",
        done.stdout
    );
    // Every request the server logged is a record or a counted drop.
    assert_eq!(recorded + dropped, served, "{}", done.stdout);
    unharmed(&mut nginx, port, "/index.html", &before);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn stopped_by_signals_at_random_moments_under_load() {
    require_root();
    let (mut app, port) = fault_app(&[]);
    let before = get(port, "/hello").unwrap();
    let mut rng = Rng::seeded();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..3)
        .map(|c| {
            let (stop, answered) = (stop.clone(), answered.clone());
            thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let path = match (c, i % 10) {
                        (0, 0) => "/sleep?ms=400".to_owned(),
                        _ => format!("/users/{i}"),
                    };
                    let r = get(port, &path);
                    assert_eq!(r.map(|r| r.0), Some(200), "{path} under load");
                    answered.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for (round, signal) in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL]
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        let trace = Trace::start(&["--pid", &app.pid().to_string(), "--threshold", "200ms"]);
        let held = held_by(trace.pid());
        let at = rng.below(2500);
        eprintln!("round {round}: signal {signal} after {at} ms");
        thread::sleep(Duration::from_millis(at));
        let done = trace.stop_with(signal);
        after_exit(&done, &held);
        if signal == libc::SIGKILL {
            use std::os::unix::process::ExitStatusExt as _;
            assert_eq!(done.status.signal(), Some(libc::SIGKILL));
        } else {
            assert!(done.success, "stopped by {signal}: {}", done.stderr);
            losses_printed(&done);
            assert!(done.stdout.contains(" requests in "), "{}", done.stdout);
        }
        assert_eq!(
            get(port, "/hello").as_ref(),
            Some(&before),
            "the target after round {round}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert!(answered.load(Ordering::Relaxed) > 20);
    unharmed(&mut app, port, "/hello", &before);
}
