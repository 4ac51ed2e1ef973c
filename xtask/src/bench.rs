//! `cargo xtask bench`: what tracing costs, measured side by side and written to
//! docs/benchmarks.md.
//!
//! Each workload runs A B A B …: A without slowtrace, B with `slowtrace record` attached. Ratios
//! are taken pair by pair so slow drift of the machine cancels, then summarised as min/median/max.
//! Nothing here is asserted: a missed target is a finding to report.
//!
//! Sections, in the order they run:
//! * nginx (wrk -c32) and gunicorn (wrk -c4): throughput and p99 ratios, agent CPU per request,
//!   peak RSS, stop time after SIGINT, in-kernel ns per request in total and per BPF program;
//! * non-target cost: an echo load and `dd` while slowtrace traces the (idle) nginx
//!   (bench_nontarget.rs);
//! * single features (bench_cost.rs), the agent with its exporters (bench_fleet.rs), the Python
//!   stack reader, the dashboard;
//! * with `--soak MINUTES`: a worker-churn soak (bench_soak.rs).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    bpf_stats::{self, ProgRun},
    setup, util,
};

/// What `cargo xtask bench` was asked for.
pub struct Args {
    pub long: bool,
    /// Minutes of the churn soak (written to docs/reliability.md); None: no soak.
    pub soak_minutes: Option<u64>,
    /// Only the soak, none of the overhead sections.
    pub soak_only: bool,
    /// Only this soak phase (`agent` or `record`); None: both.
    pub soak_phase: Option<String>,
    /// A smoke test of the bench itself: one pair of this many seconds, only the sections of this
    /// file and the non-target one, no setup or build, doc written to target/ instead of docs/.
    pub smoke_secs: Option<u64>,
    /// Only the fleet section (`slowtrace agent` with its exporters), written to
    /// target/bench-fleet.md.
    pub fleet_only: bool,
}

pub(crate) struct Opts {
    pub(crate) pairs: usize,
    pub(crate) secs: u64,
}

/// One wrk run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Wrk {
    pub(crate) rps: f64,
    pub(crate) p99_ms: f64,
    pub(crate) requests: u64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub(crate) errors: u64,
}

/// Per-program in-kernel counters of one traced run, by program name.
pub(crate) type Progs = BTreeMap<String, ProgRun>;

/// What we read off slowtrace during and after one traced run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Agent {
    pub(crate) cpu_share: f64,
    /// Agent CPU time (user + system) during the wrk run.
    pub(crate) cpu_s: f64,
    pub(crate) peak_rss_mb: f64,
    pub(crate) bpf_ns: u64,
    pub(crate) progs: Progs,
    pub(crate) events: u64,
    pub(crate) dropped: u64,
    /// From SIGINT until slowtrace exited, sent right after wrk finished.
    pub(crate) stop_s: f64,
}

#[derive(Default)]
struct Series {
    tput_ratio: Vec<f64>,
    p99_ratio: Vec<f64>,
    base_rps: Vec<f64>,
    cpu: Vec<f64>,
    cpu_us_per_req: Vec<f64>,
    rss: Vec<f64>,
    ns_per_req: Vec<f64>,
    events_per_s: Vec<f64>,
    dropped: Vec<f64>,
    stop_s: Vec<f64>,
    /// Per traced run: the per-program counters and the requests wrk completed.
    progs: Vec<(Progs, u64)>,
}

/// Kills the process group when dropped.
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling our own process group.
        unsafe { kill(-(self.0.id() as i32), 9) };
        let _ = self.0.wait();
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

const SIGINT: i32 = 2;

pub(crate) fn spawn_group(cmd: &mut Command) -> anyhow::Result<Guard> {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0);
    Ok(Guard(
        cmd.spawn().with_context(|| format!("starting {cmd:?}"))?,
    ))
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn wait_port(port: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {port}")
}

pub(crate) fn nginx(dir: &Path) -> anyhow::Result<(Guard, u16)> {
    let port = free_port()?;
    let www = dir.join("www");
    fs::create_dir_all(&www)?;
    fs::create_dir_all(dir.join("tmp"))?;
    fs::write(
        www.join("index.html"),
        "<h1>slowtrace bench</h1>\n".repeat(20),
    )?;
    let conf = fs::read_to_string(util::root().join("tests/servers/nginx.conf.in"))?
        .replace("{workers}", "1")
        .replace("{dir}", &dir.display().to_string())
        .replace("{www}", &www.display().to_string())
        .replace("{port}", &port.to_string());
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let g = spawn_group(
        Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir),
    )?;
    wait_port(port)?;
    Ok((g, port))
}

