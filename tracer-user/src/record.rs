//! `slowtrace record`: probes → events → model → sinks, until told to stop.

use std::{
    process::{Child, ExitCode},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::{Counter, EndReason, RequestRecord};

use crate::{
    config::RecordConfig,
    events,
    model::{Context, Request, Stats, Tracker},
    probes::{preflight, tracefs, Probes},
    procfs::{self, LocalPorts},
    sinks::{jsonl::JsonlSink, summary, Sink},
};

/// How often user space looks at the connection map (idle keep-alive ends, dead processes).
const SCAN_EVERY: Duration = Duration::from_millis(250);

/// Kernel monotonic clock, the one bpf_ktime_get_ns uses.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn mono_to_unix_ns() -> i128 {
    let mono = i128::from(mono_ns());
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    unix - mono
}

/// The agent's state while recording.
struct Recorder {
    ctx: Context,
    tracker: Tracker,
    ports: LocalPorts,
    stats: Stats,
    sink: JsonlSink,
    bad_records: u64,
}

impl Recorder {
    fn finish(&mut self, r: &RequestRecord, end: EndReason, now_ns: u64) -> anyhow::Result<()> {
        let port = self.ports.get(r.tgid, r.listen_fd);
        let req = Request::from_record(r, end, now_ns, port, &self.ctx);
        self.stats.add(&req);
        self.sink.request(&req).context("writing requests.jsonl")
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        while let Some(item) = ring.next() {
            let rec = match events::decode(&item) {
                Ok(rec) => rec,
                Err(e) => {
                    self.bad_records += 1;
                    log::debug!("{e}");
                    continue;
                }
            };
            drop(item);
            if self.tracker.accept(&rec) {
                let end = EndReason::from_u8(rec.end_reason);
                self.finish(&rec, end, 0)?;
            }
        }
        Ok(())
    }

    fn scan(&mut self, probes: &mut Probes) -> anyhow::Result<()> {
        let now = mono_ns();
        let scan = self.tracker.scan(probes.conns(), now, procfs::alive);
        for (rec, why) in &scan.finished {
            self.finish(rec, *why, now)?;
        }
        for key in &scan.dead {
            probes.forget_conn(key);
            self.ports.forget(key.tgid);
        }
        self.sink.flush().context("writing requests.jsonl")
    }
}

pub fn run(cfg: RecordConfig) -> anyhow::Result<ExitCode> {
    for note in preflight::check()? {
        eprintln!("slowtrace: note: {note}");
    }
    let (tracefs_path, mounted) = tracefs::ensure()?;
    if mounted {
        eprintln!("slowtrace: mounted tracefs at {}", tracefs_path.display());
    }
    let offsets = tracefs::offsets(&tracefs_path)?;
    let (mut probes, ring) = Probes::load(offsets)?;

    let out = cfg.out_dir.join("requests.jsonl");
    let sink = JsonlSink::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut rec = Recorder {
        ctx: Context {
            keep_query: cfg.keep_query,
            mono_to_unix_ns: mono_to_unix_ns(),
        },
        tracker: Tracker::new(cfg.idle_flush.as_nanos() as u64),
        ports: LocalPorts::default(),
        stats: Stats::default(),
        sink,
        bad_records: 0,
    };

    let mut described = Vec::new();
    for &pid in &cfg.targets.pids {
        probes.add_target(pid)?;
        described.push(format!("pid {pid}"));
    }
    for &port in &cfg.targets.ports {
        probes.watch_port(port)?;
        let pids = procfs::listeners(port);
        if pids.is_empty() {
            eprintln!(
                "slowtrace: nothing listens on TCP port {port} yet; tracing whoever binds it"
            );
        }
        for pid in &pids {
            probes.add_target(*pid)?;
        }
        described.push(format!("port {port} (pids {pids:?})"));
    }
    let child = match &cfg.targets.command {
        None => None,
        Some((prog, args)) => {
            let targets = &mut probes;
            let child = crate::launch::spawn_registered(prog, args, |pid| {
                targets.add_target(pid).map_err(Into::into)
            })?;
            described.push(format!("command {} (pid {})", prog.display(), child.id()));
            Some(child)
        }
    };
    eprintln!(
        "slowtrace: tracing {} with {}; writing {}{}",
        described.join(", "),
        probes.attach_mode,
        out.display(),
        cfg.duration
            .map(|d| format!(" for {}", humantime::format_duration(d)))
            .unwrap_or_default(),
    );

    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (stopped_by, child) =
        runtime.block_on(event_loop(&mut rec, &mut probes, ring, cfg.duration, child))?;
    let elapsed = started.elapsed();

    // Whatever is still open is either done (quiet) or in flight: reported, never dropped.
    let now = mono_ns();
    for (r, why) in rec.tracker.finish_all(probes.conns(), now) {
        rec.finish(&r, why, now)?;
    }
    rec.sink.flush().context("writing requests.jsonl")?;
    let status = child.map(stop_child);

    let counters = probes.counters();
    let dropped = counters[&Counter::RingFull];
    let mut footer = vec![format!(
        "\nstopped by {stopped_by}; {} records written to {}",
        rec.sink.written,
        out.display()
    )];
    footer.push(format!(
        "kernel: {} request events, {} dropped (ring buffer full), {} connections untracked (map full), \
         {} prefix read faults, {} forks followed, {} port binds",
        counters[&Counter::Events],
        dropped,
        counters[&Counter::ConnMapFull],
        counters[&Counter::PrefixFault],
        counters[&Counter::Forks],
        counters[&Counter::PortBinds],
    ));
    if dropped > 0 || counters[&Counter::ArgsMapFull] > 0 || rec.bad_records > 0 {
        footer.push(format!(
            "WARNING: events were lost ({dropped} ring buffer, {} args map, {} malformed); \
             counts above are lower bounds",
            counters[&Counter::ArgsMapFull],
            rec.bad_records
        ));
    }
    print!("{}", summary::render(&rec.stats, elapsed, &footer));
    Ok(match status {
        Some(Some(code)) if code != 0 => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        _ => ExitCode::SUCCESS,
    })
}

/// What ended the recording.
async fn event_loop(
    rec: &mut Recorder,
    probes: &mut Probes,
    ring: RingBuf<MapData>,
    duration: Option<Duration>,
    child: Option<Child>,
) -> anyhow::Result<(&'static str, Option<Child>)> {
    // SAFETY: the ring buffer owns its fd and it stays open for as long as the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let mut tick = tokio::time::interval(SCAN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut child = child;
    let why = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                rec.drain(guard.get_inner_mut())?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                rec.scan(probes)?;
                if let Some(c) = child.as_mut() {
                    if c.try_wait()?.is_some() {
                        break "the command exiting";
                    }
                }
            }
            _ = &mut deadline => break "--duration",
            _ = tokio::signal::ctrl_c() => break "Ctrl-C",
            _ = sigterm.recv() => break "SIGTERM",
        }
    };
    // Records the kernel wrote before we stopped listening.
    rec.drain(ring.get_mut())?;
    rec.scan(probes)?;
    Ok((why, child))
}

/// A command we launched: if it still runs, ask it to stop (we started it), then reap it.
fn stop_child(mut child: Child) -> Option<i32> {
    if let Ok(Some(status)) = child.try_wait() {
        return status.code();
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for _ in 0..50 {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait().ok().and_then(|s| s.code())
}
