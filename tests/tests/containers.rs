//! Root tests of containers (#16 item 1): servers in their own PID and mount namespaces
//! (`unshare --pid --mount --fork --mount-proc`), in a cgroup v2 directory the test makes, with
//! the Python installation and the app bind-mounted at paths that do not exist on the host and
//! the host's Pythons hidden. Targeted by `--container` and `--cgroup`, never by host pid.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use integration_tests::*;
use serde_json::Value;

/// Inside the namespaces: a private /mnt with the Python prefix, the app and the venv's
/// site-packages bind-mounted under /mnt/ctr, the host's Pythons hidden under a tmpfs, then the
/// command. Paths under /mnt/ctr exist only in here.
const INNER: &str = r#"set -e
py=$1; app=$2; site=$3; shift 3
mount -t tmpfs slowtrace-ctr /mnt
mkdir -p /mnt/ctr/py /mnt/ctr/app /mnt/ctr/site
mount --bind "$py" /mnt/ctr/py
mount --bind "$app" /mnt/ctr/app
mount --bind "$site" /mnt/ctr/site
mount -t tmpfs slowtrace-ctr "$(dirname "$py")"
cd /mnt/ctr/app
export LD_LIBRARY_PATH=/mnt/ctr/py/lib PYTHONHOME=/mnt/ctr/py PYTHONPATH=/mnt/ctr/site
exec "$@"
"#;

/// The Python inside the container.
const PY: &str = "/mnt/ctr/py/bin/python3";
const APP_FILE: &str = "/mnt/ctr/app/container_app.py";

/// A cgroup v2 directory made by the test, removed (with what runs in it) when dropped.
struct Cgroup {
    /// The directory the test made under the v2 mount (parent of `dir`).
    top: PathBuf,
    dir: PathBuf,
    /// As /proc/PID/cgroup names it.
    path: String,
}

fn v2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount (the container tests need cgroup v2)")
}

static MADE: AtomicU32 = AtomicU32::new(0);

impl Cgroup {
    /// `<v2>/slowtrace-test-PID-N/<leaf>`.
    fn make(leaf: &str) -> Cgroup {
        let mount = v2_mount();
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let top = mount.join(format!("slowtrace-test-{}-{n}", std::process::id()));
        let dir = top.join(leaf);
        std::fs::create_dir_all(&dir).unwrap();
        let path = format!("/{}", dir.strip_prefix(&mount).unwrap().display());
        Cgroup { top, dir, path }
    }

    fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Whatever is left (the namespace's PID 1 ignores SIGTERM): SIGKILL, then rmdir.
        for _ in 0..100 {
            let left = self.procs();
            if left.is_empty() {
                break;
            }
            for p in left {
                // SAFETY: plain syscall on processes this test started in its own cgroup.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::remove_dir(&self.top);
    }
}

/// The venv's Python prefix (pyvenv.cfg `home` is its bin/) and site-packages.
fn python_dirs() -> (PathBuf, PathBuf) {
    let cfg = std::fs::read_to_string(venv().join("pyvenv.cfg")).unwrap();
    let home = cfg
        .lines()
        .find_map(|l| l.strip_prefix("home = "))
        .expect("home in pyvenv.cfg");
    let prefix = Path::new(home.trim()).parent().unwrap().to_owned();
    let lib = venv().join("lib");
    let site = std::fs::read_dir(&lib)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())
        .expect("the venv's site-packages");
    (prefix, site)
}

/// Run `cmd` in new PID and mount namespaces inside `cg`: the shell joins the cgroup, then
/// execs unshare, so everything in the container is in it from its first instruction.
fn start_in(cg: &Cgroup, cmd: &[&str]) -> Proc {
    let (prefix, site) = python_dirs();
    let join = format!(
        "echo $$ > '{}' && exec unshare --pid --mount --fork --mount-proc --kill-child=SIGKILL sh -c \"$0\" sh \"$@\"",
        cg.dir.join("cgroup.procs").display()
    );
    Proc::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(join)
            .arg(INNER)
            .arg(&prefix)
            .arg(server_script(""))
            .arg(&site)
            .args(cmd)
            .stdout(Stdio::null()),
    )
}

