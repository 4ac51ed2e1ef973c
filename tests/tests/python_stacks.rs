//! `slowtrace pystack` against real CPython 3.9, 3.10, 3.11, 3.12 and 3.13 processes (the pyenv builds under
//! /root/.pyenv/versions): the stacks it prints must name the functions, files and lines the
//! threads of tests/servers/stack_target.py are parked at, and agree with faulthandler's own dump.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use integration_tests::*;

/// Recursion depth of the main thread: with main, <module>, middle_sleep and inner_sleep the
/// sleeping stack is 30 frames deep.
const DEPTH: usize = 25;

fn pyenv_root() -> PathBuf {
    std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"))
}

/// `python3` of the newest installed pyenv 3.<minor>.*, if any.
fn python_for(minor: u32) -> Option<PathBuf> {
    let prefix = format!("3.{minor}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir(pyenv_root().join("versions"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join("bin/python3"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

fn script() -> PathBuf {
    server_script("stack_target.py")
}

/// 1-based line of the `# MARK: name` comment in the target script.
fn marker(name: &str) -> u32 {
    let text = std::fs::read_to_string(script()).unwrap();
    let tag = format!("# MARK: {name}");
    let hits: Vec<u32> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_end().ends_with(&tag))
        .map(|(i, _)| i as u32 + 1)
        .collect();
    assert_eq!(hits.len(), 1, "marker {name:?} must appear once");
    hits[0]
}

/// One frame as printed: (file, line, function).
type Frame = (String, Option<u32>, String);

/// A thread's stack as `pystack` printed it, outermost first.
#[derive(Debug)]
struct ThreadStack {
    tid: u32,
    frames: Vec<Frame>,
}

/// Parse `  File "F", line N, in FN` (ours) and `  File "F", line N in FN` (faulthandler).
fn parse_frame(line: &str) -> Option<Frame> {
    let rest = line.trim_start().strip_prefix("File \"")?;
    let (file, rest) = rest.split_once("\", line ")?;
    let (num, func) = rest
        .split_once(", in ")
        .or_else(|| rest.split_once(" in "))?;
    Some((file.to_string(), num.parse().ok(), func.to_string()))
}

fn parse_pystack(out: &str) -> Vec<ThreadStack> {
    let mut threads: Vec<ThreadStack> = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("Thread ") {
            let tid = rest.split_whitespace().next().unwrap().parse().unwrap();
            threads.push(ThreadStack {
                tid,
                frames: Vec::new(),
            });
        } else if let Some(f) = parse_frame(line) {
            threads
                .last_mut()
                .expect("frame before a Thread line")
                .frames
                .push(f);
        }
    }
    threads
}

/// faulthandler's dump: one block per thread, innermost first (its order).
fn parse_faulthandler(out: &str) -> Vec<Vec<Frame>> {
    let mut blocks: Vec<Vec<Frame>> = Vec::new();
    for line in out.lines() {
        if line.starts_with("Thread ") || line.starts_with("Current thread ") {
            blocks.push(Vec::new());
        } else if let Some(f) = parse_frame(line) {
            blocks
                .last_mut()
                .expect("frame before a thread line")
                .push(f);
        }
    }
    blocks
}