/// gunicorn with 2 sync workers serving tests/servers/wsgi_app.py, plus `extra` flags.
pub(crate) fn gunicorn(extra: &[&str]) -> anyhow::Result<(Guard, u16)> {
    let port = free_port()?;
    let g = spawn_group(
        Command::new(util::venv().join("bin/gunicorn"))
            .current_dir(util::root().join("tests/servers"))
            .args([
                "--workers",
                "2",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--log-level",
                "warning",
            ])
            .args(extra)
            .arg("wsgi_app:app")
            .stdout(Stdio::null()),
    )?;
    wait_port(port)?;
    // gunicorn listens before its workers are up.
    std::thread::sleep(Duration::from_secs(2));
    Ok((g, port))
}

/// The wrk command line the bench uses, so the docs can quote exactly what ran.
pub(crate) fn wrk_cmd(url: &str, conns: u32, secs: u64) -> Command {
    let mut c = Command::new("wrk");
    c.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
        url,
    ]);
    c
}

pub(crate) fn wrk(url: &str, conns: u32, secs: u64) -> anyhow::Result<Wrk> {
    let out = wrk_cmd(url, conns, secs).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

pub(crate) fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("99%") {
            w.p99_ms = parse_ms(v.trim())?;
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            w.requests = n.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 3, write 0, timeout 0"
            w.errors += v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += v.trim().parse::<u64>().ok()?;
        }
    }
    (w.rps > 0.0).then_some(w)
}

fn parse_ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        _ => return None,
    })
}

/// Kernel clock ticks per second for /proc/PID/stat times (USER_HZ, 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// CPU time (user + system) of a process and its threads, dead ones included, in seconds.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After "pid (comm)": state is field 0, utime 11, stime 12.
    (get(11) + get(12)) as f64 / CLK_TCK
}

/// A memory line of /proc/PID/status ("VmHWM", "VmRSS") in MB.
pub(crate) fn status_mb(pid: u32, key: &str) -> f64 {
    parse_status_kb(
        &fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
        key,
    )
    .map_or(0.0, |kb| kb as f64 / 1024.0)
}

fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Open file descriptors of a process.
pub(crate) fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A running `slowtrace record --port P`; killed if dropped before `stop`.
pub(crate) struct Tracer {
    child: Option<Child>,
    pub(crate) pid: u32,
    out_dir: PathBuf,
    /// Drains stdout from the start (the summary comes at exit), so a full pipe never blocks it.
    stdout: Option<JoinHandle<String>>,
    /// Drains stderr after the ready line (the agent's status lines), likewise.
    stderr: Option<JoinHandle<String>>,
}

/// How a `Tracer` ended.
pub(crate) struct Stopped {
    /// From SIGINT until the process was gone: detaching programs, flushing files, the summary.
    pub(crate) secs: f64,
    /// slowtrace's stdout: the summary printed on exit.
    pub(crate) summary: String,
    /// slowtrace's stderr after its ready line.
    pub(crate) stderr: String,
}

impl Stopped {
    /// The last stderr line starting with `prefix` (empty if none).
    pub(crate) fn stderr_line(&self, prefix: &str) -> String {
        self.stderr
            .lines()
            .rfind(|l| l.starts_with(prefix))
            .unwrap_or("")
            .to_owned()
    }
}

/// A stop taking longer than this is reported as it is and the process killed, so a hung agent
/// cannot hang the bench.
const STOP_LIMIT: Duration = Duration::from_secs(30);

impl Tracer {
    pub(crate) fn start(port: u16, extra: &[&str]) -> anyhow::Result<Tracer> {
        Self::start_sub("record", port, extra)
    }

    /// `slowtrace SUB --port P EXTRA`: `record` writes its files to a temporary directory;
    /// `agent` writes none, as deployed.
    pub(crate) fn start_sub(sub: &str, port: u16, extra: &[&str]) -> anyhow::Result<Tracer> {
        use std::io::Read as _;
        let out_dir = tempdir()?;
        let mut cmd = Command::new(util::slowtrace_bin());
        cmd.args([sub, "--port", &port.to_string()]);
        if sub == "record" {
            cmd.arg("-o").arg(&out_dir);
        }
        let mut child = cmd
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting slowtrace")?;
        let mut out = child.stdout.take().context("no stdout")?;
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let mut t = Tracer {
            pid: child.id(),
            child: Some(child),
            out_dir,
            stdout: Some(stdout),
            stderr: None,
        };
        let ready = if sub == "agent" {
            "slowtrace: agent tracing"
        } else {
            "slowtrace: tracing"
        };
        t.stderr = Some(wait_for_line(t.child.as_mut().expect("just set"), ready)?);
        Ok(t)
    }

