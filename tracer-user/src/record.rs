//! `slowtrace record`: the agent's requests go to requests.jsonl and the summary table.

use std::{
    process::ExitCode,
    sync::{atomic::AtomicBool, Arc},
    time::{Instant, SystemTime},
};

use tracer_common::Counter;

use crate::{
    agent::{Agent, AgentEvent, Consumer, Counters},
    config::RecordConfig,
    model::{handler::HandlerCall, slow::SlowRequest, Endpoints},
    sinks::{files::Files, findings, flame, pprof, summary},
};

/// `record`'s outputs: the files, and the per-endpoint numbers of the exit summary.
struct Recorder {
    files: Files,
    stats: Endpoints,
    /// `--handler` calls: their own rows in the summary.
    handler_stats: Endpoints,
}

impl Recorder {
    /// A file given up (disk full, directory removed) is said once, as it happens; tracing
    /// goes on and the summary counts what was lost.
    fn warn(&mut self) {
        for w in self.files.take_warnings() {
            eprintln!("slowtrace: WARNING: {w}");
        }
    }
}

impl Consumer for Recorder {
    fn on_event(&mut self, ev: AgentEvent) -> anyhow::Result<()> {
        if let AgentEvent::Request(req) = &ev {
            self.stats.add(req);
        }
        self.files.on_event(ev)?;
        self.warn();
        Ok(())
    }

    fn on_handler(&mut self, call: &HandlerCall) -> anyhow::Result<()> {
        self.handler_stats
            .sample(&call.handler, call.duration_us, false);
        self.files.handler(call)?;
        self.warn();
        Ok(())
    }