/// A running stack_target.py.
struct Target {
    proc: Proc,
    spinner: u32,
    churner: u32,
    fault_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Target {
    fn start(python: &Path) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let fault_file = dir.path().join("faulthandler.txt");
        let mut proc = Proc::spawn(
            Command::new(python)
                .arg(script())
                .arg(&fault_file)
                .arg(DEPTH.to_string())
                .stdout(Stdio::piped()),
        );
        let out = proc.child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("stack_target.py printed no READY line");
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.first(), Some(&"READY"), "{line}");
        assert_eq!(f[1].parse::<u32>().unwrap(), proc.pid());
        Target {
            spinner: f[2].parse().unwrap(),
            churner: f[3].parse().unwrap(),
            proc,
            fault_file,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Ask faulthandler for its dump of every thread.
    fn faulthandler(&self) -> String {
        // SAFETY: signalling our child, which registered a SIGUSR1 handler before READY.
        unsafe { libc::kill(self.pid() as i32, libc::SIGUSR1) };
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.fault_file).unwrap_or_default();
            // Complete once the main thread's block (it ends at <module>) is there.
            if text.contains("in <module>") {
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no faulthandler dump: {text:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn pystack(args: &[&str]) -> String {
    let out = Command::new(slowtrace_bin())
        .arg("pystack")
        .args(args)
        .output()
        .expect("run slowtrace pystack");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "slowtrace pystack {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    eprintln!("{stdout}");
    stdout
}

fn function_and_line(f: &Frame) -> (&str, Option<u32>) {
    (f.2.as_str(), f.1)
}

/// The whole check for one minor version.
fn check(minor: u32) {
    require_root();
    let Some(python) = python_for(minor) else {
        panic!(
            "no {}/versions/3.{minor}.*/bin/python3: install CPython 3.{minor} with pyenv",
            pyenv_root().display()
        );
    };
    let t = Target::start(&python);
    let pid = t.pid().to_string();
    let out = pystack(&["--pid", &pid]);
    assert!(
        out.starts_with(&format!("Process {pid} ")) && out.contains(&format!("Python 3.{minor}")),
        "{out}"
    );
    let threads = parse_pystack(&out);
    let script = script().to_string_lossy().into_owned();

    // Main thread: <module> → main → recurse ×(DEPTH+1) → middle_sleep → inner_sleep.
    let main = threads
        .iter()
        .find(|s| s.tid == t.pid())
        .expect("main thread listed");
    let mut want: Vec<(&str, Option<u32>)> = vec![("main", Some(marker("main")))];
    want.extend(std::iter::repeat_n(
        ("recurse", Some(marker("recurse"))),
        DEPTH,
    ));
    want.push(("recurse", Some(marker("recurse-bottom"))));
    want.push(("middle_sleep", Some(marker("call-inner-sleep"))));
    want.push(("inner_sleep", Some(marker("sleep"))));
    let got: Vec<(&str, Option<u32>)> = main.frames.iter().map(function_and_line).collect();
    assert_eq!(got.first().map(|f| f.0), Some("<module>"), "{got:?}");
    assert_eq!(&got[1..], &want[..], "main thread");
    assert!(main.frames.iter().all(|f| f.0 == script), "{main:?}");

    // Spinner: …threading… → Thread.run → spin_thread → inner_spin, in the regex or its loop.
    let spin = threads
        .iter()
        .find(|s| s.tid == t.spinner)
        .expect("spinner thread listed");
    let n = spin.frames.len();
    assert!(n >= 3, "{spin:?}");
    let inner = &spin.frames[n - 1];
    assert_eq!(inner.2, "inner_spin", "{spin:?}");
    assert!(
        [Some(marker("spin")), Some(marker("spin-loop"))].contains(&inner.1),
        "{spin:?}"
    );
    assert_eq!(
        function_and_line(&spin.frames[n - 2]),
        ("spin_thread", Some(marker("call-inner-spin")))
    );
    // 3.9/3.10 code objects have no qualname: the method is just `run`.
    let run = if minor >= 11 { "Thread.run" } else { "run" };
    assert_eq!(spin.frames[n - 3].2, run);
    assert!(spin.frames[n - 3].0.ends_with("threading.py"));

    // faulthandler's view of the sleeping thread, taken after ours: the same frames. It prints
    // co_name where we print co_qualname; for module-level functions they are the same.
    let dump = t.faulthandler();
    let blocks = parse_faulthandler(&dump);
    let sleeping = blocks
        .iter()
        .find(|b| b.first().is_some_and(|f| f.2 == "inner_sleep"))
        .unwrap_or_else(|| panic!("no sleeping thread in faulthandler's dump:\n{dump}"));
    let ours: Vec<&Frame> = main.frames.iter().rev().collect();
    let theirs: Vec<&Frame> = sleeping.iter().collect();
    assert_eq!(ours, theirs, "ours (innermost first) vs faulthandler");

    // The benchmark mode on the 30-frame stack: few system calls, no failures.
    let bench = pystack(&["--pid", &pid, "--tid", &pid, "--bench", "200"]);
    let syscalls: u32 = bench
        .split("syscalls per read p50 ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no syscall figure in {bench}"));
    assert!(
        bench.contains(&format!("of {} frames", DEPTH + 5)),
        "{bench}"
    );
    // thread state, cframe (3.11/3.12), chunk, code headers, shim frames (3.12+); 3.9/3.10 read
    // their heap frame objects one by one while following f_back, then once more in one batch.
    let most = if minor >= 11 { 6 } else { DEPTH as u32 + 5 + 5 };
    assert!(syscalls <= most, "{bench}");

    // The churning thread calls and returns millions of times a second. What we print must be a
    // stack that existed: every fib frame but the innermost is calling (a mixture of frames from
    // different moments would show callers on their `return n` or `if` line). The frames that
    // changed while we read may be left out, so only the outer part is certain to be there.
    let churner = t.churner.to_string();
    let (fib_call, mut torn) = (marker("fib-call"), 0);
    for _ in 0..30 {
        let out = pystack(&["--pid", &pid, "--tid", &churner]);
        let Some(stack) = parse_pystack(&out).pop() else {
            panic!("no thread in {out}")
        };
        if stack.frames.is_empty() {
            assert!(out.contains("inconsistent read"), "{out}");
            torn += 1;
            continue;
        }
        let first_fib = stack
            .frames
            .iter()
            .position(|f| f.2 == "fib")
            .unwrap_or(stack.frames.len());
        assert!(first_fib >= 1, "{stack:?}");
        if first_fib < stack.frames.len() {
            assert_eq!(
                function_and_line(&stack.frames[first_fib - 1]),
                ("churn_thread", Some(marker("churn"))),
                "{stack:?}"
            );
        }
        let fibs = &stack.frames[first_fib..];
        assert!(fibs.iter().all(|f| f.2 == "fib"), "{stack:?}");
        if let Some((_, callers)) = fibs.split_last() {
            assert!(callers.iter().all(|f| f.1 == Some(fib_call)), "{stack:?}");
        }
    }
    assert!(torn <= 3, "{torn} of 30 reads failed even after retries");

    // The spinning thread changes its stack all the time: reading it over and over must give
    // stacks or torn reads, never an error exit.
    let spinner = t.spinner.to_string();
    let bench = pystack(&["--pid", &pid, "--tid", &spinner, "--bench", "300"]);
    assert!(bench.contains("reads of"), "{bench}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn python_3_9() {
    check(9);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn python_3_10() {
    check(10);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn python_3_11() {
    check(11);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn python_3_12() {
    check(12);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn python_3_13() {
    check(13);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn not_python_is_a_clear_error() {
    require_root();
    let sleeper = Proc::spawn(Command::new("sleep").arg("30"));
    let out = Command::new(slowtrace_bin())
        .args(["pystack", "--pid", &sleeper.pid().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("runs no CPython"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A CPython we cannot read says which it is and which we can, instead of "not Python".
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_unsupported_python_is_named() {
    require_root();
    let Some(python) = python_for(8) else {
        panic!(
            "no pyenv CPython 3.8 under {}: install it with pyenv",
            pyenv_root().display()
        );
    };
    let old = Proc::spawn(Command::new(python).args(["-c", "import time; time.sleep(30)"]));
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new(slowtrace_bin())
        .args(["pystack", "--pid", &old.pid().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // EX_DATAERR (65): the process exists but is not a Python we can read (docs/errors.md).
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("Python 3.8") && err.contains("supported: CPython 3.9-3.13"),
        "{err}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_foreign_thread_is_a_clear_error() {
    require_root();
    let Some(python) = [13, 12, 11, 10, 9].into_iter().find_map(python_for) else {
        panic!("no pyenv CPython 3.9-3.13 under {}", pyenv_root().display());
    };
    let t = Target::start(&python);
    let out = Command::new(slowtrace_bin())
        .args(["pystack", "--pid", &t.pid().to_string(), "--tid", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("thread 1 is not a thread of process {}", t.pid())),
        "{err}"
    );
}
