//! The cost of single features, each measured as slowtrace-with versus slowtrace-without on the
//! same workload (pairs alternating, ratios pair by pair, as in bench.rs):
//!
//! * continuous profiling: `--sample-hz 99` against `--sample-hz 0` on gunicorn;
//! * downstream tracking and the time breakdown: traced against untraced on gunicorn + Django +
//!   PostgreSQL with an N+1 view (101 round trips per request: the worst case for per-call
//!   tracking), with the in-kernel cost per round trip.

use std::{fmt::Write as _, process::Command, time::Duration};

use anyhow::Context as _;

use crate::{
    bench::{
        free_port, mmm, provenance, show, spawn_group, traced_run, wait_port, wrk, wrk_cmd, Guard,
        Opts,
    },
    util,
};

/// A/B ratios of one feature.
#[derive(Default)]
struct Cost {
    tput_ratio: Vec<f64>,
    p99_ratio: Vec<f64>,
    base_rps: Vec<f64>,
    ns_per_req: Vec<f64>,
    cpu: Vec<f64>,
}

/// `a`: None for untraced, or the slowtrace flags of the baseline; `b`: the flags with the
/// feature.
fn compare(
    name: &str,
    port: u16,
    url: &str,
    conns: u32,
    o: &Opts,
    a: Option<&[&str]>,
    b: &[&str],
) -> anyhow::Result<Cost> {
    let mut c = Cost::default();
    wrk(url, conns, 2)?;
    for i in 0..o.pairs {
        let base = match a {
            None => wrk(url, conns, o.secs)?,
            Some(flags) => traced_run(port, url, conns, o.secs, flags, true)?.0,
        };
        let (with, agent) = traced_run(port, url, conns, o.secs, b, a.is_some())?;
        eprintln!(
            "bench: {name} pair {}/{}: A {:.0} req/s p99 {:.2}ms | B {:.0} req/s p99 {:.2}ms",
            i + 1,
            o.pairs,
            base.rps,
            base.p99_ms,
            with.rps,
            with.p99_ms
        );
        c.tput_ratio.push(with.rps / base.rps);
        c.p99_ratio.push(with.p99_ms / base.p99_ms);
        c.base_rps.push(base.rps);
        c.cpu.push(agent.cpu_share * 100.0);
        if with.requests > 0 && agent.bpf_ns > 0 {
            c.ns_per_req
                .push(agent.bpf_ns as f64 / with.requests as f64);
        }
    }
    Ok(c)
}

/// `load`: the wrk command both A and B ran under.
fn table(title: &str, what: &str, load: &Command, c: &Cost, target: &str) -> String {
    let mut out = format!(
        "\n### {title}\n\n{what}\n\n{}\n| metric | min | median | max | target |\n|---|---|---|---|---|\n",
        provenance(&format!("`{}` in both A and B", show(load)))
    );
    let mut row = |metric: &str, v: &[f64], f: &dyn Fn(f64) -> String, t: &str| {
        let (a, b, c) = mmm(v);
        let _ = writeln!(out, "| {metric} | {} | {} | {} | {t} |", f(a), f(b), f(c));
    };
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    row("throughput B / A", &c.tput_ratio, &pct, target);
    row("p99 latency B / A", &c.p99_ratio, &pct, "");
    row(
        "A throughput (req/s)",
        &c.base_rps,
        &|x| format!("{x:.0}"),
        "",
    );
    row(
        "agent CPU in B (% of one core)",
        &c.cpu,
        &|x| format!("{x:.2}%"),
        "",
    );
    row(
        "in-kernel ns per request in B (all programs)",
        &c.ns_per_req,
        &|x| format!("{x:.0}"),
        "",
    );
    out
}

fn gunicorn(app: &str, env: &[(&str, String)], workers: &str) -> anyhow::Result<(Guard, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new(util::venv().join("bin/gunicorn"));
    cmd.current_dir(util::root().join("tests/servers"))
        .args(["--workers", workers, "--bind", &format!("127.0.0.1:{port}")])
        .args(["--log-level", "warning", app])
        .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let g = spawn_group(&mut cmd)?;
    wait_port(port)?;
    std::thread::sleep(Duration::from_secs(2));
    Ok((g, port))
}

/// A throwaway PostgreSQL on a free port (run as `postgres`; it refuses root).
struct Postgres {
    port: u16,
    dir: std::path::PathBuf,
}

/// Debian keeps PostgreSQL's binaries under /usr/lib/postgresql/VERSION/bin; the newest.
fn pg_bin(name: &str) -> std::path::PathBuf {
    let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .last()
        .map_or_else(|| "/usr/lib/postgresql/15".into(), Clone::clone)
        .join("bin")
        .join(name)
}

impl Postgres {
    fn start() -> anyhow::Result<Postgres> {
        let dir = crate::bench::tempdir()?;
        util::run(Command::new("chown").arg("postgres").arg(&dir))?;
        let data = dir.join("data");
        let port = free_port()?;
        let as_pg = |bin: &str| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_bin(bin));
            c
        };
        util::run(
            as_pg("initdb")
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&data),
        )?;
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.display()
        );
        util::run(
            as_pg("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-o", &opts, "-w", "-l"])
                .arg(dir.join("log"))
                .arg("start"),
        )?;
        util::run(Command::new(pg_bin("createdb")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "slowtrace",
        ]))?;
        Ok(Postgres { port, dir })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(o: &Opts) -> anyhow::Result<String> {
    let mut out = String::new();
    let (g, port) = gunicorn("wsgi_app:app", &[], "2")?;
    let url = format!("http://127.0.0.1:{port}/");
    let c = compare(
        "profiling",
        port,
        &url,
        4,
        o,
        Some(&["--sample-hz", "0"]),
        &["--sample-hz", "99"],
    )?;
    drop(g);
    out += &table(
        "Continuous profiling at 99 Hz (gunicorn 2 sync workers, WSGI view, wrk -t1 -c4)",
        "A: `slowtrace record --sample-hz 0`, B: `slowtrace record --sample-hz 99` (the default).",
        &wrk_cmd(&url, 4, o.secs),
        &c,
        "≥ 99%",
    );

    let pg = Postgres::start().context("starting PostgreSQL for the downstream benchmark")?;
    let env = [("PGPORT", pg.port.to_string())];
    let mut init = Command::new(util::venv().join("bin/python"));
    init.current_dir(util::root().join("tests/servers"))
        .args(["downstream_app.py", "init"])
        .env("PGPORT", pg.port.to_string());
    util::run(&mut init)?;
    let (g, port) = gunicorn("downstream_app:application", &env, "2")?;
    let url = format!("http://127.0.0.1:{port}/books/n1");
    let c = compare("downstream", port, &url, 2, o, None, &[])?;
    drop(g);
    drop(pg);
    out += &table(
        "Downstream tracking (gunicorn 2 sync workers + Django + PostgreSQL, N+1 view: 101 round \
         trips per request, wrk -t1 -c2)",
        "A: untraced, B: `slowtrace record` (requests, time breakdown, downstream calls, 99 Hz \
         profile). In-kernel ns per request covers 101 round trips, ~200 syscalls and the \
         context switches of each request.",
        &wrk_cmd(&url, 2, o.secs),
        &c,
        "",
    );
    Ok(out)
}
