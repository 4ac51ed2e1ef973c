//! `slowtrace record`: the agent's requests go to requests.jsonl and the summary table.

use std::{
    process::ExitCode,
    sync::{atomic::AtomicBool, Arc},
    time::Instant,
};

use anyhow::Context as _;
use tracer_common::Counter;

use crate::{
    agent::{Agent, AgentConfig, AgentEvent, Consumer, Counters},
    config::RecordConfig,
    model::{handler::HandlerCall, slow::SlowRequest, Stats},
    sinks::{findings::FindingsSink, jsonl::JsonlSink, slow::SlowSink, summary, Sink},
};

struct Recorder {
    stats: Stats,
    sink: JsonlSink,
    slow: Option<SlowSink>,
    /// `--handler` calls: handlers.jsonl and their own rows.
    handlers: Option<(JsonlSink, Stats)>,
    findings: FindingsSink,
}

impl Consumer for Recorder {
    fn on_event(&mut self, ev: AgentEvent) -> anyhow::Result<()> {
        match ev {
            AgentEvent::Request(req) => {
                self.stats.add(&req);
                self.findings.add(&req).context("writing findings.jsonl")?;
                self.sink.request(&req).context("writing requests.jsonl")
            }
            // The file is flushed on every scan, so a request is on disk within one period.
            AgentEvent::Tick { .. } => {
                if let Some(s) = self.slow.as_mut() {
                    s.flush().context("writing slow.jsonl")?;
                }
                if let Some((h, _)) = self.handlers.as_mut() {
                    h.flush().context("writing handlers.jsonl")?;
                }
                self.findings.flush().context("writing findings.jsonl")?;
                self.sink.flush().context("writing requests.jsonl")
            }
        }
    }

    fn on_handler(&mut self, call: &HandlerCall) -> anyhow::Result<()> {
        let Some((sink, stats)) = self.handlers.as_mut() else {
            return Ok(());
        };
        stats.sample(&call.handler, call.duration_us, false);
        sink.line(call).context("writing handlers.jsonl")
    }

    fn on_slow(&mut self, slow: &SlowRequest) -> anyhow::Result<()> {
        let Some(sink) = self.slow.as_mut() else {
            return Ok(());
        };
        let path = sink.write(slow).context("writing a slow-request report")?;
        let what = if slow.killed.is_some() {
            "killed"
        } else {
            "slow"
        };
        eprintln!(
            "slowtrace: {what} request {} {} ({}): {}",
            slow.request.endpoint,
            summary::human_us(slow.request.duration_us),
            slow.killed.as_ref().map_or_else(
                || format!("{} captures", slow.captures.len()),
                |k| k.signal.clone()
            ),
            path.display()
        );
        Ok(())
    }
}

pub fn run(cfg: RecordConfig) -> anyhow::Result<ExitCode> {
    let agent = Agent::attach(&AgentConfig {
        targets: cfg.targets.clone(),
        keep_query: cfg.keep_query,
        idle_flush: cfg.idle_flush,
        capture: cfg.capture,
        handlers: cfg.handlers.clone(),
        act: cfg.act,
        profile: cfg.profile.clone(),
        n_plus_one: cfg.n_plus_one,
    })?;
    for d in &agent.degraded {
        eprintln!("slowtrace: note: {d}");
    }
    let out = cfg.out_dir.join("requests.jsonl");
    let sink = JsonlSink::create(&out).with_context(|| format!("creating {}", out.display()))?;
    eprintln!(
        "slowtrace: tracing {} with {}; writing {}{}",
        agent.described,
        agent.attach_mode,
        out.display(),
        cfg.duration
            .map(|d| format!(" for {}", humantime::format_duration(d)))
            .unwrap_or_default(),
    );
    let slow = match cfg.capture {
        Some(_) => Some(SlowSink::create(&cfg.out_dir).context("creating slow.jsonl")?),
        None => None,
    };
    let handlers = if cfg.handlers.is_empty() {
        None
    } else {
        let path = cfg.out_dir.join("handlers.jsonl");
        let sink =
            JsonlSink::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Some((sink, Stats::default()))
    };
    let findings = FindingsSink::create(&cfg.out_dir).context("creating findings.jsonl")?;
    let mut rec = Recorder {
        findings,
        stats: Stats::default(),
        sink,
        slow,
        handlers,
    };
    let started = Instant::now();
    let done = agent.run(&mut rec, cfg.duration, Arc::new(AtomicBool::new(false)))?;
    let elapsed = started.elapsed();
    rec.sink.flush().context("writing requests.jsonl")?;

    let mut footer = vec![format!(
        "\nstopped by {}; {} records written to {}",
        done.stop,
        rec.sink.written,
        out.display()
    )];
    if let (Some(s), Some(c)) = (rec.slow.as_mut(), cfg.capture) {
        s.flush().context("writing slow.jsonl")?;
        footer.push(format!(
            "{} slow requests (over {}), {} killed with a request in flight; reports in {}",
            s.slow,
            humantime::format_duration(c.threshold),
            s.killed,
            cfg.out_dir.join("slow").display()
        ));
    }
    if let Some((h, stats)) = rec.handlers.as_mut() {
        h.flush().context("writing handlers.jsonl")?;
        footer.push(format!("\n{} handler calls (handlers.jsonl):", stats.total));
        footer.push(
            summary::table(&stats.rows(elapsed))
                .trim_end()
                .replacen("ENDPOINT", "HANDLER ", 1),
        );
    }
    rec.findings.flush().context("writing findings.jsonl")?;
    footer.extend(rec.findings.summary());
    footer.extend(downstream_report(&done.counters));
    if let Some(p) = &done.profile {
        footer.extend(profile_report(p, &done.counters));
    }
    footer.extend(loss_report(&done.counters));
    footer.extend(crate::reaper::STATS.report());
    print!("{}", summary::render(&rec.stats, elapsed, &footer));
    Ok(match done.command_status {
        Some(code) if code != 0 => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        _ => ExitCode::SUCCESS,
    })
}

