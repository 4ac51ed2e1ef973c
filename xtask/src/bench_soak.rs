//! `cargo xtask bench --soak MINUTES`: does slowtrace stay flat and exact over a long run with
//! worker churn, at the highest load the box sustains?
//!
//! gunicorn with 2 sync workers and `--max-requests 200` (each worker exits and is replaced after
//! 200 requests, so slowtrace sees a steady stream of new processes, exits and fresh sockets)
//! under wrk -c4 (the sync workers' saturation point: more connections only queue), traced
//! throughout. Two phases, each on a fresh server:
//! - `slowtrace agent` (the always-on deployment: metrics, no files) for MINUTES;
//! - `slowtrace record` (the session tool, which also keeps a whole-run profile) for at most 10.
//!
//! slowtrace's VmRSS and open fd count are sampled every 10 s. The first minute is warm-up
//! (maps, caches and symbol tables fill up); growth after it is what would keep growing in
//! production. The requests slowtrace counted (the agent's Prometheus counters, record's
//! summary) are compared with gunicorn's access log, line for line in number.

use std::{
    fmt::Write as _,
    io::Read as _,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::bench::{
    cpu_secs, fd_count, gunicorn, parse_recorded, parse_wrk, provenance, show, spawn_group,
    status_mb, tempdir, wrk_cmd, Tracer, Wrk,
};

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const MAX_REQUESTS: &str = "200";
const CONNS: u32 = 4;
/// The record phase runs at most this long: its profile tables fill (bounded) over the run.
const RECORD_MINUTES: u64 = 10;

/// One look at slowtrace.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at_s: f64,
    rss_mb: f64,
    fds: usize,
}

/// What one phase's table is made of.
struct Soak {
    samples: Vec<Sample>,
    wrk: Wrk,
    /// Requests slowtrace counted.
    counted: Option<u64>,
    /// Lines in gunicorn's access log: the requests the server served.
    served: u64,
    peak_mb: f64,
    cpu_share: f64,
    stop_s: f64,
    /// The kernel counter line (record) or the final status line (agent).
    own_line: String,
}

/// The phases asked for (`agent`, `record`; None: both), each as (name, markdown).
pub(crate) fn run(minutes: u64, only: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
    let minutes = minutes.max(1);
    let mut out = Vec::new();
    for (sub, m) in [("agent", minutes), ("record", minutes.min(RECORD_MINUTES))] {
        if only.is_none_or(|o| o == sub) {
            out.push((sub.to_owned(), phase(sub, m)?));
        }
    }
    if out.is_empty() {
        bail!("no soak phase {only:?}: agent or record");
    }
    Ok(out)
}

