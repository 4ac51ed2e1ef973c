//! The tracing agent shared by `record` and `top`: attach, then turn kernel records into
//! `AgentEvent`s for a consumer until told to stop.

use std::{
    collections::HashMap,
    process::Child,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::{Counter, EndReason, RequestRecord};

use crate::{
    capture::{
        watchdog::{Policy, Running, Watchdog},
        worker::{StackMaps, Worker},
    },
    config::Targets,
    events,
    model::{
        slow::{self, Killed, SlowRequest},
        Context, Request, Tracker,
    },
    probes::{preflight, tracefs, CaptureMaps, Probes},
    procfs::{self, LocalPorts},
};

/// How often user space looks at the connection map (idle keep-alive ends, dead processes,
/// in-flight requests).
pub const SCAN_EVERY: Duration = Duration::from_millis(250);

/// What the agent tells its consumer.
#[derive(Debug, Clone)]
pub enum AgentEvent {
    /// A finished request (or one still open at the end, `end == "in_flight"`).
    Request(Box<Request>),
    /// Every scan: the requests running right now, and the kernel counters so far.
    Tick {
        in_flight: Vec<Request>,
        counters: Counters,
    },
}

/// Kernel counters summed over CPUs, plus user-space losses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub kernel: HashMap<Counter, u64>,
    pub malformed: u64,
}

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.kernel.get(&c).copied().unwrap_or(0)
    }
}

/// Receives everything the agent produces. `record` writes files; `top` feeds the dashboard.
pub trait Consumer {
    fn on_event(&mut self, ev: AgentEvent) -> anyhow::Result<()>;

    /// A request that ran past the threshold (or was killed), with its captures. It has also been
    /// delivered as an ordinary `AgentEvent::Request`.
    fn on_slow(&mut self, _slow: &SlowRequest) -> anyhow::Result<()> {
        Ok(())
    }
}

/// dogslow from outside: capture requests that run longer than `threshold`.
#[derive(Debug, Clone, Copy)]
pub struct CaptureConfig {
    pub threshold: Duration,
    pub resample: Duration,
    pub max_captures: u32,
}

/// Settings the agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub targets: Targets,
    pub keep_query: bool,
    pub idle_flush: Duration,
    /// None: time requests only, no stack captures.
    pub capture: Option<CaptureConfig>,
}

/// The capture side of a running agent.
struct Capturing {
    watchdog: Watchdog,
    worker: Worker,
    watch: aya::maps::HashMap<MapData, u32, u8>,
    signals: aya::maps::HashMap<MapData, u32, tracer_common::SignalNote>,
    /// Slow requests that ended while a capture of them was still being taken: held back (not
    /// longer than `CLOSING_WAIT`) so a slow capture worker costs latency, not captures.
    closing: Vec<Closing>,
}

struct Closing {
    key: crate::capture::watchdog::RequestKey,
    slow: SlowRequest,
    pending: u32,
    deadline: std::time::Instant,
}

const CLOSING_WAIT: Duration = Duration::from_secs(5);

/// Why the agent stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Duration,
    CtrlC,
    Sigterm,
    CommandExited,
    Requested,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Duration => "--duration",
            Stop::CtrlC => "Ctrl-C",
            Stop::Sigterm => "SIGTERM",
            Stop::CommandExited => "the command exiting",
            Stop::Requested => "request",
        })
    }
}

/// An attached agent, ready to run.
pub struct Agent {
    probes: Probes,
    ring: Option<RingBuf<MapData>>,
    child: Option<Child>,
    ctx: Context,
    tracker: Tracker,
    ports: LocalPorts,
    malformed: u64,
    capturing: Option<Capturing>,
    /// Capture pieces that could not be attached (said once at start).
    pub degraded: Vec<String>,
    /// "pid 12, port 8000 (pids [..])" for the user.
    pub described: String,
    pub attach_mode: String,
}