    /// SIGINT, as Ctrl-C would, and wait for the process to exit.
    pub(crate) fn stop(mut self) -> anyhow::Result<Stopped> {
        let mut child = self.child.take().context("slowtrace already stopped")?;
        let sent = Instant::now();
        // SAFETY: signalling our child.
        unsafe { kill(self.pid as i32, SIGINT) };
        // Polling (every 2 ms) rather than wait() so that a hang is bounded by STOP_LIMIT.
        while child.try_wait()?.is_none() {
            if sent.elapsed() > STOP_LIMIT {
                eprintln!(
                    "bench: slowtrace did not stop within {STOP_LIMIT:?} of SIGINT; killing it"
                );
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let secs = sent.elapsed().as_secs_f64();
        let summary = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok(Stopped {
            secs,
            summary,
            stderr,
        })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.out_dir);
    }
}

/// Per-program counters of the programs slowtrace holds, from `before` until now, by name.
/// Call while slowtrace still runs (names are looked up by program id).
pub(crate) fn progs_since(pid: u32, before: &bpf_stats::Snapshot) -> Progs {
    bpf_stats::by_name(&bpf_stats::delta(before, &bpf_stats::snapshot(pid)))
}

pub(crate) fn progs_total(p: &Progs) -> ProgRun {
    p.values().fold(ProgRun::default(), |t, r| ProgRun {
        run_ns: t.run_ns + r.run_ns,
        runs: t.runs + r.runs,
    })
}

/// One wrk run with slowtrace attached. `stats`: with the kernel's BPF run-time statistics on,
/// for the in-kernel cost; they add two clock reads to every program run, so runs whose
/// throughput is compared go without them.
pub(crate) fn traced_run(
    port: u16,
    url: &str,
    conns: u32,
    secs: u64,
    extra: &[&str],
    stats: bool,
) -> anyhow::Result<(Wrk, Agent)> {
    traced_run_sub("record", port, url, conns, secs, extra, stats, |_| {})
}

/// `traced_run` with `slowtrace SUB`; `before_stop` runs after the load, slowtrace still up.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site each, all plain values"
)]
pub(crate) fn traced_run_sub(
    sub: &str,
    port: u16,
    url: &str,
    conns: u32,
    secs: u64,
    extra: &[&str],
    stats: bool,
    before_stop: impl FnOnce(u32),
) -> anyhow::Result<(Wrk, Agent)> {
    let _stats = stats.then(bpf_stats::StatsEnabled::new).transpose()?;
    let tracer = Tracer::start_sub(sub, port, extra)?;
    let pid = tracer.pid;
    let cpu0 = cpu_secs(pid);
    let bpf0 = bpf_stats::snapshot(pid);
    let started = Instant::now();
    let w = wrk(url, conns, secs)?;
    let wall = started.elapsed().as_secs_f64();
    let cpu_s = cpu_secs(pid) - cpu0;
    let progs = progs_since(pid, &bpf0);
    let peak_rss_mb = status_mb(pid, "VmHWM");
    before_stop(pid);
    // Stopped right after the load, so the stop time includes draining what the load left queued.
    let stopped = tracer.stop()?;
    let (events, dropped) = parse_kernel_line(&stopped.summary).unwrap_or((0, 0));
    Ok((
        w,
        Agent {
            cpu_share: cpu_s / wall,
            cpu_s,
            peak_rss_mb,
            bpf_ns: progs_total(&progs).run_ns,
            progs,
            events,
            dropped,
            stop_s: stopped.secs,
        },
    ))
}

/// Read stderr up to the line starting with `prefix`; the rest is drained in the background
/// (so slowtrace never blocks on a full pipe) and handed back when the process exits.
fn wait_for_line(child: &mut Child, prefix: &str) -> anyhow::Result<JoinHandle<String>> {
    use std::io::{BufRead as _, BufReader};
    let err = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(err).lines();
    for line in lines.by_ref() {
        let line = line?;
        if line.starts_with(prefix) {
            return Ok(std::thread::spawn(move || {
                lines
                    .map_while(Result::ok)
                    .fold(String::new(), |mut all, l| {
                        all.push_str(&l);
                        all.push('\n');
                        all
                    })
            }));
        }
        if line.contains("error") {
            bail!("slowtrace: {line}");
        }
    }
    bail!("slowtrace exited before tracing")
}