fn start_gunicorn(cg: &Cgroup, port: u16) -> Proc {
    let bind = format!("127.0.0.1:{port}");
    let p = start_in(
        cg,
        &[
            PY,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-b",
            &bind,
            "container_app:app",
        ],
    );
    wait_port(port);
    // unshare, the master (PID 1 in there) and two workers with the app loaded: a request
    // answered by each worker's first one is not a guarantee, the process count is.
    wait_until(Duration::from_secs(30), "gunicorn's two workers", || {
        cg.procs().len() == 4
    });
    p
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

fn functions(frames: &Value) -> Vec<String> {
    frames
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| f["function"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A 64-hex-digit id, as container runtimes name their cgroups.
fn container_id() -> String {
    let mut b = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn gunicorn_in_a_container_is_traced_end_to_end() {
    require_root();
    let id = container_id();
    let cg = Cgroup::make(&format!("docker-{id}.scope"));
    let (_redis, redis_port) = backends::redis();
    let port = free_port();
    let _gunicorn = start_gunicorn(&cg, port);

    let trace = Trace::start(&[
        "--container",
        &id[..12],
        "--threshold",
        "300ms",
        "--flamegraph",
        "--sample-hz",
        "499",
    ]);
    let fast: Vec<String> = (0..20).map(|_| url(port, "/fast")).collect();
    assert_eq!(curl(&fast), vec![200; 20]);
    assert_eq!(curl(&[url(port, "/slow")]), [200]);
    let burns: Vec<String> = (0..6).map(|_| url(port, "/burn")).collect();
    assert_eq!(curl(&burns), vec![200; 6]);
    assert_eq!(
        curl(&[url(port, &format!("/cache?port={redis_port}"))]),
        [200]
    );
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);

    // Requests: exact counts, each labelled with the cgroup and the container.
    let r = &done.records;
    assert_eq!(done.with_endpoint("GET /fast").len(), 20, "{r:#?}");
    assert_eq!(done.with_endpoint("GET /slow").len(), 1);
    assert_eq!(done.with_endpoint("GET /burn").len(), 6);
    assert_eq!(done.with_endpoint("GET /cache").len(), 1);
    assert_eq!(r.len(), 28, "{r:#?}");
    for rec in r {
        assert_eq!(rec["cgroup"], cg.path.as_str(), "{rec}");
        assert_eq!(rec["container"], id.as_str(), "{rec}");
    }
    // Breakdown and downstream work in there too.
    let slow_req = done.with_endpoint("GET /slow")[0];
    let slept = slow_req["breakdown"]["sleep_us"].as_u64().unwrap_or(0);
    assert!(slept >= 700_000, "the sleep in the breakdown: {slow_req}");
    let cache = done.with_endpoint("GET /cache")[0];
    let peer = &cache["downstream"]["peers"][0];
    assert_eq!(peer["protocol"], "redis", "{cache}");
    assert_eq!(peer["peer"], format!("127.0.0.1:{redis_port}"), "{cache}");
    assert_eq!(cache["downstream"]["round_trips"], 5, "{cache}");

    // The slow request's capture: Python frames with the container's paths and the right
    // lines, and native frames symbolized from the container's libpython (whose path does
    // not exist on the host).
    let slow = read_records(&done.dir.join("slow.jsonl"));
    assert_eq!(slow.len(), 1, "{slow:#?}");
    let caps = slow[0]["captures"].as_array().unwrap();
    assert!(!caps.is_empty(), "{:#}", slow[0]);
    let (stuck, view) = (
        mark("container_app.py", "stuck"),
        mark("container_app.py", "slow_view"),
    );
    // A capture at +800 ms can catch the response going out, after the sleep: the ones in the
    // sleep are checked, and there must be at least one (at the 300 ms threshold).
    let sleeping: Vec<&Value> = caps
        .iter()
        .filter(|c| c["syscall"] == "clock_nanosleep")
        .collect();
    assert!(!sleeping.is_empty(), "{:#}", slow[0]);
    for c in sleeping {
        let py: Vec<(String, String, u64)> = c["python"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["function"].as_str().unwrap_or("").to_owned(),
                    f["file"].as_str().unwrap_or("").to_owned(),
                    f["line"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let want_stuck = ("stuck".to_owned(), APP_FILE.to_owned(), stuck);
        let want_view = ("slow_view".to_owned(), APP_FILE.to_owned(), view);
        assert!(
            py.contains(&want_stuck) && py.contains(&want_view),
            "{py:?}"
        );
        let native = functions(&c["native"]);
        assert!(
            native.iter().any(|f| f.contains("clock_nanosleep")),
            "{native:?}"
        );
        assert!(
            native.iter().any(|f| f == "_PyEval_EvalFrameDefault"),
            "libpython symbolized through /proc/PID/root: {native:?}"
        );
    }
    let report = std::fs::read_dir(done.dir.join("slow"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "txt"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("a slow report");
    assert!(
        report.contains(&format!("Cgroup: {} (container {id})", cg.path)),
        "{report}"
    );
    assert!(
        report.contains(&format!("File \"{APP_FILE}\", line {stuck}, in stuck")),
        "{report}"
    );

    // The profile: the kernel walked burn's Python frames (it matched thread states by the
    // TID the container sees, not the host's).
    let folded = std::fs::read_to_string(done.dir.join("cpu.folded")).unwrap();
    let burn_samples: u64 = folded
        .lines()
        .filter(|l| l.contains(&format!("burn ({APP_FILE}:")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    // 6 × 150 ms of CPU at 499 Hz is ~450 samples; half of that leaves room for a slow box.
    assert!(
        burn_samples >= 200,
        "burn samples {burn_samples}:\n{folded}"
    );
    assert!(
        done.stdout.contains(" 0 on threads running no Python"),
        "{}",
        done.stdout
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn cgroup_target_picks_up_a_server_started_after_attach() {
    require_root();
    let cg = Cgroup::make("app.scope");
    // -v: user space logs each process it had to find itself; the kernel should find them all.
    let trace = Trace::start(&["-v", "--cgroup", &cg.dir.display().to_string()]);
    // Started after attach: the kernel marks the shell that joins the cgroup (a migration), and
    // everything it forks and execs from then on.
    let port = free_port();
    let _gunicorn = start_gunicorn(&cg, port);
    let urls: Vec<String> = (0..15).map(|_| url(port, "/fast")).collect();
    assert_eq!(curl(&urls), vec![200; 15]);
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    let users = done.with_endpoint("GET /fast");
    assert_eq!(users.len(), 15, "{:#?}", done.records);
    assert_eq!(done.records.len(), 15, "{:#?}", done.records);
    for u in &users {
        assert_eq!(u["cgroup"], cg.path.as_str(), "{u}");
        assert!(u.get("container").is_none(), "no container id here: {u}");
    }
    assert!(
        !done.stderr.contains("found in a --cgroup by user space"),
        "the kernel marks processes arriving in the cgroup: {}",
        done.stderr
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn container_ids_resolve_or_fail_in_one_line() {
    require_root();
    let id = container_id();
    let _one = Cgroup::make(&format!("libpod-{id}.scope"));
    let twin = format!("{}{}", &id[..8], "0".repeat(56));
    let _two = Cgroup::make(&format!("libpod-{twin}.scope"));
    let out = tempfile::tempdir().unwrap();
    let run = |arg: &str| {
        Command::new(slowtrace_bin())
            .args(["record", "--container", arg, "--duration", "1s", "-o"])
            .arg(out.path().join("out"))
            .output()
            .unwrap()
    };
    let missing = run("feedfacefeedface");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(66), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--container feedfacefeedface: no cgroup"),
        "{err}"
    );

    let ambiguous = run(&id[..8]);
    let err = String::from_utf8_lossy(&ambiguous.stderr);
    assert_eq!(ambiguous.status.code(), Some(64), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("ambiguous, 2 cgroups match"), "{err}");

    // The full id resolves: nothing runs there, so the trace is empty but starts.
    let ok = run(&id);
    let err = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{err}");
    assert!(err.contains(&format!("libpod-{id}.scope")), "{err}");
}
