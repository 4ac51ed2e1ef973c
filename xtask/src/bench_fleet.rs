//! What the fleet outputs cost: `slowtrace agent` with its exporters on, against `record` and
//! against no tracing, on the same workload, pairs interleaved (untraced, record, agent with
//! /metrics, agent with /metrics and OTLP spans to a real trace backend, Arize Phoenix from the
//! setup's venv). Agent CPU per request, CPU share and peak RSS per configuration; throughput
//! against the untraced run of the same pair; spans sent and dropped as the agent counted them.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    bench::{
        free_port, gunicorn, mmm, nginx, provenance, spawn_group, tempdir, traced_run_sub, wrk,
        Guard, Opts,
    },
    util,
};

/// Phoenix on free ports, its data in a temporary directory; None if setup did not install it.
fn phoenix() -> anyhow::Result<Option<(Guard, u16, std::path::PathBuf)>> {
    let bin = util::root().join("target/venv-phoenix/bin/phoenix");
    if !bin.exists() {
        return Ok(None);
    }
    let dir = tempdir()?;
    let (http, grpc) = (free_port()?, free_port()?);
    let g = spawn_group(
        Command::new(bin)
            .arg("serve")
            .env("PHOENIX_WORKING_DIR", &dir)
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", http.to_string())
            .env("PHOENIX_GRPC_PORT", grpc.to_string())
            .env("PHOENIX_TELEMETRY_ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "Phoenix did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(Some((g, http, dir)))
}

/// A counter's value in the agent's /metrics text.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The agent's /metrics text (empty when it does not answer).
pub(crate) fn scrape(port: u16) -> String {
    Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[derive(Default)]
struct Config {
    tput: Vec<f64>,
    us_per_req: Vec<f64>,
    cpu: Vec<f64>,
    rss: Vec<f64>,
    stop: Vec<f64>,
    sent: Vec<f64>,
    dropped: Vec<f64>,
}

fn workload(
    out: &mut String,
    name: &str,
    port: u16,
    url: &str,
    conns: u32,
    o: &Opts,
    otlp: Option<u16>,
) -> anyhow::Result<()> {
    let mport = free_port()?;
    let maddr = format!("127.0.0.1:{mport}");
    let endpoint = otlp.map(|p| format!("http://127.0.0.1:{p}"));
    let metrics_only: Vec<&str> = vec!["--metrics-addr", &maddr];
    let mut with_otlp = metrics_only.clone();
    if let Some(e) = &endpoint {
        with_otlp.extend([
            "--otlp-endpoint",
            e,
            "--sample-ratio",
            "0.1",
            "--no-otlp-metrics",
        ]);
    }
    let configs: Vec<(&str, &str, Vec<&str>)> = {
        let mut v = vec![
            ("record", "record", vec![]),
            ("agent, /metrics", "agent", metrics_only.clone()),
        ];
        if endpoint.is_some() {
            v.push((
                "agent, /metrics + OTLP spans (10 %)",
                "agent",
                with_otlp.clone(),
            ));
        }
        v
    };
    let mut results: Vec<Config> = configs.iter().map(|_| Config::default()).collect();
    wrk(url, conns, 2)?;
    for i in 0..o.pairs {
        let base = wrk(url, conns, o.secs)?;
        for ((label, sub, extra), r) in configs.iter().zip(results.iter_mut()) {
            let mut text = String::new();
            let (w, agent) = traced_run_sub(sub, port, url, conns, o.secs, extra, false, |_| {
                if *sub == "agent" {
                    // Give the exporter a moment to send what the load left queued.
                    std::thread::sleep(Duration::from_millis(1500));
                    text = scrape(mport);
                }
            })?;
            r.tput.push(w.rps / base.rps);
            if w.requests > 0 {
                r.us_per_req.push(agent.cpu_s * 1e6 / w.requests as f64);
            }
            r.cpu.push(agent.cpu_share * 100.0);
            r.rss.push(agent.peak_rss_mb);
            r.stop.push(agent.stop_s);
            if !text.is_empty() {
                r.sent.push(metric(
                    &text,
                    "slowtrace_export_spans_total{outcome=\"sent\"}",
                ));
                r.dropped.push(
                    metric(&text, "slowtrace_lost_total{what=\"spans_queue_full\"}")
                        + metric(&text, "slowtrace_lost_total{what=\"spans_failed\"}"),
                );
            }
            eprintln!(
                "bench: fleet {name} pair {}/{} {label}: {:.0} req/s ({:.1}% of untraced), agent {:.2} µs/req {:.1}% CPU {:.1} MB",
                i + 1,
                o.pairs,
                w.rps,
                100.0 * w.rps / base.rps,
                agent.cpu_s * 1e6 / w.requests.max(1) as f64,
                agent.cpu_share * 100.0,
                agent.peak_rss_mb,
            );
        }
    }
    let _ = writeln!(
        out,
        "\n#### {name}\n\n| configuration | throughput vs untraced | agent µs/request | agent CPU | peak RSS MB | stop s | spans sent / dropped+failed |\n|---|---|---|---|---|---|---|"
    );
    let med = |v: &[f64]| mmm(v).1;
    for ((label, _, _), r) in configs.iter().zip(&results) {
        let (lo, m, hi) = mmm(&r.tput);
        let spans = if r.sent.is_empty() {
            "—".to_owned()
        } else {
            format!("{:.0} / {:.0}", med(&r.sent), med(&r.dropped))
        };
        let _ = writeln!(
            out,
            "| {label} | {:.1}% ({:.1}–{:.1}%) | {:.2} | {:.1}% | {:.1} | {:.2} | {spans} |",
            m * 100.0,
            lo * 100.0,
            hi * 100.0,
            med(&r.us_per_req),
            med(&r.cpu),
            med(&r.rss),
            med(&r.stop),
        );
    }
    Ok(())
}

pub fn run(o: &Opts) -> anyhow::Result<String> {
    let mut out = String::from("\n### The agent with its exporters on (`slowtrace agent`)\n\n");
    let phx = phoenix().context("starting Phoenix")?;
    let otlp = phx.as_ref().map(|(_, p, _)| *p);
    out += &provenance(
        "`cargo xtask bench` (fleet section): per pair, wrk untraced, then with `slowtrace record \
         --port P`, `slowtrace agent --port P --metrics-addr 127.0.0.1:M`, and the same with \
         `--otlp-endpoint http://127.0.0.1:PHOENIX --sample-ratio 0.1 --no-otlp-metrics` (Arize \
         Phoenix from target/venv-phoenix receiving); medians (throughput: min–max too)",
    );
    if otlp.is_none() {
        out += "\nPhoenix is not installed (run `cargo xtask setup`): the OTLP row is missing.\n";
    }
    let dir = tempdir()?;
    let (ng, nport) = nginx(&dir)?;
    workload(
        &mut out,
        "nginx static file, wrk -t1 -c32",
        nport,
        &format!("http://127.0.0.1:{nport}/index.html"),
        32,
        o,
        otlp,
    )?;
    drop(ng);
    let _ = std::fs::remove_dir_all(&dir);
    let (g, gport) = gunicorn(&[])?;
    workload(
        &mut out,
        "gunicorn 2 sync workers, wrk -t1 -c4",
        gport,
        &format!("http://127.0.0.1:{gport}/"),
        4,
        o,
        otlp,
    )?;
    drop(g);
    if let Some((guard, _, dir)) = phx {
        drop(guard);
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(out)
}