/// One phase: `slowtrace SUB` on a fresh churning gunicorn for `minutes`.
fn phase(sub: &str, minutes: u64) -> anyhow::Result<String> {
    let secs = minutes * 60;
    let dir = tempdir()?;
    let access = dir.join("access.log");
    let access_arg = access.to_string_lossy().into_owned();
    let (server, port) = gunicorn(&[
        "--max-requests",
        MAX_REQUESTS,
        "--access-logfile",
        &access_arg,
    ])?;
    let url = format!("http://127.0.0.1:{port}/");
    let metrics_port = crate::bench::free_port()?;
    let maddr = format!("127.0.0.1:{metrics_port}");
    let extra: Vec<&str> = match sub {
        "agent" => vec!["--metrics-addr", &maddr],
        _ => vec![],
    };
    let tracer = Tracer::start_sub(sub, port, &extra)?;
    let pid = tracer.pid;
    let cpu0 = cpu_secs(pid);
    eprintln!(
        "bench: soak: {minutes} min of gunicorn --max-requests {MAX_REQUESTS} under wrk, traced \
         by slowtrace {sub}"
    );
    let mut load = spawn_group(wrk_cmd(&url, CONNS, secs).stdout(Stdio::piped()))?;
    let samples = sample_until_exit(pid, &mut load.0, secs)?;
    let mut text = String::new();
    if let Some(mut out) = load.0.stdout.take() {
        out.read_to_string(&mut text)?;
    }
    let wrk = parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))?;
    let soak_secs = samples.last().map_or(secs as f64, |s| s.at_s);
    let cpu_share = (cpu_secs(pid) - cpu0) / soak_secs;
    let peak_mb = status_mb(pid, "VmHWM");
    // wrk cancels its last requests, which the server may still serve (a worker forked just
    // before, still importing the app, takes its first request late): slowtrace stops once
    // the access log is quiet, so every request the server served is one it could see.
    settle(&access);
    // The agent's count is what Prometheus would scrape, once the last records are drained.
    let scraped = (sub == "agent").then(|| {
        std::thread::sleep(Duration::from_millis(500));
        requests_counted(&crate::bench_fleet::scrape(metrics_port))
    });
    let stopped = tracer.stop()?;
    // The server's own count: its access log, complete once it has stopped.
    drop(server);
    let served = count_lines(&access)?;
    let _ = std::fs::remove_dir_all(&dir);
    let (counted, own_line) = match scraped {
        Some(n) => (n, stopped.stderr_line("slowtrace: status after")),
        None => (
            parse_recorded(&stopped.summary),
            stopped
                .summary
                .lines()
                .find(|l| l.starts_with("kernel: "))
                .unwrap_or("")
                .to_owned(),
        ),
    };
    let soak = Soak {
        samples,
        wrk,
        counted,
        served,
        peak_mb,
        cpu_share,
        stop_s: stopped.secs,
        own_line,
    };
    let how = match sub {
        "agent" => format!(
            "`slowtrace agent --port {port} --metrics-addr {maddr}` (count: the sum of \
             `http_server_request_duration_seconds_count` scraped from /metrics after the load)"
        ),
        _ => format!("`slowtrace record --port {port} -o DIR` (count: its summary)"),
    };
    let cmds = format!(
        "`gunicorn --workers 2 --max-requests {MAX_REQUESTS} --access-logfile FILE \
         wsgi_app:app`, `{}` and {how} for the whole time, SIGINT once the access log is quiet after wrk",
        show(&wrk_cmd(&url, CONNS, secs))
    );
    Ok(render(sub, minutes, &cmds, &soak))
}

/// `doc` with the block of soak phase `name` replaced by `body`; a block it does not have yet
/// is added at the end of its `## Soak` section (made at the end of `doc` if missing).
pub(crate) fn replace_section(doc: &str, name: &str, body: &str) -> String {
    let (begin, end) = (
        format!(
            "<!-- soak {name}: written by `cargo xtask bench --soak N`; edits are replaced -->"
        ),
        format!("<!-- soak {name} end -->"),
    );
    let block = format!("{begin}\n{body}\n{end}");
    if let (Some(b), Some(e)) = (doc.find(&begin), doc.find(&end)) {
        if b < e {
            return format!("{}{block}{}", &doc[..b], &doc[e + end.len()..]);
        }
    }
    let Some(soak) = doc.find("\n## Soak\n") else {
        return format!("{}\n\n## Soak\n\n{block}\n", doc.trim_end());
    };
    // The end of the Soak section: the next `## ` heading, or the end of the file.
    let after = soak + "\n## Soak\n".len();
    let next = doc[after..].find("\n## ").map_or(doc.len(), |i| after + i);
    format!("{}\n\n{block}\n{}", doc[..next].trim_end(), &doc[next..])
}

/// The requests in an exposition: the sum of every duration histogram's `_count` series.
fn requests_counted(metrics: &str) -> Option<u64> {
    let counts: Vec<u64> = metrics
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// Wait (at most 15 s) until the access log has not grown for a second.
fn settle(access: &Path) {
    let size = || std::fs::metadata(access).map_or(0, |m| m.len());
    let start = Instant::now();
    let mut last = size();
    while start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_secs(1));
        let now = size();
        if now == last {
            return;
        }
        last = now;
    }
}

