//! Non-target cost: what slowtrace costs the processes it does *not* trace.
//!
//! slowtrace's programs are attached machine-wide (socket and scheduler tracepoints) and decide
//! per event whether the task is a target, so every other process on the box pays for that check.
//! Measured in pairs, A without slowtrace and B with `slowtrace record --port P` tracing the
//! bench's nginx (idle meanwhile), on two workloads that are not the target:
//!
//! * `cargo xtask echo-load`: a loopback TCP echo pair doing small round trips (sockets, wake-ups);
//! * `dd if=/dev/zero of=/dev/null bs=1`: two syscalls per byte and no sockets, the cost of the
//!   syscall path alone (nothing if no syscall tracepoint is attached).

use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    bench::{
        cpu_secs, pct, prog_table, progs_since, progs_total, provenance, row, show, Opts, Progs,
        Tracer, TABLE_HEAD,
    },
    bpf_stats, echo_load,
};

/// Lets slowtrace finish starting up (first scans of the target) before B is measured, so B sees
/// the steady state a long-running agent imposes on everything else.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Results {
    echo_ratio: Vec<f64>,
    echo_base: Vec<f64>,
    echo_ns: Vec<f64>,
    echo_progs: Vec<(Progs, u64)>,
    dd_ratio: Vec<f64>,
    dd_base: Vec<f64>,
    dd_ns: Vec<f64>,
    dd_progs: Vec<(Progs, u64)>,
    agent_cpu: Vec<f64>,
    stop_s: Vec<f64>,
}

pub(crate) fn run(target_port: u16, o: &Opts) -> anyhow::Result<String> {
    let secs = o.secs;
    // Warm-up, and a dd size that takes about half a run on today's machine (speed varies ×2).
    echo(1)?;
    let count = dd_count_for((secs as f64 / 2.0).max(1.0))?;
    let mut r = Results::default();
    for i in 0..o.pairs {
        let (_, a_echo) = echo(secs)?;
        let a_dd = dd(count)?;

        let tracer = Tracer::start(target_port, &[])?;
        std::thread::sleep(SETTLE);
        let pid = tracer.pid;
        let (cpu0, wall0) = (cpu_secs(pid), Instant::now());
        let (_, b_echo) = echo(secs)?;
        let b_dd = dd(count)?;
        let cpu = (cpu_secs(pid) - cpu0) / wall0.elapsed().as_secs_f64();
        // The in-kernel cost from the same loads again with the BPF statistics on (they add two
        // clock reads per program run, so the compared runs above go without them).
        let (trips, echo_progs, dd_progs) = {
            let _stats = bpf_stats::StatsEnabled::new()?;
            let before = bpf_stats::snapshot(pid);
            let (trips, _) = echo(secs)?;
            let echo_progs = progs_since(pid, &before);
            let before = bpf_stats::snapshot(pid);
            dd(count)?;
            (trips, echo_progs, progs_since(pid, &before))
        };
        let stopped = tracer.stop()?;

        eprintln!(
            "bench: non-target pair {}/{}: echo {a_echo:.0} -> {b_echo:.0} round trips/s, dd {a_dd:.3} -> {b_dd:.3} s, agent {:.2}% CPU, stop {:.2}s",
            i + 1,
            o.pairs,
            cpu * 100.0,
            stopped.secs
        );
        r.echo_ratio.push(b_echo / a_echo);
        r.echo_base.push(a_echo);
        r.echo_ns
            .push(progs_total(&echo_progs).run_ns as f64 / trips.max(1) as f64);
        r.echo_progs.push((echo_progs, trips));
        // Same bytes both times: time A / time B is B's throughput over A's.
        r.dd_ratio.push(a_dd / b_dd);
        r.dd_base.push(count as f64 / a_dd);
        r.dd_ns
            .push(progs_total(&dd_progs).run_ns as f64 / count as f64);
        r.dd_progs.push((dd_progs, count));
        r.agent_cpu.push(cpu * 100.0);
        r.stop_s.push(stopped.secs);
    }
    Ok(render(&r, target_port, secs, count))
}

