//! `cargo xtask bench`: what tracing costs, measured side by side and written to
//! docs/benchmarks.md.
//!
//! Each workload runs A B A B …: A without slowtrace, B with `slowtrace record` attached. Ratios
//! are taken pair by pair so slow drift of the machine cancels, then summarised as min/median/max.
//! Nothing here is asserted: a missed target is a finding to report.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{setup, util};

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
}

/// What we read off slowtrace during and after one traced run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Agent {
    pub(crate) cpu_share: f64,
    peak_rss_mb: f64,
    pub(crate) bpf_ns: u64,
    pub(crate) events: u64,
    pub(crate) dropped: u64,
}

#[derive(Default)]
struct Series {
    tput_ratio: Vec<f64>,
    p99_ratio: Vec<f64>,
    base_rps: Vec<f64>,
    cpu: Vec<f64>,
    rss: Vec<f64>,
    ns_per_req: Vec<f64>,
    events_per_s: Vec<f64>,
    dropped: Vec<f64>,
}

/// Kills the process group when dropped.
pub(crate) struct Guard(Child);

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

fn nginx(dir: &Path) -> anyhow::Result<(Guard, u16)> {
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

fn gunicorn() -> anyhow::Result<(Guard, u16)> {
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
            .arg("wsgi_app:app")
            .stdout(Stdio::null()),
    )?;
    wait_port(port)?;
    // gunicorn listens before its workers are up.
    std::thread::sleep(Duration::from_secs(2));
    Ok((g, port))
}

pub(crate) fn wrk(url: &str, conns: u32, secs: u64) -> anyhow::Result<Wrk> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            url,
        ])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("99%") {
            w.p99_ms = parse_ms(v.trim())?;
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            w.requests = n.trim().parse().ok()?;
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

/// CPU ticks (user + system) of a process.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After "pid (comm)": state is field 0, utime 11, stime 12.
    get(11) + get(12)
}