fn count_lines(path: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read(path)
        .with_context(|| format!("reading the access log {}", path.display()))?;
    Ok(text.iter().filter(|&&b| b == b'\n').count() as u64)
}

/// Samples slowtrace every SAMPLE_EVERY until the load exits, plus once at the end.
fn sample_until_exit(pid: u32, load: &mut Child, secs: u64) -> anyhow::Result<Vec<Sample>> {
    let start = Instant::now();
    let look = || Sample {
        at_s: start.elapsed().as_secs_f64(),
        rss_mb: status_mb(pid, "VmRSS"),
        fds: fd_count(pid),
    };
    let mut samples = vec![];
    let mut next = SAMPLE_EVERY;
    while load.try_wait()?.is_none() {
        if start.elapsed() > Duration::from_secs(secs + 60) {
            bail!("wrk still running a minute after its {secs} s");
        }
        if start.elapsed() >= next {
            let s = look();
            if samples.len() % 6 == 5 {
                eprintln!(
                    "bench: soak {:.0} s: slowtrace RSS {:.1} MB, {} fds",
                    s.at_s, s.rss_mb, s.fds
                );
            }
            samples.push(s);
            next += SAMPLE_EVERY;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    samples.push(look());
    Ok(samples)
}

/// The first sample at or after one minute (or the last one, for a shorter soak).
fn at_one_minute(samples: &[Sample]) -> Option<Sample> {
    samples
        .iter()
        .find(|s| s.at_s >= 59.5)
        .or(samples.last())
        .copied()
}

/// (RSS growth after the first minute as a fraction, fewest and most fds after it).
fn growth(samples: &[Sample]) -> Option<(f64, usize, usize)> {
    let one = at_one_minute(samples)?;
    let end = samples.last()?;
    let after = samples.iter().filter(|s| s.at_s >= one.at_s);
    let lo = after.clone().map(|s| s.fds).min()?;
    let hi = after.map(|s| s.fds).max()?;
    Some(((end.rss_mb - one.rss_mb) / one.rss_mb, lo, hi))
}

fn render(sub: &str, minutes: u64, cmds: &str, s: &Soak) -> String {
    let mut out = format!(
        "\n### slowtrace {sub}: {minutes} min, gunicorn 2 sync workers with --max-requests \
         {MAX_REQUESTS}, wrk -t1 -c{CONNS}, traced throughout\n\n{}\n\
         | metric | at 1 min | at end | after the first minute | target |\n|---|---|---|---|---|\n",
        provenance(cmds)
    );
    let (Some(one), Some(end), Some((rss_growth, fd_lo, fd_hi))) = (
        at_one_minute(&s.samples),
        s.samples.last(),
        growth(&s.samples),
    ) else {
        return out + "\nNo samples were taken.\n";
    };
    let _ = writeln!(
        out,
        "| slowtrace RSS (VmRSS, MB) | {:.1} | {:.1} | {:+.1}% | ≤ +5% |",
        one.rss_mb,
        end.rss_mb,
        rss_growth * 100.0
    );
    let _ = writeln!(
        out,
        "| slowtrace open fds | {} | {} | {fd_lo}–{fd_hi} | flat |",
        one.fds, end.fds
    );
    let _ = writeln!(
        out,
        "| slowtrace peak RSS (VmHWM, MB) | | {:.1} | | |",
        s.peak_mb
    );
    let _ = writeln!(
        out,
        "| slowtrace CPU over the soak (% of one core) | | {:.2}% | | |",
        s.cpu_share * 100.0
    );
    let _ = writeln!(
        out,
        "| requests served (gunicorn's access log) | | {} | | |",
        s.served
    );
    let verdict = match s.counted {
        Some(c) if c == s.served => format!("{c} (exact)"),
        Some(c) => format!("{c} ({:+} vs the access log)", c as i64 - s.served as i64),
        None => "? (no count found)".to_owned(),
    };
    let _ = writeln!(
        out,
        "| requests counted by slowtrace | | {verdict} | | = access log |"
    );
    let _ = writeln!(
        out,
        "| requests completed by wrk (req/s) | | {} ({:.0}/s) | | |",
        s.wrk.requests, s.wrk.rps
    );
    let _ = writeln!(
        out,
        "| wrk socket errors + non-2xx responses | | {} | | |",
        s.wrk.errors
    );
    let _ = writeln!(
        out,
        "| stop time after SIGINT, once the server is quiet (s) | | {:.2} | | ≤ 0.5 s |",
        s.stop_s
    );
    // Every sixth 10 s sample is a minute mark; the last one is the end.
    let per_minute: Vec<String> = s
        .samples
        .iter()
        .enumerate()
        .filter(|(i, _)| (i + 1) % 6 == 0 || i + 1 == s.samples.len())
        .map(|(_, x)| x)
        .map(|x| format!("{:.0} s: {:.1} MB / {} fds", x.at_s, x.rss_mb, x.fds))
        .collect();
    let _ = writeln!(
        out,
        "\nSamples (every {} s; shown about once a minute): {}.\n\nslowtrace's own line at exit: `{}`",
        SAMPLE_EVERY.as_secs(),
        per_minute.join(", "),
        s.own_line
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_s: f64, rss_mb: f64, fds: usize) -> Sample {
        Sample { at_s, rss_mb, fds }
    }

    #[test]
    fn growth_counts_from_the_first_minute() {
        let v = [
            s(10.0, 30.0, 20),
            s(60.1, 40.0, 25),
            s(70.0, 41.0, 27),
            s(120.0, 42.0, 25),
        ];
        assert_eq!(at_one_minute(&v), Some(v[1]));
        let (g, lo, hi) = growth(&v).unwrap();
        assert!((g - 0.05).abs() < 1e-9);
        assert_eq!((lo, hi), (25, 27));
    }

    #[test]
    fn the_agents_count_is_the_sum_of_its_duration_counts() {
        let m = "# HELP x\n\
                 http_server_request_duration_seconds_count{http_route=\"/\"} 525804\n\
                 http_server_request_duration_seconds_count{http_route=\"/b\"} 6\n\
                 http_server_request_duration_seconds_sum{http_route=\"/\"} 41.5\n";
        assert_eq!(requests_counted(m), Some(525_810));
        assert_eq!(requests_counted("# nothing\n"), None);
    }

    #[test]
    fn soak_phases_are_replaced_in_place_or_added_to_the_soak_section() {
        let doc = "# Reliability\n\n## Fuzzing\n\nx\n";
        let one = replace_section(doc, "agent", "A1");
        assert!(one.starts_with("# Reliability\n\n## Fuzzing\n\nx\n\n## Soak\n\n<!-- soak agent"));
        let with_faults = format!("{one}\n## Faults\n\ny\n");
        let two = replace_section(&with_faults, "record", "R1");
        let three = replace_section(&two, "agent", "A2");
        assert!(three.contains("A2") && !three.contains("A1") && three.contains("R1"));
        assert!(
            three.find("A2") < three.find("R1"),
            "agent stays first: {three}"
        );
        assert!(
            three.find("R1") < three.find("## Faults"),
            "inside Soak: {three}"
        );
        assert!(three.ends_with("## Faults\n\ny\n"), "{three}");
        assert_eq!(three.matches("## Soak").count(), 1);
    }

    #[test]
    fn short_soak_uses_the_last_sample() {
        let v = [s(10.0, 30.0, 20), s(30.0, 31.0, 20)];
        assert_eq!(at_one_minute(&v), Some(v[1]));
        assert_eq!(growth(&v).map(|g| g.0), Some(0.0));
    }
}