/// "kernel: N events (requests and handler calls), M dropped ..." from the summary.
fn parse_kernel_line(summary: &str) -> Option<(u64, u64)> {
    let line = summary.lines().find(|l| l.starts_with("kernel: "))?;
    let mut nums = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    Some((nums.next()?.parse().ok()?, nums.next()?.parse().ok()?))
}

/// "N requests in 12.3s, M endpoints" from the summary: the requests slowtrace recorded.
pub(crate) fn parse_recorded(summary: &str) -> Option<u64> {
    summary
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))?
        .0
        .trim()
        .parse()
        .ok()
}

pub(crate) fn tempdir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "slowtrace-bench-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    fs::create_dir_all(&d)?;
    Ok(d)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn workload(name: &str, port: u16, url: &str, conns: u32, o: &Opts) -> anyhow::Result<Series> {
    let mut s = Series::default();
    // Warm-up: caches, worker start, JIT of the BPF programs' maps.
    wrk(url, conns, 2)?;
    for i in 0..o.pairs {
        let a = wrk(url, conns, o.secs)?;
        let (b, agent) = traced_run(port, url, conns, o.secs, &[], false)?;
        // The in-kernel cost from a third run with the statistics on.
        let (c, cost) = traced_run(port, url, conns, o.secs, &[], true)?;
        eprintln!(
            "bench: {name} pair {}/{}: untraced {:.0} req/s p99 {:.2}ms | traced {:.0} req/s p99 {:.2}ms, agent {:.1}% CPU {:.1} MB, {} events, {} dropped, stop {:.2}s",
            i + 1, o.pairs, a.rps, a.p99_ms, b.rps, b.p99_ms, agent.cpu_share * 100.0, agent.peak_rss_mb, agent.events, agent.dropped, agent.stop_s
        );
        s.tput_ratio.push(b.rps / a.rps);
        s.p99_ratio.push(b.p99_ms / a.p99_ms);
        s.base_rps.push(a.rps);
        s.cpu.push(agent.cpu_share * 100.0);
        s.rss.push(agent.peak_rss_mb);
        if b.requests > 0 {
            s.cpu_us_per_req.push(agent.cpu_s * 1e6 / b.requests as f64);
        }
        if c.requests > 0 && cost.bpf_ns > 0 {
            s.ns_per_req.push(cost.bpf_ns as f64 / c.requests as f64);
        }
        s.events_per_s.push(agent.events as f64 / o.secs as f64);
        s.dropped.push(agent.dropped as f64);
        s.stop_s.push(agent.stop_s);
        s.progs.push((cost.progs, c.requests));
    }
    Ok(s)
}

pub(crate) fn mmm(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

pub(crate) fn row(
    out: &mut String,
    metric: &str,
    v: &[f64],
    fmt: impl Fn(f64) -> String,
    target: &str,
) {
    let (a, b, c) = mmm(v);
    let _ = writeln!(
        out,
        "| {metric} | {} | {} | {} | {target} |",
        fmt(a),
        fmt(b),
        fmt(c)
    );
}

pub(crate) fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

pub(crate) const TABLE_HEAD: &str =
    "| metric | min | median | max | target |\n|---|---|---|---|---|";

/// The table of one wrk workload; `cmds` says what A and B ran.
fn table(name: &str, cmds: &str, s: &Series) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n### {name}\n\n{}\n{TABLE_HEAD}", provenance(cmds));
    let tput_target = if name.starts_with("nginx") {
        "≥ 99%"
    } else {
        "≥ 98%"
    };
    let f0 = |x: f64| format!("{x:.0}");
    let o = &mut out;
    row(
        o,
        "throughput traced / untraced",
        &s.tput_ratio,
        pct,
        tput_target,
    );
    row(
        o,
        "p99 latency traced / untraced",
        &s.p99_ratio,
        pct,
        "≤ 105%",
    );
    row(o, "untraced throughput (req/s)", &s.base_rps, f0, "");
    let cpu_target = "≤ 5% at 20k req/s";
    row(
        o,
        "agent CPU (% of one core)",
        &s.cpu,
        |x| format!("{x:.2}%"),
        cpu_target,
    );
    // 5% of a core at 20k req/s is 2.5 µs of agent CPU per request.
    let us = |x: f64| format!("{x:.2}");
    row(
        o,
        "agent CPU per request (µs)",
        &s.cpu_us_per_req,
        us,
        "≤ 2.5 µs (5% of a core at 20k req/s)",
    );
    row(
        o,
        "agent peak RSS (VmHWM, MB)",
        &s.rss,
        |x| format!("{x:.1}"),
        "≤ 40 MB",
    );
    let ns_name = "in-kernel ns per request (all programs)";
    row(o, ns_name, &s.ns_per_req, f0, "≤ 300 ns");
    row(o, "request events/s", &s.events_per_s, f0, "");
    row(o, "dropped events per run", &s.dropped, f0, "0");
    let stop = |x: f64| format!("{x:.2}");
    row(
        o,
        "stop time after SIGINT, right after the load (s)",
        &s.stop_s,
        stop,
        "≤ 0.5 s",
    );
    out
}

