//! `cargo xtask bench --soak MINUTES`: does slowtrace grow over a long run with worker churn?
//!
//! gunicorn with 2 sync workers and `--max-requests 200` (each worker exits and is replaced after
//! 200 requests, so the agent sees a steady stream of new processes, exits and fresh sockets)
//! under wrk -c4 for the whole time, traced throughout. slowtrace's VmRSS and open fd count are
//! sampled every 10 s. The first minute is warm-up (maps, caches and symbol tables fill up);
//! growth after it is what would keep growing in production.

use std::{
    fmt::Write as _,
    io::Read as _,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::bench::{
    cpu_secs, fd_count, gunicorn, parse_recorded, parse_wrk, provenance, show, spawn_group,
    status_mb, wrk_cmd, Tracer, Wrk,
};

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const MAX_REQUESTS: &str = "200";
const CONNS: u32 = 4;

/// One look at slowtrace.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at_s: f64,
    rss_mb: f64,
    fds: usize,
}

/// What the soak table is made of.
struct Soak {
    samples: Vec<Sample>,
    wrk: Wrk,
    recorded: Option<u64>,
    peak_mb: f64,
    cpu_share: f64,
    stop_s: f64,
    kernel_line: String,
}

pub(crate) fn run(minutes: u64) -> anyhow::Result<String> {
    let secs = minutes.max(1) * 60;
    let (server, port) = gunicorn(&["--max-requests", MAX_REQUESTS])?;
    let url = format!("http://127.0.0.1:{port}/");
    let tracer = Tracer::start(port, &[])?;
    let pid = tracer.pid;
    let cpu0 = cpu_secs(pid);
    eprintln!(
        "bench: soak: {minutes} min of gunicorn --max-requests {MAX_REQUESTS} under wrk, traced"
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
    let stopped = tracer.stop()?;
    drop(server);
    let soak = Soak {
        samples,
        wrk,
        recorded: parse_recorded(&stopped.summary),
        peak_mb,
        cpu_share,
        stop_s: stopped.secs,
        kernel_line: stopped
            .summary
            .lines()
            .find(|l| l.starts_with("kernel: "))
            .unwrap_or("")
            .to_owned(),
    };
    let cmds = format!(
        "`gunicorn --workers 2 --max-requests {MAX_REQUESTS} wsgi_app:app`, `{}` and `slowtrace \
         record --port {port} -o DIR` for the whole time, SIGINT after wrk",
        show(&wrk_cmd(&url, CONNS, secs))
    );
    Ok(render(minutes, &cmds, &soak))
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

fn render(minutes: u64, cmds: &str, s: &Soak) -> String {
    let mut out = format!(
        "\n### Churn soak: {minutes} min, gunicorn 2 sync workers with --max-requests \
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
        "| agent RSS (VmRSS, MB) | {:.1} | {:.1} | {:+.1}% | ≤ +5% |",
        one.rss_mb,
        end.rss_mb,
        rss_growth * 100.0
    );
    let _ = writeln!(
        out,
        "| agent open fds | {} | {} | {fd_lo}–{fd_hi} | flat |",
        one.fds, end.fds
    );
    let _ = writeln!(
        out,
        "| agent peak RSS (VmHWM, MB) | | {:.1} | | |",
        s.peak_mb
    );
    let _ = writeln!(
        out,
        "| agent CPU over the soak (% of one core) | | {:.2}% | | |",
        s.cpu_share * 100.0
    );
    let recorded = s.recorded.map_or("?".to_owned(), |r| {
        format!(
            "{r} / {} ({:.1}%)",
            s.wrk.requests,
            r as f64 * 100.0 / s.wrk.requests.max(1) as f64
        )
    });
    let _ = writeln!(
        out,
        "| requests recorded by slowtrace / completed by wrk | | {recorded} | | |"
    );
    let _ = writeln!(
        out,
        "| wrk socket errors + non-2xx responses | | {} | | |",
        s.wrk.errors
    );
    let _ = writeln!(
        out,
        "| stop time after SIGINT, right after the load (s) | | {:.2} | | ≤ 0.5 s |",
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
        "\nSamples (every {} s; shown about once a minute): {}.\n\nslowtrace's own count at exit: `{}`",
        SAMPLE_EVERY.as_secs(),
        per_minute.join(", "),
        s.kernel_line
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
    fn short_soak_uses_the_last_sample() {
        let v = [s(10.0, 30.0, 20), s(30.0, 31.0, 20)];
        assert_eq!(at_one_minute(&v), Some(v[1]));
        assert_eq!(growth(&v).map(|g| g.0), Some(0.0));
    }
}
