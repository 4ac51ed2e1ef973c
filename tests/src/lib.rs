//! Harness for the root tests: real servers and real clients on 127.0.0.1, the real `slowtrace`
//! binary loading real eBPF. `cargo xtask test` sets SLOWTRACE_BIN and SLOWTRACE_VENV.

pub mod backends;

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

/// The root tests need root. In CI a missing privilege is a failure, elsewhere a visible skip.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI must run the root tests as root");
    }
    eprintln!("SKIPPED {test}: needs root (run `sudo cargo xtask test`)");
    false
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
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
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
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A running `slowtrace record`.
pub struct Trace {
    proc: Proc,
    pub dir: tempfile::TempDir,
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
        let dir = tempfile::tempdir().unwrap();
        let mut proc = Proc::spawn(
            Command::new(slowtrace_bin())
                .arg("record")
                .args(args)
                .arg("-o")
                .arg(dir.path())
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
                Ok(line) if line.starts_with("slowtrace: tracing") => break,
                Ok(line) if line.contains("error") => panic!("slowtrace failed to start: {line}"),
                Ok(_) => {}
                Err(_) => panic!("slowtrace did not start tracing within 60 s"),
            }
        }
        Trace {
            proc,
            dir,
            stderr: rx,
        }
    }

    pub fn requests_path(&self) -> PathBuf {
        self.dir.path().join("requests.jsonl")
    }

    /// Records written so far (the file is flushed every 250 ms).
    pub fn records_now(&self) -> Vec<Value> {
        read_records(&self.requests_path())
    }

    /// Ctrl-C, then collect the output.
    pub fn stop(mut self) -> Finished {
        // SAFETY: signalling our child.
        unsafe { libc::kill(self.proc.pid() as i32, libc::SIGINT) };
        let mut stdout = String::new();
        self.proc
            .child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.proc.child.wait().unwrap();
        let stderr: Vec<String> = self.stderr.try_iter().collect();
        Finished {
            dir: self.dir.path().to_owned(),
            records: read_records(&self.requests_path()),
            stdout,
            stderr: stderr.join("\n"),
            success: status.success(),
            _keep: self.dir,
        }
    }
}

pub fn read_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
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

/// Send several requests in one write (HTTP/1.1 pipelining), read until `n` responses arrived.
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
    while got.windows(5).filter(|w| w == b"HTTP/").count() < want {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "server closed before {want} responses");
        got.extend_from_slice(&buf[..n]);
    }
    // Give the server a moment to finish its last write before we close.
    std::thread::sleep(Duration::from_millis(50));
}

pub fn count_where(records: &[Value], f: impl Fn(&Value) -> bool) -> usize {
    records.iter().filter(|r| f(r)).count()
}