/// Per-program in-kernel cost: for each traced run, the per-program counters and the units of
/// work done meanwhile (requests, round trips, bytes). Runs per unit and ns per run are medians
/// over the runs; ns per unit is min / median / max. A program missing from a run counts as
/// zero there.
pub(crate) fn prog_table(title: &str, what: &str, unit: &str, runs: &[(Progs, u64)]) -> String {
    let mut out = format!(
        "\n#### {title}\n\n{what}\n\n| program | runs per {unit} (median) | ns per run (median) | ns per {unit}: min | median | max |\n|---|---|---|---|---|---|\n"
    );
    let runs: Vec<&(Progs, u64)> = runs.iter().filter(|(_, n)| *n > 0).collect();
    let mut names: Vec<&String> = runs.iter().flat_map(|(p, _)| p.keys()).collect();
    names.sort();
    names.dedup();
    let mut line = |label: &str, pick: &dyn Fn(&Progs) -> ProgRun| {
        let (mut per_unit, mut per_run, mut ns_per_unit) = (vec![], vec![], vec![]);
        for (p, n) in &runs {
            let r = pick(p);
            per_unit.push(r.runs as f64 / *n as f64);
            ns_per_unit.push(r.run_ns as f64 / *n as f64);
            if r.runs > 0 {
                per_run.push(r.run_ns as f64 / r.runs as f64);
            }
        }
        let (lo, med, hi) = mmm(&ns_per_unit);
        // A program that never ran has no cost per run.
        let ns_per_run = match mmm(&per_run).1 {
            x if x.is_nan() => "–".to_owned(),
            x => format!("{x:.0}"),
        };
        let _ = writeln!(
            out,
            "| {label} | {:.2} | {ns_per_run} | {lo:.0} | {med:.0} | {hi:.0} |",
            mmm(&per_unit).1,
        );
    };
    for name in names {
        line(&format!("`{name}`"), &|p| {
            p.get(name).copied().unwrap_or_default()
        });
    }
    line("**total**", &progs_total);
    out
}

/// One wrk workload, A/B: its table and its per-program table.
fn core_workload(
    title: &str,
    port: u16,
    path: &str,
    conns: u32,
    o: &Opts,
) -> anyhow::Result<String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let s = workload(title, port, &url, conns, o)?;
    let wrk_line = show(&wrk_cmd(&url, conns, o.secs));
    let cmds = format!(
        "A: `{wrk_line}`; B: the same while `slowtrace record --port {port} -o DIR` runs (started \
         before wrk, SIGINT right after it)"
    );
    Ok(table(title, &cmds, &s)
        + &prog_table(
            &format!("In-kernel cost per BPF program: {title}"),
            "Counts every run of each program during the traced wrk run, including its runs for \
             processes that are not the target (wrk itself, the agent, anything else on the \
             machine): runs per request above what one request needs are that non-target work.",
            "request",
            &s.progs,
        ))
}

static COMMIT: OnceLock<String> = OnceLock::new();

