//! `slowtrace agent`: the agent's requests go to the fleet outputs — the metrics store behind
//! `/metrics` and the OTLP exporter — and, with `--output`, to the same files as `record`. Runs
//! until SIGTERM or SIGINT (or `--duration`), printing a status line every `--log-every` and on
//! SIGUSR1.

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tracer_common::Counter;

use crate::{
    agent::{Agent, AgentEvent, Consumer},
    config::HeadlessConfig,
    model::{handler::HandlerCall, slow::SlowRequest},
    sinks::{
        files::Files,
        metrics::{ExportStats, FleetMetrics},
        otlp::OtlpSink,
        prometheus::MetricsServer,
    },
};

/// Set by the SIGUSR1 handler: print a status line now.
static STATUS_NOW: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigusr1(_: libc::c_int) {
    STATUS_NOW.store(true, Ordering::Relaxed);
}

/// How long the exporter may take to send what is queued at exit.
const EXPORT_GRACE: Duration = Duration::from_millis(1500);

struct Headless {
    metrics: Arc<FleetMetrics>,
    otlp: Option<OtlpSink>,
    files: Option<Files>,
    log_every: Duration,
    last_log: Instant,
    started: Instant,
}

impl Consumer for Headless {
    fn on_event(&mut self, ev: AgentEvent) -> anyhow::Result<()> {
        match &ev {
            AgentEvent::Request(req) => {
                self.metrics.request(req);
                if let Some(o) = &self.otlp {
                    o.request(req);
                }
            }
            AgentEvent::Tick { counters, .. } => {
                self.metrics.counters(counters);
                if STATUS_NOW.swap(false, Ordering::Relaxed)
                    || self.last_log.elapsed() >= self.log_every
                {
                    eprintln!("{}", self.status());
                    self.last_log = Instant::now();
                }
            }
        }
        match &mut self.files {
            Some(f) => f.on_event(ev)?,
            None => return Ok(()),
        }
        self.warn_files();
        Ok(())
    }

    fn on_slow(&mut self, slow: &SlowRequest) -> anyhow::Result<()> {
        self.metrics.slow(slow);
        if let Some(o) = &self.otlp {
            o.slow(slow);
        }
        match &mut self.files {
            Some(f) => f.slow(slow)?,
            None => return Ok(()),
        }
        self.warn_files();
        Ok(())
    }

    fn on_handler(&mut self, call: &HandlerCall) -> anyhow::Result<()> {
        match &mut self.files {
            Some(f) => f.handler(call)?,
            None => return Ok(()),
        }
        self.warn_files();
        Ok(())
    }
}

impl Headless {
    /// `-o DIR`: a file given up (disk full, directory removed) is said once, as in `record`;
    /// the agent goes on.
    fn warn_files(&mut self) {
        if let Some(f) = self.files.as_mut() {
            for w in f.take_warnings() {
                eprintln!("slowtrace: WARNING: {w}");
            }
        }
    }

    /// One line: what was seen, sent and dropped, and what the agent costs.
    fn status(&self) -> String {
        let (requests, counters) = self.metrics.totals();
        let c = &counters;
        let e = &self.metrics.export;
        let g = ExportStats::get;
        let me = crate::procfs::self_usage();
        let up = self.started.elapsed().as_secs_f64().max(1e-3);
        let mut line = format!(
            "slowtrace: status after {}: {requests} requests; spans {} sent, {} queued, {} sampled out, {} dropped (queue full), {} failed; losses: {} ring, {} maps, {} malformed, {} captures, {} samples; agent {:.1}% CPU, {} MB RSS",
            humantime::format_duration(Duration::from_secs(up as u64)),
            g(&e.spans_sent),
            g(&e.spans_queued),
            g(&e.spans_sampled_out),
            g(&e.spans_dropped),
            g(&e.spans_failed),
            c.get(Counter::RingFull) + c.get(Counter::DownstreamRingFull) + c.get(Counter::SampleRingFull),
            c.get(Counter::ConnMapFull) + c.get(Counter::DownstreamMapFull) + c.get(Counter::OffCpuMapFull),
            c.malformed,
            c.capture_overflow,
            c.profile_overflow,
            100.0 * me.cpu_secs / up,
            me.rss_bytes / (1 << 20),
        );
        let err = e.last_error();
        if !err.is_empty() {
            line.push_str(&format!("; last export error: {err}"));
        }
        line
    }
}

