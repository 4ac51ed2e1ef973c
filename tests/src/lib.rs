//! Harness for the root tests: real servers and real clients on 127.0.0.1, the real `slowtrace`
//! binary loading real eBPF. `cargo xtask test` sets SLOWTRACE_BIN and SLOWTRACE_VENV.

pub mod backends;
pub mod faults;
pub mod receivers;
pub mod tmux;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn slowtrace_bin() -> PathBuf {
    std::env::var_os("SLOWTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/slowtrace"))
}

pub fn venv() -> PathBuf {
    std::env::var_os("SLOWTRACE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/venv"))
}

pub fn python() -> PathBuf {
    let p = venv().join("bin/python");
    if p.exists() {
        p
    } else {
        PathBuf::from("python3")
    }
}

pub fn server_script(name: &str) -> PathBuf {
    repo().join("tests/servers").join(name)
}

/// Every test that loads eBPF or drives real servers is `#[ignore = "needs root: run with cargo
/// xtask test"]`, so a plain `cargo test` reports it as ignored, never as passed; `cargo xtask
/// test` runs them all as root with `--include-ignored`. Each one calls this first: run without
/// root anyway (`--include-ignored` as a user), it fails here instead of half-way or silently.
#[track_caller]
pub fn require_root() {
    // SAFETY: plain syscall.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (it loads eBPF and drives real servers; euid is {euid}): \
         run it with `cargo xtask test` as root"
    );
}

/// Poll `ready` every 50 ms until it holds; fail naming `what` after `timeout`.
#[track_caller]
/// The line of the `# MARK:name` comment in tests/servers/FILE: tests name the lines they
/// expect in captures by mark, not by number.
pub fn mark(file: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string(server_script(file)).unwrap();
    let tag = format!("# MARK:{name}");
    text.lines()
        .position(|l| l.trim_end().ends_with(&tag))
        .unwrap_or_else(|| panic!("no {tag} in {file}")) as u64
        + 1
}

pub fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    wait_for(timeout, what, || ready().then_some(()));
}

/// Poll `ready` every 50 ms until it returns something; fail naming `what` after `timeout`.
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "gave up after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The children of `pid` (its main thread's, which is where gunicorn forks its workers).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Whether `pid` has a handler installed for `signal` (its SigCgt mask in /proc/PID/status).
pub fn catches(pid: u32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << (signal - 1)) != 0)
}

/// Whether some process holds a `flock` on `path` (not merely waits for one): /proc/locks.
pub fn flock_held(path: &Path) -> bool {
    flock_holder(path).is_some()
}

/// The pid holding a `flock` on `path` (a waiter is not a holder), from /proc/locks.
pub fn flock_holder(path: &Path) -> Option<i32> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = format!(":{}", std::fs::metadata(path).ok()?.ino());
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            // "1: FLOCK  ADVISORY  WRITE 4242 00:1f:123 0 EOF"; a waiter has "->" after the number.
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"FLOCK") && f.get(5).is_some_and(|id| id.ends_with(&inode)))
                .then(|| f.get(4)?.parse().ok())
                .flatten()
        })
}

/// Knows when gunicorn's workers are ready: gunicorn started with `configure` runs
/// tests/servers/gunicorn_ready.py, whose `post_worker_init` hook (after the app is loaded, just
/// before the worker serves) leaves a file named by the worker's pid in a private directory.
pub struct GunicornReady {
    dir: tempfile::TempDir,
}