/// The commit the numbers belong to. The binary is built from the work tree, so uncommitted
/// changes to the tracer's sources are named: the numbers are then of that tree, not the commit.
fn describe_commit(rebuilt: bool) -> String {
    let git = |args: &[&str]| {
        util::output(Command::new("git").current_dir(util::root()).args(args)).unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short=10", "HEAD"]);
    let mut s = format!("`{}`", head.trim());
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "tracer-ebpf",
        "tracer-common",
        "tracer-user",
        "Cargo.lock",
    ]);
    if !dirty.trim().is_empty() {
        s += " with uncommitted changes in the tracer's sources";
    }
    if !rebuilt {
        s += " (smoke run: target/release/slowtrace used as found, not rebuilt)";
    }
    s
}

/// "Command: …. Commit …." under each table, so every number says where it came from.
pub(crate) fn provenance(cmds: &str) -> String {
    format!(
        "Command: {cmds}. Commit {}.\n",
        COMMIT.get().map_or("unknown", String::as_str)
    )
}

/// `slowtrace pystack --bench` on a gunicorn + Django worker parked 10 frames deep in a view
/// (25+ Python frames), once per Python the tests use.
fn python_reader() -> anyhow::Result<String> {
    let mut out = String::from(
        "\n### Python stack reader (out of process, no pause)\n\n| Python | workload | frames | p50 | p99 | syscalls/read (p50) |\n|---|---|---|---|---|---|\n",
    );
    let root = util::root();
    for (minor, venv) in [
        ("3.11", util::venv()),
        ("3.12", root.join("target/venv-3.12")),
        ("3.13", root.join("target/venv-3.13")),
    ] {
        if !venv.join("bin/gunicorn").exists() {
            let _ = writeln!(out, "| {minor} | (no venv) | | | | |");
            continue;
        }
        let port = free_port()?;
        let g = spawn_group(
            Command::new(venv.join("bin/gunicorn"))
                .current_dir(root.join("tests/servers"))
                .args([
                    "--workers",
                    "1",
                    "--timeout",
                    "120",
                    "--bind",
                    &format!("127.0.0.1:{port}"),
                ])
                .args(["--log-level", "warning", "djangoapp:application"])
                .stdout(Stdio::null()),
        )?;
        wait_port(port)?;
        std::thread::sleep(Duration::from_secs(2));
        let curl = spawn_group(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/deep?n=10&s=60"),
        ]))?;
        std::thread::sleep(Duration::from_secs(1));
        let master = g.0.id();
        let worker = fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .context("gunicorn worker not found")?;
        let text = util::output(Command::new(util::slowtrace_bin()).args([
            "pystack",
            "--pid",
            &worker.to_string(),
            "--tid",
            &worker.to_string(),
            "--bench",
            "1000",
        ]))
        .unwrap_or_default();
        drop(curl);
        drop(g);
        let line = text.lines().find(|l| l.contains("reads of")).unwrap_or("");
        eprintln!("bench: python {minor}: {line}");
        let grab = |key: &str| -> String {
            line.split(key)
                .nth(1)
                .and_then(|r| r.split([' ', ';']).find(|s| !s.is_empty()))
                .unwrap_or("?")
                .to_owned()
        };
        let frames = line
            .split("reads of ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("?");
        let _ = writeln!(
            out,
            "| {minor} | gunicorn + Django view, 10 frames deep, blocked | {frames} | {} | {} | {} |",
            grab(" p50 "),
            grab(" p99 "),
            grab("syscalls per read p50 "),
        );
    }
    out.push_str("\nTarget: p50 ≤ 50 µs. ");
    out.push_str(&provenance(
        "`slowtrace pystack --pid W --tid W --bench 1000` on the worker",
    ));
    Ok(out)
}

/// The dashboard's benchmark: a test of tracer-user that the `slowtrace` binary does not contain.
const UI_BENCH: [&str; 11] = [
    "test",
    "--release",
    "-p",
    "tracer-user",
    "--bin",
    "slowtrace",
    "--",
    "tui::bench::flood_50k",
    "--exact",
    "--ignored",
    "--nocapture",
];