fn peak_rss_mb(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Total run time of every BPF program slowtrace holds (needs kernel.bpf_stats_enabled=1).
fn bpf_run_ns(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter(|t| t.contains("prog_type:"))
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("run_time_ns:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

pub(crate) fn traced_run(
    port: u16,
    url: &str,
    conns: u32,
    secs: u64,
    extra: &[&str],
) -> anyhow::Result<(Wrk, Agent)> {
    let out_dir = tempdir()?;
    let mut tracer = Command::new(util::slowtrace_bin())
        .args(["record", "--port", &port.to_string(), "-o"])
        .arg(&out_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting slowtrace")?;
    let pid = tracer.id();
    wait_for_line(&mut tracer, "slowtrace: tracing")?;
    let t0 = cpu_ticks(pid);
    let bpf0 = bpf_run_ns(pid);
    let started = Instant::now();
    let w = wrk(url, conns, secs)?;
    let wall = started.elapsed().as_secs_f64();
    let ticks = cpu_ticks(pid) - t0;
    let bpf_ns = bpf_run_ns(pid) - bpf0;
    let rss = peak_rss_mb(pid);
    // SAFETY: signalling our child.
    unsafe { kill(pid as i32, 2) };
    let out = tracer.wait_with_output()?;
    let summary = String::from_utf8_lossy(&out.stdout);
    let (events, dropped) = parse_kernel_line(&summary).unwrap_or((0, 0));
    let _ = fs::remove_dir_all(&out_dir);
    let clk_tck = 100.0;
    Ok((
        w,
        Agent {
            cpu_share: ticks as f64 / clk_tck / wall,
            peak_rss_mb: rss,
            bpf_ns,
            events,
            dropped,
        },
    ))
}

fn wait_for_line(child: &mut Child, prefix: &str) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    let err = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(err).lines();
    for line in lines.by_ref() {
        let line = line?;
        if line.starts_with(prefix) {
            // Keep draining in the background so slowtrace never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(());
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
        let (b, agent) = traced_run(port, url, conns, o.secs, &[])?;
        eprintln!(
            "bench: {name} pair {}/{}: untraced {:.0} req/s p99 {:.2}ms | traced {:.0} req/s p99 {:.2}ms, agent {:.1}% CPU {:.1} MB, {} events, {} dropped",
            i + 1, o.pairs, a.rps, a.p99_ms, b.rps, b.p99_ms, agent.cpu_share * 100.0, agent.peak_rss_mb, agent.events, agent.dropped
        );
        s.tput_ratio.push(b.rps / a.rps);
        s.p99_ratio.push(b.p99_ms / a.p99_ms);
        s.base_rps.push(a.rps);
        s.cpu.push(agent.cpu_share * 100.0);
        s.rss.push(agent.peak_rss_mb);
        if b.requests > 0 && agent.bpf_ns > 0 {
            s.ns_per_req.push(agent.bpf_ns as f64 / b.requests as f64);
        }
        s.events_per_s.push(agent.events as f64 / o.secs as f64);
        s.dropped.push(agent.dropped as f64);
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

fn row(out: &mut String, metric: &str, v: &[f64], fmt: impl Fn(f64) -> String, target: &str) {
    let (a, b, c) = mmm(v);
    let _ = writeln!(
        out,
        "| {metric} | {} | {} | {} | {target} |",
        fmt(a),
        fmt(b),
        fmt(c)
    );
}

fn table(name: &str, s: &Series) -> String {
    let mut out = String::new();
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let _ = writeln!(
        out,
        "\n### {name}\n\n| metric | min | median | max | target |\n|---|---|---|---|---|"
    );
    let tput_target = if name.starts_with("nginx") {
        "≥ 99%"
    } else {
        "≥ 98%"
    };
    row(
        &mut out,
        "throughput traced / untraced",
        &s.tput_ratio,
        pct,
        tput_target,
    );
    row(
        &mut out,
        "p99 latency traced / untraced",
        &s.p99_ratio,
        pct,
        "≤ 105%",
    );
    row(
        &mut out,
        "untraced throughput (req/s)",
        &s.base_rps,
        |x| format!("{x:.0}"),
        "",
    );
    row(
        &mut out,
        "agent CPU (% of one core)",
        &s.cpu,
        |x| format!("{x:.2}%"),
        "≤ 5% at 20k req/s",
    );
    row(
        &mut out,
        "agent peak RSS (MB)",
        &s.rss,
        |x| format!("{x:.1}"),
        "≤ 40 MB",
    );
    row(
        &mut out,
        "in-kernel ns per request (all programs)",
        &s.ns_per_req,
        |x| format!("{x:.0}"),
        "≤ 300 ns",
    );
    row(
        &mut out,
        "request events/s",
        &s.events_per_s,
        |x| format!("{x:.0}"),
        "",
    );
    row(
        &mut out,
        "dropped events per run",
        &s.dropped,
        |x| format!("{x:.0}"),
        "0",
    );
    out
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
    out.push_str("\nTarget: p50 ≤ 50 µs. Command: `slowtrace pystack --pid W --tid W --bench 1000` on the worker.\n");
    Ok(out)
}

/// The dashboard under a synthetic flood (`slowtrace bench-ui`), when that command exists.
fn ui_lag() -> String {
    let out = util::output(Command::new(util::slowtrace_bin()).args([
        "bench-ui",
        "--rate",
        "50000",
        "--seconds",
        "5",
    ]));
    let Some(line) = out
        .as_deref()
        .and_then(|t| t.lines().rev().find(|l| l.starts_with('{')))
    else {
        return "\n### Dashboard\n\n`slowtrace bench-ui` is not available in this build.\n"
            .to_owned();
    };
    format!(
        "\n### Dashboard at 50k synthetic events/s\n\n`slowtrace bench-ui --rate 50000 --seconds 5` \
         (real dashboard state, 160×48 TestBackend at 4 fps):\n\n```\n{line}\n```\n"
    )
}

pub fn run(long: bool) -> anyhow::Result<()> {
    setup::run(true)?;
    util::build_release()?;
    let o = if long {
        Opts {
            pairs: 10,
            secs: 10,
        }
    } else {
        Opts { pairs: 5, secs: 4 }
    };
    // In-kernel cost needs the kernel's BPF run-time statistics; restore the setting afterwards.
    let stats_path = "/proc/sys/kernel/bpf_stats_enabled";
    let old_stats = fs::read_to_string(stats_path).unwrap_or_else(|_| "0".into());
    fs::write(stats_path, "1").context("enabling kernel.bpf_stats_enabled (run as root)")?;
    let result = (|| -> anyhow::Result<String> {
        let dir = tempdir()?;
        let (nginx_guard, nport) = nginx(&dir)?;
        let n = workload(
            "nginx static file, wrk -t1 -c32 keep-alive",
            nport,
            &format!("http://127.0.0.1:{nport}/index.html"),
            32,
            &o,
        )?;
        drop(nginx_guard);
        let _ = fs::remove_dir_all(&dir);
        let (g, gport) = gunicorn()?;
        let g_series = workload(
            "gunicorn 2 sync workers, WSGI view, wrk -t1 -c4",
            gport,
            &format!("http://127.0.0.1:{gport}/"),
            4,
            &o,
        )?;
        drop(g);
        Ok(table("nginx static file, wrk -t1 -c32 keep-alive", &n)
            + &table("gunicorn 2 sync workers, WSGI view, wrk -t1 -c4", &g_series)
            + &crate::bench_cost::run(&o)?
            + &python_reader()?
            + &ui_lag())
    })();
    let _ = fs::write(stats_path, old_stats.trim());
    let tables = result?;
    let doc = render_doc(&tables, long, &o);
    let path = util::root().join("docs/benchmarks.md");
    fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
    println!("{doc}");
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

fn render_doc(tables: &str, long: bool, o: &Opts) -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date =
        util::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let cmd = if long {
        "cargo xtask bench --long"
    } else {
        "cargo xtask bench"
    };
    format!(
        "# Benchmarks\n\nGenerated by `{cmd}` on {} ({cores} cores, Linux {}). {} pairs of {} s runs per \
         workload, alternating untraced (A) and traced (B: `slowtrace record --port P`); ratios are \
         taken pair by pair, then min / median / max. Load generator, server and slowtrace share \
         the same {cores} cores, so the agent competes with the server for CPU exactly as it would \
         on a small production box.\n\nIn-kernel cost: the sum of `run_time_ns` of every slowtrace \
         BPF program (kernel.bpf_stats_enabled=1, read from /proc/PID/fdinfo) during the traced \
         run, divided by the requests wrk completed. It includes the programs' runs for every other \
         process's syscalls (the target check), so it is the whole machine's cost per request.\n{tables}",
        date.trim(),
        kernel.trim(),
        o.pairs,
        o.secs
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 4s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  Latency Distribution\n     50%  400.00us\n     99%    2.50ms\n  123456 requests in 4.00s, 10.00MB read\nRequests/sec:  30864.00\n";
        let w = parse_wrk(text).unwrap();
        assert_eq!(w.requests, 123456);
        assert!((w.p99_ms - 2.5).abs() < 1e-9);
        assert!((w.rps - 30864.0).abs() < 1e-9);
        assert_eq!(parse_ms("1.2s"), Some(1200.0));
        assert_eq!(parse_ms("800.00us"), Some(0.8));
    }

    #[test]
    fn parses_kernel_line() {
        let s = "x\nkernel: 1234 events (requests and handler calls), 5 dropped (ring buffer full), 0 connections\n";
        assert_eq!(parse_kernel_line(s), Some((1234, 5)));
    }
}