    fn on_slow(&mut self, slow: &SlowRequest) -> anyhow::Result<()> {
        self.files.slow(slow)?;
        self.warn();
        let Some(path) = &self.files.last_report else {
            return Ok(());
        };
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
    let agent = Agent::attach(&cfg.agent)?;
    cfg.agent.targets.check_still_alive()?;
    for d in &agent.degraded {
        eprintln!("slowtrace: note: {d}");
    }
    let mut rec = Recorder {
        files: Files::create(
            &cfg.out_dir,
            cfg.agent.capture.is_some(),
            !cfg.agent.handlers.is_empty(),
        )?,
        stats: Endpoints::default(),
        handler_stats: Endpoints::default(),
    };
    // With --flamegraph each slow request gets its own flamegraph next to its report.
    let flame_dir = cfg.agent.profile.as_ref().and_then(|p| p.out_dir.clone());
    rec.files.slow_flamegraphs = flame_dir.is_some();
    let out = cfg.out_dir.join(crate::sinks::files::REQUESTS);
    eprintln!(
        "slowtrace: tracing {} with {}; writing {}{}",
        agent.described,
        agent.attach_mode,
        out.display(),
        cfg.duration
            .map(|d| format!(" for {}", humantime::format_duration(d)))
            .unwrap_or_default(),
    );
    let started = Instant::now();
    let started_at = SystemTime::now();
    let done = agent.run(&mut rec, cfg.duration, Arc::new(AtomicBool::new(false)))?;
    let elapsed = started.elapsed();
    rec.files.flush()?;
    rec.warn();

    let mut footer = vec![format!(
        "\nstopped by {}; {} records written to {}",
        done.stop,
        rec.files.requests.written,
        out.display()
    )];
    if let (Some(s), Some(c)) = (rec.files.slow.as_ref(), cfg.agent.capture) {
        footer.push(format!(
            "{} slow requests (over {}), {} killed with a request in flight; reports in {}",
            s.slow,
            humantime::format_duration(c.threshold),
            s.killed,
            cfg.out_dir.join("slow").display()
        ));
    }
    if rec.files.handlers.is_some() {
        let stats = &rec.handler_stats;
        footer.push(format!("\n{} handler calls (handlers.jsonl):", stats.total));
        footer.push(
            summary::table(&stats.rows(elapsed))
                .trim_end()
                .replacen("ENDPOINT", "HANDLER ", 1),
        );
    }
    footer.extend(findings::summary(
        &rec.stats,
        rec.files.findings.out.written,
    ));
    footer.extend(downstream_report(&done.counters));
    if let Some(p) = &done.profile {
        // The whole run's flamegraphs are written here, by the output, from the profile the
        // profiler thread handed back.
        let mut written = Vec::new();
        let mut exports = Vec::new();
        let mut errors = std::mem::take(&mut rec.files.errors);
        if let (Some(dir), Some(profile), Some(pc)) =
            (&flame_dir, &p.profile, cfg.agent.profile.as_ref())
        {
            match flame::write_all(dir, profile, pc.endpoint.as_ref(), pc.sample_hz) {
                Ok(w) => written = w.files,
                Err(e) => errors.push(format!("writing the flamegraphs: {e}")),
            }
        }
        if let (Some(path), Some(profile), Some(pc)) =
            (&cfg.pprof, &p.profile, cfg.agent.profile.as_ref())
        {
            match pprof::write_run(path, profile, pc, started_at, elapsed) {
                Ok(line) => exports.push(line),
                Err(e) => errors.push(format!("writing {}: {e}", path.display())),
            }
        }
        exports.extend(p.push.as_ref().map(crate::sinks::pyroscope::summary_line));
        footer.extend(profile_report(
            p,
            &done.counters,
            &written,
            rec.files.slow_svgs,
            &errors,
        ));
        footer.extend(exports);
    }
    footer.extend(loss_report(&done.counters));
    let lost = rec.files.losses();
    footer.extend(lost.iter().map(|l| format!("WARNING: output lost: {l}")));
    footer.extend(crate::reaper::STATS.report());
    print!("{}", summary::render(&rec.stats, elapsed, &footer));
    Ok(match done.command_status {
        Some(code) if code != 0 => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // The run went on to its end, but its files are incomplete: a script must not take
        // them for the whole run (docs/errors.md).
        _ if !lost.is_empty() => ExitCode::from(crate::exit::IOERR),
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
fn profile_report(
    p: &crate::profile::Report,
    c: &Counters,
    files: &[std::path::PathBuf],
    slow_svgs: u64,
    errors: &[String],
) -> Vec<String> {
    let mut lines = vec![format!(
        "\nprofile: {} samples ({} off-CPU map full, {} sample ring drops, {} queue drops, {} \
         requests' own samples dropped), {} Python processes walked in the kernel, {} \
         slow-request flamegraphs",
        p.samples,
        c.get(Counter::OffCpuMapFull),
        c.get(Counter::SampleRingFull),
        c.profile_overflow,
        p.dropped_requests,
        p.python_procs,
        slow_svgs,
    )];
    let [ok, no_thread, failed, cut] = p.py_walks;
    if ok + no_thread + failed + cut > 0 {
        lines.push(format!(
            "python stacks walked in the kernel: {ok} complete, {cut} cut at 64 frames, {failed} \
             unreadable (memory paged out or changing), {no_thread} on threads running no Python"
        ));
    }
    if !files.is_empty() {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        lines.push(format!("flamegraphs: {}", names.join(", ")));
        for (what, top) in [("cpu", &p.top_cpu), ("wall µs", &p.top_wall)] {
            if !top.is_empty() {
                lines.push(format!("heaviest stacks ({what}):"));
                lines.extend(top.iter().take(5).map(|l| format!("  {}", tail(l, 3))));
            }
        }
    }
    lines.extend(
        p.errors
            .iter()
            .chain(errors)
            .map(|e| format!("WARNING: {e}")),
    );
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
    lines.push(format!(
        "user space: {} malformed records, {} capture jobs dropped (capture thread busy), {} \
         profile samples dropped (profiler busy), {} downstream calls outside any request, {} \
         requests' downstream calls forgotten (too many open), {} fd numbers reused without a \
         close seen, {} socket transfers by io_uring or kernel callers not traced, {} targets \
         traced again after an exec",
        c.malformed,
        c.capture_overflow,
        c.profile_overflow,
        c.downstream_outside,
        c.downstream_dropped_requests,
        c.get(Counter::FdReused),
        c.get(Counter::SockOtherSyscall),
        c.retargeted,
    ));
    if dropped > 0 || c.get(Counter::ArgsMapFull) > 0 || c.malformed > 0 {
        lines.push(format!(
            "WARNING: events were lost ({dropped} ring buffer, {} args map, {} malformed); \
             counts above are lower bounds",
            c.get(Counter::ArgsMapFull),
            c.malformed
        ));
    }
    if c.capture_overflow + c.profile_overflow + c.downstream_dropped_requests > 0 {
        lines.push(
            "WARNING: captures, samples or downstream calls were dropped (see the line above)"
                .into(),
        );
    }
    lines
}