/// The dashboard under a synthetic flood of 50k requests/s for 5 s (`tui::bench` in tracer-user).
fn ui_lag() -> String {
    let cmd = format!("cargo {}", UI_BENCH.join(" "));
    eprintln!("bench: {cmd}");
    // Its JSON line may share a line with libtest's "test … " (when the test runs on its own).
    let line = util::output(util::cargo().args(UI_BENCH)).and_then(|t| {
        t.lines()
            .find_map(|l| l.find("{\"rate\":").map(|i| l[i..].trim_end().to_owned()))
    });
    let Some(line) = line else {
        return format!("\n### Dashboard\n\n`{cmd}` failed or printed no result.\n");
    };
    format!(
        "\n### Dashboard at 50k synthetic events/s\n\n{}Real dashboard state, 160×48 \
         TestBackend at 4 fps:\n\n```\n{line}\n```\n",
        provenance(&format!("`{cmd}`"))
    )
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let smoke = args.smoke_secs.is_some();
    if !smoke {
        setup::run(true)?;
        util::build_release()?;
    }
    let _ = COMMIT.set(describe_commit(!smoke));
    let o = match (args.smoke_secs, args.long) {
        (Some(secs), _) => Opts { pairs: 1, secs },
        (None, true) => Opts {
            pairs: 10,
            secs: 10,
        },
        (None, false) => Opts { pairs: 5, secs: 4 },
    };
    // The BPF run-time statistics are switched on only for the runs that measure in-kernel
    // cost (`traced_run`'s `stats`), never for the runs whose throughput is compared.
    if args.soak_only {
        return soak(args.soak_minutes.unwrap_or(30), args.soak_phase.as_deref());
    }
    if args.fleet_only {
        let doc = crate::bench_fleet::run(&o)?;
        let path = util::root().join("target/bench-fleet.md");
        fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        println!("{doc}");
        return Ok(());
    }
    let tables = sections(args, &o);
    let doc = render_doc(&tables?, args, &o);
    // A smoke run must not overwrite the real results.
    let path = if smoke {
        util::root().join("target/bench-smoke.md")
    } else {
        util::root().join("docs/benchmarks.md")
    };
    fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
    println!("{doc}");
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// Every section's markdown, in the order they run.
fn sections(args: &Args, o: &Opts) -> anyhow::Result<String> {
    let mut out = String::new();
    let dir = tempdir()?;
    let (nginx_guard, nport) = nginx(&dir)?;
    out += &core_workload(
        "nginx static file, wrk -t1 -c32 keep-alive",
        nport,
        "/index.html",
        32,
        o,
    )?;
    // The idle nginx is the "something else" slowtrace traces while the non-target load runs.
    out += &crate::bench_nontarget::run(nport, o)?;
    drop(nginx_guard);
    let _ = fs::remove_dir_all(&dir);

    let (g, gport) = gunicorn(&[])?;
    out += &core_workload(
        "gunicorn 2 sync workers, WSGI view, wrk -t1 -c4",
        gport,
        "/",
        4,
        o,
    )?;
    drop(g);

    if args.smoke_secs.is_none() {
        out += &crate::bench_cost::run(o)?;
        out += &crate::bench_fleet::run(o)?;
        out += &python_reader()?;
        out += &ui_lag();
    }
    if let Some(minutes) = args.soak_minutes {
        soak(minutes, args.soak_phase.as_deref())?;
        out += "\n### Soak\n\nThe worker-churn soak's figures are in docs/reliability.md.\n";
    }
    Ok(out)
}

/// The churn soak, into its section of docs/reliability.md (each phase its own block).
fn soak(minutes: u64, only: Option<&str>) -> anyhow::Result<()> {
    let phases = crate::bench_soak::run(minutes, only)?;
    let path = util::root().join("docs/reliability.md");
    let mut doc = fs::read_to_string(&path).unwrap_or_else(|_| "# Reliability\n".to_owned());
    let date =
        util::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let mut cmd = format!("cargo xtask bench --soak {minutes}");
    if let Some(p) = only {
        let _ = write!(cmd, " --soak-only --soak-phase {p}");
    }
    for (name, section) in phases {
        let body = format!(
            "Generated by `{cmd}` on {} at commit {}.\n{section}",
            date.trim(),
            COMMIT.get().map_or("unknown", String::as_str)
        );
        doc = crate::bench_soak::replace_section(&doc, &name, &body);
        println!("{body}");
    }
    fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: wrote the soak section of {}", path.display());
    Ok(())
}

fn render_doc(tables: &str, args: &Args, o: &Opts) -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date =
        util::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let mut cmd = String::from("cargo xtask bench");
    if args.long {
        cmd += " --long";
    }
    if let Some(m) = args.soak_minutes {
        let _ = write!(cmd, " --soak {m}");
    }
    if let Some(s) = args.smoke_secs {
        let _ = write!(cmd, " --smoke-secs {s}");
    }
    format!(
        "# Benchmarks\n\nGenerated by `{cmd}` on {} ({cores} cores, Linux {}) at commit {}. {} pairs \
         of {} s runs per workload, alternating untraced (A) and traced (B: `slowtrace record \
         --port P`); ratios are taken pair by pair, then min / median / max. Load generator, \
         server and slowtrace share the same {cores} cores, so the agent competes with the server \
         for CPU exactly as it would on a small production box.\n\nIn-kernel cost: `run_time_ns` \
         and `run_cnt` of every slowtrace BPF program (read from /proc/PID/fdinfo; names from \
         the kernel by program id) during a third, traced run of each pair made with \
         kernel.bpf_stats_enabled=1, divided by the requests wrk completed. They include the \
         programs' runs for every other process (the target check), so they are the whole \
         machine's cost per request. The statistics add two clock reads to every program run, \
         so these figures are upper bounds; the runs whose throughput is compared (A and B) go \
         without them.\n\nAgent CPU per request: slowtrace's user + system CPU time during the wrk run \
         (/proc/PID/stat, 10 ms ticks) divided by the requests wrk completed. Stop time: from \
         SIGINT (sent right after wrk finished) until the process exited.\n{tables}",
        date.trim(),
        kernel.trim(),
        COMMIT.get().map_or("unknown", String::as_str),
        o.pairs,
        o.secs
    )
}