pub fn run(cfg: HeadlessConfig) -> anyhow::Result<ExitCode> {
    let metrics = Arc::new(FleetMetrics::new(
        cfg.max_endpoints,
        cfg.service_name.clone(),
    ));
    // Listeners and files first: a port in use fails before any probe is attached.
    let server = cfg
        .metrics_addr
        .map(|a| MetricsServer::start(a, metrics.clone()))
        .transpose()?;
    let files = match &cfg.output {
        Some(dir) => Some(Files::create(
            dir,
            cfg.agent.capture.is_some(),
            !cfg.agent.handlers.is_empty(),
        )?),
        None => None,
    };
    let agent = Agent::attach(&cfg.agent)?;
    // A --pid that exited while the programs were loading: say so rather than trace nothing.
    cfg.agent.targets.check_still_alive()?;
    for d in &agent.degraded {
        eprintln!("slowtrace: note: {d}");
    }
    let otlp = match cfg.otlp.clone() {
        Some(s) => Some(OtlpSink::start(
            s,
            cfg.sample_ratio,
            cfg.otlp_queue,
            metrics.clone(),
        )?),
        None => None,
    };
    let mut outputs = Vec::new();
    if let Some(s) = &server {
        outputs.push(format!("metrics at http://{}/metrics", s.addr));
    }
    if let Some(o) = &cfg.otlp {
        outputs.push(format!(
            "spans{} to {} ({}, {} of ordinary requests)",
            if o.metrics.is_some() {
                " and metrics"
            } else {
                ""
            },
            o.traces.url,
            o.traces.protocol.name(),
            ratio(cfg.sample_ratio),
        ));
    }
    if let Some(dir) = &cfg.output {
        outputs.push(format!("files in {}", dir.display()));
    }
    if outputs.is_empty() {
        outputs.push("no outputs (give --metrics-addr, --otlp-endpoint or --output)".into());
    }
    eprintln!(
        "slowtrace: agent tracing {} with {}; {}",
        agent.described,
        agent.attach_mode,
        outputs.join("; ")
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGUSR1,
            on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let mut out = Headless {
        metrics,
        otlp,
        files,
        log_every: cfg.log_every,
        last_log: Instant::now(),
        started: Instant::now(),
    };
    let started_at = std::time::SystemTime::now();
    let done = agent.run(&mut out, cfg.duration, Arc::new(AtomicBool::new(false)))?;
    if let Some(p) = &done.profile {
        if let (Some(path), Some(profile), Some(pc)) =
            (&cfg.pprof, &p.profile, cfg.agent.profile.as_ref())
        {
            match crate::sinks::pprof::write_run(
                path,
                profile,
                pc,
                started_at,
                out.started.elapsed(),
            ) {
                Ok(line) => eprintln!("slowtrace: {line}"),
                Err(e) => eprintln!("slowtrace: WARNING: writing {}: {e}", path.display()),
            }
        }
        if let Some(r) = &p.push {
            eprintln!("slowtrace: {}", crate::sinks::pyroscope::summary_line(r));
        }
    }
    out.metrics.counters(&done.counters);
    if let Some(f) = out.files.as_mut() {
        f.flush()?;
    }
    out.warn_files();
    let lost = out.files.as_ref().map(Files::losses).unwrap_or_default();
    for l in &lost {
        eprintln!("slowtrace: WARNING: output lost: {l}");
    }
    if let Some(o) = out.otlp.take() {
        o.finish(EXPORT_GRACE);
    }
    eprintln!("{}", out.status());
    eprintln!("slowtrace: agent stopped by {}", done.stop);
    drop(server);
    // As `record`: the files are incomplete, and a script must not take them for the whole run.
    Ok(if lost.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::IOERR)
    })
}

fn ratio(r: f64) -> String {
    format!("{}%", (r * 1000.0).round() / 10.0)
}
