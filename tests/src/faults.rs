//! What every fault test checks once the fault is over (tests/tests/faults.rs): no panic, the
//! BPF programs and links slowtrace held released, whole JSON lines in every file, the target
//! unharmed.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{python, read_port, server_script, wait_until, Proc};

/// The BPF programs and links a process holds, by kernel id, from its fds' /proc fdinfo: only
/// what this slowtrace loaded, whatever else runs on the host.
#[derive(Debug, Default, Clone)]
pub struct Held {
    pub progs: BTreeSet<u32>,
    pub links: BTreeSet<u32>,
}

impl Held {
    pub fn of(pid: u32) -> Held {
        let mut held = Held::default();
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            return held;
        };
        for fd in fds.flatten() {
            let text = std::fs::read_to_string(fd.path()).unwrap_or_default();
            for line in text.lines() {
                let id = |v: &str| v.trim().parse::<u32>().ok();
                if let Some(v) = line.strip_prefix("prog_id:").and_then(id) {
                    held.progs.insert(v);
                } else if let Some(v) = line.strip_prefix("link_id:").and_then(id) {
                    held.links.insert(v);
                }
            }
        }
        held
    }

    /// Wait (a program is freed after its last reference and an RCU grace period) until none
    /// of these programs and links exist any more. Ids are not reused soon (cyclic allocation),
    /// so an id still listed is ours.
    #[track_caller]
    pub fn assert_released(&self) {
        assert!(
            !self.progs.is_empty(),
            "slowtrace held no BPF program: nothing to check"
        );
        let mut left = (BTreeSet::new(), BTreeSet::new());
        let released = (0..300).any(|_| {
            left = (
                &self.progs & &bpf_ids("prog"),
                &self.links & &bpf_ids("link"),
            );
            let done = left.0.is_empty() && left.1.is_empty();
            if !done {
                std::thread::sleep(Duration::from_millis(50));
            }
            done
        });
        assert!(
            released,
            "BPF programs {:?} and links {:?} of slowtrace still exist 15 s after it exited",
            left.0, left.1
        );
    }
}

/// Ids of every BPF `prog` or `link` on the host (`bpftool -j KIND show`).
fn bpf_ids(kind: &str) -> BTreeSet<u32> {
    let out = Command::new("bpftool")
        .args(["-j", kind, "show"])
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_u64().map(|i| i as u32))
        .collect()
}

/// Wait until slowtrace (`pid`) has loaded its programs, and say what it holds.
pub fn held_by(pid: u32) -> Held {
    let mut held = Held::default();
    wait_until(
        Duration::from_secs(30),
        "slowtrace to hold BPF programs",
        || {
            held = Held::of(pid);
            !held.progs.is_empty()
        },
    );
    held
}

/// No panic in slowtrace's stderr (a panic prints "internal error", -v a "panicked at").
#[track_caller]
pub fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "slowtrace panicked:\n{stderr}"
    );
}

/// Every `*.jsonl` under `dir`: whole lines (empty, or ending in a newline), each one JSON.
/// Returns the lines of each file, by path.
#[track_caller]
pub fn assert_whole_jsonl(dir: &Path) -> Vec<(PathBuf, usize)> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    bytes.is_empty() || bytes.ends_with(b"\n"),
                    "{} ends in a torn line: {:?}",
                    p.display(),
                    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(200)..])
                );
                let text = String::from_utf8(bytes)
                    .unwrap_or_else(|e| panic!("{} is not UTF-8: {e}", p.display()));
                for (i, l) in text.lines().enumerate() {
                    if let Err(e) = serde_json::from_str::<serde_json::Value>(l) {
                        panic!("{} line {}: not JSON ({e}): {l:?}", p.display(), i + 1);
                    }
                }
                files.push((p, text.lines().count()));
            }
        }
    }
    files
}

/// One HTTP/1.0 GET on its own connection: the status and body, or None when the server
/// closed or reset the connection without a whole response.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).ok()?;
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// tests/servers/fault_app.py (ARGS), and its port.
pub fn fault_app(args: &[&str]) -> (Proc, u16) {
    let mut p = Proc::spawn(
        Command::new(python())
            .arg(server_script("fault_app.py"))
            .args(args)
            .stdout(Stdio::piped()),
    );
    let port = read_port(p.child.stdout.take().unwrap());
    (p, port)
}

/// A small tmpfs mounted for a test, unmounted when dropped.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(st.success(), "mounting a tmpfs on {}", dir.path().display());
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill it up to `leave` free bytes with one file.
    pub fn fill_leaving(&self, leave: u64) {
        let free = free_bytes(self.path());
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        let mut left = free.saturating_sub(leave);
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
        f.sync_all().unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Bytes an unprivileged writer could still write on the file system of `path`.
pub fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a zeroed statvfs filled by the call; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    st.f_bavail as u64 * st.f_frsize as u64
}

/// A small deterministic random number source for "random moments" (the seed is printed, so a
/// failure can be replayed).
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let seed = std::env::var("SLOWTRACE_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("fault seed: SLOWTRACE_FAULT_SEED={seed}");
        Rng(seed | 1)
    }

    /// xorshift64*: uniform enough for picking moments.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