impl Default for GunicornReady {
    fn default() -> Self {
        GunicornReady {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl GunicornReady {
    /// The `--config` option and its environment, for the gunicorn command line.
    pub fn configure<'a>(&self, gunicorn: &'a mut Command) -> &'a mut Command {
        gunicorn
            .arg("--config")
            .arg(server_script("gunicorn_ready.py"))
            .env("SLOWTRACE_READY_DIR", self.dir.path())
    }

    /// Whether worker `pid` has loaded the app.
    pub fn is_ready(&self, pid: u32) -> bool {
        self.dir.path().join(pid.to_string()).exists()
    }

    /// Wait until `master` has exactly `n` workers and every one of them has loaded the app;
    /// returns their pids.
    #[track_caller]
    pub fn workers(&self, master: u32, n: usize) -> Vec<u32> {
        wait_for(
            Duration::from_secs(60),
            &format!("{n} gunicorn workers of {master} to load the app"),
            || {
                let w = children(master);
                (w.len() == n && w.iter().all(|p| self.is_ready(*p))).then_some(w)
            },
        )
    }
}

/// A child process killed (with its process group) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Proc { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Start a Python test server that prints "PORT n"; returns it and the port.
pub fn py_server(args: &[&str]) -> (Proc, u16) {
    let mut p = Proc::spawn(
        Command::new(python())
            .arg(server_script("pyserver.py"))
            .args(args)
            .stdout(Stdio::piped()),
    );
    let out = p.child.stdout.take().unwrap();
    let port = read_port(out);
    (p, port)
}

pub fn read_port(out: impl std::io::Read + Send + 'static) -> u16 {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server printed no PORT line");
    line.strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .expect("PORT n")
}

pub fn wait_port(port: u16) {
    wait_until(
        Duration::from_secs(30),
        &format!("something to listen on port {port}"),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

/// Build tests/servers/native_server.c with frame pointers and debug info into `dir`.
pub fn build_native_server(dir: &Path) -> PathBuf {
    let exe = dir.join("native_server");
    let st = Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&exe)
        .arg(server_script("native_server.c"))
        .status()
        .expect("gcc");
    assert!(st.success(), "building the native test server");
    exe
}

/// A free TCP port on 127.0.0.1 (for servers that need one up front).
/// nginx (master + 2 workers, in the foreground) on a free port, serving `dir`/www (an
/// index.html and a 700-byte static/app.css); with `access_log`, its own count of what it served
/// goes to `dir`/access.log.
pub fn nginx(dir: &Path, access_log: bool) -> (Proc, u16) {
    let port = free_port();
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("static")).unwrap();
    std::fs::write(www.join("index.html"), "<h1>hi</h1>\n").unwrap();
    std::fs::write(www.join("static/app.css"), "body{}\n".repeat(100)).unwrap();
    let mut conf = std::fs::read_to_string(server_script("nginx.conf.in")).unwrap();
    if access_log {
        conf = conf.replace(
            "access_log off;",
            &format!("access_log {}/access.log;", dir.display()),
        );
    }
    let conf = conf
        .replace("{workers}", "2")
        .replace("{dir}", &dir.display().to_string())
        .replace("{www}", &www.display().to_string())
        .replace("{port}", &port.to_string());
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let p = Proc::spawn(
        Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir),
    );
    wait_port(port);
    (p, port)
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A running `slowtrace record`.
pub struct Trace {
    proc: Proc,
    pub dir: tempfile::TempDir,
    /// The output directory: `dir` unless started with `start_out`.
    out: PathBuf,
    stderr: mpsc::Receiver<String>,
}

/// What a finished trace left.
#[derive(Debug)]
pub struct Finished {
    /// The output directory (kept until this is dropped).
    pub dir: PathBuf,
    _keep: tempfile::TempDir,
    pub records: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
    pub status: std::process::ExitStatus,
}

impl Finished {
    pub fn with_endpoint(&self, endpoint: &str) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["endpoint"] == endpoint)
            .collect()
    }
}

impl Trace {
    /// Start `slowtrace record ARGS -o TMP` and wait until it says it is tracing.
    pub fn start(args: &[&str]) -> Trace {
        Self::start_sub("record", args, None)
    }

    /// Start `slowtrace record ARGS -o OUT` (an output directory the test provides: a small
    /// tmpfs, one it removes).
    pub fn start_out(args: &[&str], out: &Path) -> Trace {
        Self::start_sub("record", args, Some(out))
    }

    /// Start `slowtrace agent ARGS -o TMP` (the headless agent, with the per-request files on so
    /// that tests can compare its exports with them).
    pub fn start_agent(args: &[&str]) -> Trace {
        Self::start_sub("agent", args, None)
    }

    /// Start `slowtrace agent ARGS -o OUT` with an output directory the test provides.
    pub fn start_agent_out(args: &[&str], out: &Path) -> Trace {
        Self::start_sub("agent", args, Some(out))
    }