/// Downstream tracking counters.
fn downstream_report(c: &Counters) -> Vec<String> {
    let (conns, calls) = (
        c.get(Counter::DownstreamConns),
        c.get(Counter::DownstreamCalls),
    );
    let lost = c.get(Counter::DownstreamRingFull) + c.get(Counter::DownstreamMapFull);
    let mut v = vec![format!(
        "downstream: {conns} connections opened by the targets, {calls} round trips"
    )];
    if lost > 0 {
        v.push(format!(
            "WARNING: {lost} downstream round trips or connections were not followed (ring or map full)"
        ));
    }
    v
}

/// What the profiler saw and wrote.
fn profile_report(p: &crate::profile::Report, c: &Counters) -> Vec<String> {
    let mut lines = vec![format!(
        "\nprofile: {} samples ({} off-CPU map full, {} sample ring drops, {} queue drops), {} \
         Python processes walked in the kernel, {} slow-request flamegraphs",
        p.samples,
        c.get(Counter::OffCpuMapFull),
        c.get(Counter::SampleRingFull),
        c.profile_overflow,
        p.python_procs,
        p.slow_svgs,
    )];
    let [ok, no_thread, failed, cut] = p.py_walks;
    if ok + no_thread + failed + cut > 0 {
        lines.push(format!(
            "python stacks walked in the kernel: {ok} complete, {cut} cut at 64 frames, {failed} \
             unreadable (memory paged out or changing), {no_thread} on threads running no Python"
        ));
    }
    if !p.files.is_empty() {
        let names: Vec<String> = p.files.iter().map(|f| f.display().to_string()).collect();
        lines.push(format!("flamegraphs: {}", names.join(", ")));
        for (what, top) in [("cpu", &p.top_cpu), ("wall µs", &p.top_wall)] {
            if !top.is_empty() {
                lines.push(format!("heaviest stacks ({what}):"));
                lines.extend(top.iter().take(5).map(|l| format!("  {}", tail(l, 3))));
            }
        }
    }
    lines.extend(p.errors.iter().map(|e| format!("WARNING: {e}")));
    lines
}

/// `endpoint;a;b;c;d N` → `N  endpoint … c;d`: the root and the innermost frames.
fn tail(folded: &str, keep: usize) -> String {
    let Some((stack, n)) = folded.rsplit_once(' ') else {
        return folded.to_owned();
    };
    let frames: Vec<&str> = stack.split(';').collect();
    let inner = frames.len().saturating_sub(keep).max(1);
    let skipped = if inner > 1 { " … " } else { " " };
    format!(
        "{n:>9}  {}{skipped}{}",
        frames[0],
        frames[inner..].join(" ← ").replace(" ← ", ";")
    )
}

/// The kernel counters for people, with a warning line when anything was lost.
pub fn loss_report(c: &Counters) -> Vec<String> {
    let dropped = c.get(Counter::RingFull);
    let mut lines = vec![format!(
        "kernel: {} events (requests and handler calls), {} dropped (ring buffer full), {} connections untracked \
         (map full), {} prefix read faults, {} tasks followed (forked processes and threads), {} port binds",
        c.get(Counter::Events),
        dropped,
        c.get(Counter::ConnMapFull),
        c.get(Counter::PrefixFault),
        c.get(Counter::Forks),
        c.get(Counter::PortBinds),
    )];
    if dropped > 0 || c.get(Counter::ArgsMapFull) > 0 || c.malformed > 0 {
        lines.push(format!(
            "WARNING: events were lost ({dropped} ring buffer, {} args map, {} malformed); \
             counts above are lower bounds",
            c.get(Counter::ArgsMapFull),
            c.malformed
        ));
    }
    lines
}
