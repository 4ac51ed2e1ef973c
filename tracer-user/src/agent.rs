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
    config::Targets,
    events,
    model::{Context, Request, Tracker},
    probes::{preflight, tracefs, Probes},
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
}

/// Settings the agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub targets: Targets,
    pub keep_query: bool,
    pub idle_flush: Duration,
}

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
        let (mut probes, ring) = Probes::load(offsets)?;

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
            described: described.join(", "),
            attach_mode,
        })
    }

    fn request(&mut self, r: &RequestRecord, end: EndReason, now_ns: u64) -> Request {
        let port = self.ports.get(r.tgid, r.listen_fd);
        Request::from_record(r, end, now_ns, port, &self.ctx)
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
                let req = self.request(&rec, EndReason::from_u8(rec.end_reason), 0);
                out.on_event(AgentEvent::Request(Box::new(req)))?;
            }
        }
        Ok(())
    }

    fn scan(&mut self, out: &mut dyn Consumer) -> anyhow::Result<()> {
        let now = mono_ns();
        let scan = self.tracker.scan(self.probes.conns(), now, procfs::alive);
        for (rec, why) in &scan.finished {
            let req = self.request(rec, *why, now);
            out.on_event(AgentEvent::Request(Box::new(req)))?;
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
            let req = self.request(&r, end, now);
            out.on_event(AgentEvent::Request(Box::new(req)))?;
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