/// Kernel monotonic clock, the one bpf_ktime_get_ns uses.
pub fn mono_ns() -> u64 {
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

impl Agent {
    /// Preflight, load, attach, register targets (launching the command if any).
    pub fn attach(cfg: &AgentConfig) -> anyhow::Result<Agent> {
        for note in preflight::check()? {
            eprintln!("slowtrace: note: {note}");
        }
        let (tracefs_path, mounted) = tracefs::ensure()?;
        if mounted {
            eprintln!("slowtrace: mounted tracefs at {}", tracefs_path.display());
        }
        let offsets = tracefs::offsets(&tracefs_path)?;
        let (mut probes, ring, maps) = Probes::load(offsets)?;
        let degraded = maps.degraded.clone();
        let capturing = match cfg.capture {
            Some(c) => Some(start_capture(c, maps)?),
            None => None,
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
        let attach_mode = probes.attach_mode.clone();
        Ok(Agent {
            probes,
            ring: Some(ring),
            child,
            ctx: Context {
                keep_query: cfg.keep_query,
                mono_to_unix_ns: mono_to_unix_ns(),
            },
            tracker: Tracker::new(cfg.idle_flush.as_nanos() as u64),
            ports: LocalPorts::default(),
            malformed: 0,
            capturing,
            degraded,
            described: described.join(", "),
            attach_mode,
        })
    }

    fn request(&mut self, r: &RequestRecord, end: EndReason, now_ns: u64) -> Request {
        let port = self.ports.get(r.tgid, r.listen_fd);
        Request::from_record(r, end, now_ns, port, &self.ctx)
    }

    /// Every finished request goes through here: to the consumer, and if it was slow or killed,
    /// with its captures.
    fn finish(
        &mut self,
        r: &RequestRecord,
        end: EndReason,
        now_ns: u64,
        out: &mut dyn Consumer,
    ) -> anyhow::Result<()> {
        let req = self.request(r, end, now_ns);
        let slow = self.capturing.as_mut().and_then(|c| c.finish(r, end, &req));
        out.on_event(AgentEvent::Request(Box::new(req)))?;
        match slow {
            Some(s) => out.on_slow(&s),
            None => Ok(()),
        }
    }

    fn plan_captures(&mut self, in_flight: &[RequestRecord], now_ns: u64) {
        let Some(c) = self.capturing.as_mut() else {
            return;
        };
        let running: Vec<Running> = in_flight
            .iter()
            .map(|r| Running {
                key: (r.tgid, r.conn_id, r.seq),
                pid: r.tgid,
                tid: r.tid,
                start_ns: r.start_ns,
            })
            .collect();
        c.collect();
        let plan = c.watchdog.plan(&running, now_ns);
        for tid in plan.watch {
            if let Err(e) = c.watch.insert(tid, 1, 0) {
                log::debug!("watching tid {tid}: {e}");
            }
        }
        for tid in plan.unwatch {
            let _ = c.watch.remove(&tid);
        }
        for job in plan.jobs {
            if !c.worker.submit(job) {
                c.watchdog.record(&job.key, Err(()));
            }
        }
    }

    fn counters(&self) -> Counters {
        Counters {
            kernel: self.probes.counters(),
            malformed: self.malformed,
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>, out: &mut dyn Consumer) -> anyhow::Result<()> {
        while let Some(item) = ring.next() {
            let decoded = events::decode(&item);
            drop(item);
            let rec = match decoded {
                Ok(rec) => rec,
                Err(e) => {
                    self.malformed += 1;
                    log::debug!("{e}");
                    continue;
                }
            };
            if self.tracker.accept(&rec) {
                self.finish(&rec, EndReason::from_u8(rec.end_reason), 0, out)?;
            }
        }
        Ok(())
    }

    fn scan(&mut self, out: &mut dyn Consumer) -> anyhow::Result<()> {
        let now = mono_ns();
        let scan = self.tracker.scan(self.probes.conns(), now, procfs::alive);
        for (rec, why) in &scan.finished {
            self.finish(rec, *why, now, out)?;
        }
        self.plan_captures(&scan.in_flight, now);
        let ready = self
            .capturing
            .as_mut()
            .map(|c| c.ready(false))
            .unwrap_or_default();
        for slow in &ready {
            out.on_slow(slow)?;
        }
        for key in &scan.dead {
            self.probes.forget_conn(key);
            self.ports.forget(key.tgid);
        }
        let in_flight = scan
            .in_flight
            .iter()
            .map(|r| self.request(r, EndReason::InFlight, now))
            .collect();
        out.on_event(AgentEvent::Tick {
            in_flight,
            counters: self.counters(),
        })
    }

    /// Run until `duration`, a signal, the launched command's exit or `stop` being set. At the
    /// end every open request is handed over too (quiet ones as `idle`, others as `in_flight`).
    pub fn run(
        mut self,
        out: &mut dyn Consumer,
        duration: Option<Duration>,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<Finished> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let ring = self.ring.take().context("the agent already ran")?;
        let why = runtime.block_on(self.event_loop(ring, out, duration, &stop))?;
        let now = mono_ns();
        for (r, end) in self.tracker.finish_all(self.probes.conns(), now) {
            self.finish(&r, end, now, out)?;
        }
        let held = self
            .capturing
            .as_mut()
            .map(Capturing::drain)
            .unwrap_or_default();
        for slow in &held {
            out.on_slow(slow)?;
        }
        let command_status = self.child.take().and_then(stop_child);
        Ok(Finished {
            stop: why,
            counters: self.counters(),
            command_status,
        })
    }

    async fn event_loop(
        &mut self,
        ring: RingBuf<MapData>,
        out: &mut dyn Consumer,
        duration: Option<Duration>,
        stop: &AtomicBool,
    ) -> anyhow::Result<Stop> {
        // SAFETY: the ring buffer owns its fd, open for as long as the AsyncFd lives.
        let mut ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
        let mut tick = tokio::time::interval(SCAN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = tokio::time::sleep(duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
        tokio::pin!(deadline);
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let why = loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    self.drain(guard.get_inner_mut(), out)?;
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    self.scan(out)?;
                    if stop.load(Ordering::Relaxed) {
                        break Stop::Requested;
                    }
                    if let Some(c) = self.child.as_mut() {
                        if c.try_wait()?.is_some() {
                            break Stop::CommandExited;
                        }
                    }
                }
                _ = &mut deadline => break Stop::Duration,
                _ = tokio::signal::ctrl_c() => break Stop::CtrlC,
                _ = sigterm.recv() => break Stop::Sigterm,
            }
        };
        // Records the kernel wrote before we stopped listening.
        self.drain(ring.get_mut(), out)?;
        self.scan(out)?;
        Ok(why)
    }
}

fn start_capture(c: CaptureConfig, maps: CaptureMaps) -> anyhow::Result<Capturing> {
    let CaptureMaps {
        watch,
        stacks,
        on_cpu,
        off_cpu,
        signals,
        degraded: _,
    } = maps;
    let worker = Worker::spawn(
        StackMaps {
            stacks,
            on_cpu,
            off_cpu,
        },
        mono_ns,
    )
    .context("starting the capture thread")?;
    let policy = Policy {
        threshold_ns: c.threshold.as_nanos() as u64,
        resample_ns: c.resample.as_nanos() as u64,
        max_captures: c.max_captures,
    };
    Ok(Capturing {
        watchdog: Watchdog::new(policy),
        worker,
        watch,
        signals,
        closing: Vec::new(),
    })
}

impl Capturing {
    /// Move finished captures from the worker to their requests.
    fn collect(&mut self) {
        let results: Vec<_> = self.worker.results().collect();
        for (key, res) in results {
            match self.closing.iter_mut().find(|c| c.key == key) {
                Some(c) => {
                    c.pending = c.pending.saturating_sub(1);
                    match res {
                        Ok(cap) => c.slow.captures.push(cap),
                        Err(()) => c.slow.captures_missed += 1,
                    }
                }
                None => self.watchdog.record(&key, res),
            }
        }
    }

    /// Held-back slow requests whose captures are all in (or that waited long enough; all of
    /// them when `all`).
    fn ready(&mut self, all: bool) -> Vec<SlowRequest> {
        self.collect();
        let now = std::time::Instant::now();
        let (done, keep): (Vec<Closing>, Vec<Closing>) = std::mem::take(&mut self.closing)
            .into_iter()
            .partition(|c| all || c.pending == 0 || now >= c.deadline);
        self.closing = keep;
        done.into_iter()
            .map(|mut c| {
                c.slow.captures.sort_by_key(|k| k.offset_ms);
                c.slow.captures_missed += c.pending;
                c.slow
            })
            .collect()
    }

    /// At exit: give outstanding captures a moment to come back.
    fn drain(&mut self) -> Vec<SlowRequest> {
        let start = std::time::Instant::now();
        while !self.closing.is_empty() && start.elapsed() < Duration::from_secs(2) {
            self.collect();
            if self.closing.iter().all(|c| c.pending == 0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.ready(true)
    }

    /// The slow-request record for `r`, if it was slow or killed.
    fn finish(&mut self, r: &RequestRecord, end: EndReason, req: &Request) -> Option<SlowRequest> {
        self.collect();
        let key = (r.tgid, r.conn_id, r.seq);
        let watched = self.watchdog.finish(&key);
        if let Some((w, true)) = &watched {
            let _ = self.watch.remove(&w.tid);
        }
        let killed = self.killed(r, end, req);
        let threshold_ms = self.watchdog.policy().threshold_ns / 1_000_000;
        if req.duration_us / 1000 < threshold_ms && killed.is_none() {
            return None;
        }
        let pending = watched.as_ref().map_or(0, |(w, _)| w.pending());
        let (captures, missed) = watched
            .map(|(w, _)| (w.captures, w.missed))
            .unwrap_or_default();
        let slow = SlowRequest {
            kind: if killed.is_some() { "killed" } else { "slow" },
            threshold_ms,
            request: req.clone(),
            killed,
            captures,
            captures_missed: missed,
        };
        if pending > 0 {
            self.closing.push(Closing {
                key,
                slow,
                pending,
                deadline: std::time::Instant::now() + CLOSING_WAIT,
            });
            return None;
        }
        Some(slow)
    }

    /// A fatal signal sent to the serving thread or process while the request ran, or the
    /// process dying with it open.
    fn killed(&mut self, r: &RequestRecord, end: EndReason, req: &Request) -> Option<Killed> {
        let died = end == EndReason::ProcessExit;
        let end_ns = r.start_ns + req.duration_us * 1000;
        let note = [r.tid, r.tgid]
            .iter()
            .filter_map(|t| self.signals.get(t, 0).ok())
            .filter(|n| {
                slow::is_fatal(n.sig) && n.ts >= r.start_ns && (died || n.ts <= end_ns + 1_000_000)
            })
            .max_by_key(|n| n.ts);
        match note {
            Some(n) => Some(Killed {
                signal: slow::signal_name(n.sig),
                signo: n.sig,
                sender_pid: n.sender,
                at_ms: (n.ts - r.start_ns) / 1_000_000,
                process_died: died,
            }),
            None if died => Some(Killed {
                signal: "none seen (process exited)".into(),
                signo: 0,
                sender_pid: 0,
                at_ms: req.duration_us / 1000,
                process_died: true,
            }),
            None => None,
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Finished {
    pub stop: Stop,
    pub counters: Counters,
    /// Exit code of the launched command, if there was one and it exited normally.
    pub command_status: Option<i32>,
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