/// A command line as the docs show it.
pub(crate) fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 4s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  Latency Distribution\n     50%  400.00us\n     99%    2.50ms\n  123456 requests in 4.00s, 10.00MB read\nRequests/sec:  30864.00\n";
        let w = parse_wrk(text).unwrap();
        assert_eq!(w.requests, 123456);
        assert_eq!(w.errors, 0);
        assert!((w.p99_ms - 2.5).abs() < 1e-9);
        assert!((w.rps - 30864.0).abs() < 1e-9);
        assert_eq!(parse_ms("1.2s"), Some(1200.0));
        assert_eq!(parse_ms("800.00us"), Some(0.8));
    }

    #[test]
    fn parses_wrk_errors() {
        let text = "  1000 requests in 4.00s, 1.00MB read\n  Socket errors: connect 0, read 3, write 1, timeout 2\n  Non-2xx or 3xx responses: 4\nRequests/sec:    250.00\n";
        assert_eq!(parse_wrk(text).unwrap().errors, 10);
    }

    #[test]
    fn parses_kernel_line() {
        let s = "x\nkernel: 1234 events (requests and handler calls), 5 dropped (ring buffer full), 0 connections\n";
        assert_eq!(parse_kernel_line(s), Some((1234, 5)));
    }

    #[test]
    fn parses_recorded_requests() {
        let s = "\n5321 requests in 60.2s, 3 endpoints\nGET /  ...\n";
        assert_eq!(parse_recorded(s), Some(5321));
        assert_eq!(parse_recorded("no completed requests"), None);
    }

    #[test]
    fn parses_status_memory() {
        let s = "Name:\tslowtrace\nVmHWM:\t   69632 kB\nVmRSS:\t   51200 kB\n";
        assert_eq!(parse_status_kb(s, "VmHWM"), Some(69632));
        assert_eq!(parse_status_kb(s, "VmRSS"), Some(51200));
        assert_eq!(parse_status_kb(s, "VmSwap"), None);
    }

    #[test]
    fn prog_table_totals_and_missing_programs() {
        let p = |run_ns, runs| ProgRun { run_ns, runs };
        let a = Progs::from([("recv".into(), p(1000, 10)), ("send".into(), p(500, 5))]);
        let b = Progs::from([("recv".into(), p(2000, 20))]);
        let t = prog_table("t", "w", "request", &[(a, 10), (b, 10)]);
        // recv: 1 and 2 runs/request (median of two = the upper), 100 ns/run, 100..200 ns/request.
        assert!(
            t.contains("| `recv` | 2.00 | 100 | 100 | 200 | 200 |"),
            "{t}"
        );
        // send is missing from the second run: 0 there.
        assert!(t.contains("| `send` | 0.50 | 100 | 0 | 50 | 50 |"), "{t}");
        assert!(
            t.contains("| **total** | 2.00 | 100 | 150 | 200 | 200 |"),
            "{t}"
        );
        // A program that never ran has no ns per run.
        let idle = Progs::from([("idle".into(), p(0, 0))]);
        let t = prog_table("t", "w", "byte", &[(idle, 10)]);
        assert!(t.contains("| `idle` | 0.00 | – | 0 | 0 | 0 |"), "{t}");
    }
}