    fn start_sub(sub: &str, args: &[&str], out: Option<&Path>) -> Trace {
        let dir = tempfile::tempdir().unwrap();
        let out = out.unwrap_or(dir.path()).to_owned();
        let mut proc = Proc::spawn(
            Command::new(slowtrace_bin())
                .arg(sub)
                .args(args)
                .arg("-o")
                .arg(&out)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let (tx, rx) = mpsc::channel();
        let err = proc.child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("  slowtrace: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_secs(60).saturating_sub(start.elapsed())) {
                Ok(line)
                    if line.starts_with("slowtrace: tracing")
                        || line.starts_with("slowtrace: agent tracing") =>
                {
                    break
                }
                Ok(line) if line.contains("error") => panic!("slowtrace failed to start: {line}"),
                Ok(_) => {}
                Err(_) => panic!("slowtrace did not start tracing within 60 s"),
            }
        }
        Trace {
            proc,
            dir,
            out,
            stderr: rx,
        }
    }

    pub fn requests_path(&self) -> PathBuf {
        self.out.join("requests.jsonl")
    }

    /// The output directory.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Records written so far (the file is flushed every 250 ms).
    pub fn records_now(&self) -> Vec<Value> {
        self.records_in("requests.jsonl")
    }

    /// The complete records in `file` of the output directory so far: a line still being written
    /// (a flush can take more than one write) is left for the next look.
    pub fn records_in(&self, file: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.out.join(file)).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        parse_records(complete)
    }

    /// Wait until the records in `file` satisfy `done`: up to a minute, the output being flushed
    /// every 250 ms. Never fails by itself: the test's assertions, which follow, say what is
    /// missing better than a timeout would.
    pub fn wait_records(&self, file: &str, what: &str, done: impl Fn(&[Value]) -> bool) {
        let start = Instant::now();
        while !done(&self.records_in(file)) {
            if start.elapsed() > Duration::from_secs(60) {
                eprintln!("gave up after 60 s waiting for {what} in {file}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ctrl-C, then collect the output.
    pub fn stop(self) -> Finished {
        self.stop_with(libc::SIGINT)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stop with `signal` (SIGINT, SIGTERM), then collect the output.
    pub fn stop_with(mut self, signal: i32) -> Finished {
        // SAFETY: signalling our child.
        unsafe { libc::kill(self.proc.pid() as i32, signal) };
        let mut stdout = String::new();
        self.proc
            .child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.proc.child.wait().unwrap();
        // Every line, up to the reader thread's end at EOF (a launched command that outlives
        // us may hold the pipe open: then what came within a few seconds).
        let mut stderr = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            stderr.push(line);
        }
        Finished {
            dir: self.out.clone(),
            records: read_records(&self.requests_path()),
            stdout,
            stderr: stderr.join("\n"),
            success: status.success(),
            status,
            _keep: self.dir,
        }
    }
}

pub fn read_records(path: &Path) -> Vec<Value> {
    parse_records(&std::fs::read_to_string(path).unwrap_or_default())
}

fn parse_records(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// `curl` the URLs in one invocation (curl reuses one keep-alive connection for them).
pub fn curl(urls: &[String]) -> Vec<u16> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{http_code}\\n"]);
    for u in urls {
        // -o applies to one URL; the bodies stay out of the status list.
        cmd.args(["-o", "/dev/null", u]);
    }
    let out = cmd.output().expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

/// Send several requests in one write (HTTP/1.1 pipelining), read until all the responses, bodies
/// included, arrived: the server has written its last byte before we close.
pub fn pipelined(port: u16, paths: &[&str]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut batch = String::new();
    for p in paths {
        batch.push_str(&format!(
            "GET {p} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        ));
    }
    s.write_all(batch.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let want = paths.len();
    while complete_responses(&got) < want {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "server closed before {want} responses");
        got.extend_from_slice(&buf[..n]);
    }
}

/// How many complete responses (head and Content-Length body) `buf` starts with.
fn complete_responses(mut buf: &[u8]) -> usize {
    let mut n = 0;
    while let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..head_len]);
        let body_len: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("a pipelined response without Content-Length:\n{head}"));
        let Some(rest) = buf.get(head_len + 4 + body_len..) else {
            break;
        };
        n += 1;
        buf = rest;
    }
    n
}

pub fn count_where(records: &[Value], f: impl Fn(&Value) -> bool) -> usize {
    records.iter().filter(|r| f(r)).count()
}