fn render(r: &Results, port: u16, secs: u64, count: u64) -> String {
    let cmds = format!(
        "A: `cargo xtask echo-load --secs {secs}` then `{}`; B: the same while `slowtrace record \
         --port {port} -o DIR` traces the bench's nginx, idle meanwhile (started {} ms before, \
         SIGINT after both)",
        show(&dd_cmd(count)),
        SETTLE.as_millis()
    );
    let mut out = format!(
        "\n### Non-target cost: processes slowtrace does not trace\n\n{}\n{TABLE_HEAD}\n",
        provenance(&cmds)
    );
    let f0 = |x: f64| format!("{x:.0}");
    let f2 = |x: f64| format!("{x:.2}");
    let o = &mut out;
    let target = "≥ 99%";
    row(
        o,
        "echo round trips/s, traced elsewhere / untraced",
        &r.echo_ratio,
        pct,
        target,
    );
    row(o, "untraced echo round trips/s", &r.echo_base, f0, "");
    row(
        o,
        "in-kernel ns per echo round trip (all programs)",
        &r.echo_ns,
        f0,
        "",
    );
    row(
        o,
        "dd bs=1 throughput, traced elsewhere / untraced",
        &r.dd_ratio,
        pct,
        target,
    );
    row(
        o,
        "untraced dd bytes/s (2 syscalls per byte)",
        &r.dd_base,
        f0,
        "",
    );
    row(
        o,
        "in-kernel ns per dd byte (all programs)",
        &r.dd_ns,
        f2,
        "",
    );
    let cpu_name = "agent CPU while the non-target load ran (% of one core)";
    row(o, cpu_name, &r.agent_cpu, |x| format!("{x:.2}%"), "");
    row(
        o,
        "stop time after SIGINT, idle target (s)",
        &r.stop_s,
        f2,
        "≤ 0.5 s",
    );
    let _ = writeln!(
        out,
        "\nA round trip is two sends, two receives and two wake-ups by one process that is not \
         the target; every run of a program for it is the target check paying off as a no-op."
    );
    out += &prog_table(
        "In-kernel cost per BPF program: echo load (not a target)",
        "All runs during B's echo load.",
        "round trip",
        &r.echo_progs,
    );
    out += &prog_table(
        "In-kernel cost per BPF program: dd bs=1 (not a target)",
        "All runs during B's dd.",
        "byte",
        &r.dd_progs,
    );
    out
}

/// One echo-load run of `secs` seconds in its own process: (round trips, round trips/s).
fn echo(secs: u64) -> anyhow::Result<(u64, f64)> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let out = Command::new(exe)
        .args(["echo-load", "--secs", &secs.to_string()])
        .output()
        .context("running echo-load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    echo_load::parse(&text).with_context(|| {
        format!(
            "unexpected echo-load output:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn dd_cmd(count: u64) -> Command {
    let mut c = Command::new("dd");
    c.args([
        "if=/dev/zero",
        "of=/dev/null",
        "bs=1",
        &format!("count={count}"),
    ]);
    c
}

/// Seconds dd took to copy `count` single bytes, as dd itself measured it (without exec and
/// start-up).
fn dd(count: u64) -> anyhow::Result<f64> {
    // The C locale keeps the decimal point a point.
    let out = dd_cmd(count)
        .env("LC_ALL", "C")
        .output()
        .context("running dd")?;
    let text = String::from_utf8_lossy(&out.stderr);
    parse_dd_secs(&text).with_context(|| format!("unexpected dd output:\n{text}"))
}

/// The byte count that makes dd run about `secs` seconds here.
fn dd_count_for(secs: f64) -> anyhow::Result<u64> {
    const PROBE: u64 = 200_000;
    let t = dd(PROBE)?;
    let count = (PROBE as f64 * secs / t.max(1e-3)) as u64;
    // Round to thousands so the command in the docs reads well.
    Ok((count / 1000).max(1) * 1000)
}

/// "… bytes (…) copied, 1.234 s, 810 kB/s" → 1.234.
fn parse_dd_secs(stderr: &str) -> Option<f64> {
    let line = stderr.lines().find(|l| l.contains(" copied, "))?;
    let after = line.split_once(" copied, ")?.1;
    let (num, rest) = after.split_once(' ')?;
    rest.starts_with("s,").then_some(())?;
    num.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dd_stderr() {
        let t = "2000000+0 records in\n2000000+0 records out\n2000000 bytes (2.0 MB, 1.9 MiB) copied, 1.52384 s, 1.3 MB/s\n";
        assert_eq!(parse_dd_secs(t), Some(1.52384));
        assert_eq!(parse_dd_secs("dd: failed to open"), None);
    }
}
