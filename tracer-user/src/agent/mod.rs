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
use std::os::fd::OwnedFd;
use tokio::io::unix::AsyncFd;
use tracer_common::{Counter, EndReason, RequestRecord};

mod capturing;
mod explain;
mod profiles;
mod reaper;
mod retarget;

use capturing::{start_capture, Capturing, Finish};

use crate::{
    act::{self, Actor},
    capture::watchdog::Running,
    config::{AgentConfig, CaptureConfig, SCAN_EVERY},
    handlers::Handler,
    model::{
        downstream::{calls::CallTracker, findings::Thresholds},
        handler::HandlerCall,
        slow::SlowRequest,
        Context, Request, Tracker,
    },
    probes::{
        kernel::{AyaKernel, Kernel},
        preflight, tracefs, Probes, ProfileSettings,
    },
    procfs::{self, LocalPorts},
    profile::Profiler,
};

/// How often the ring buffers are drained without a wakeup from the kernel. Short, so that a
/// busy server's records come in small batches: at 70k requests/s a 50 ms drain was a burst of
/// ~8 ms of agent CPU that the server and its clients waited behind (their p99).
const DRAIN_EVERY: Duration = Duration::from_millis(10);

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
    /// Profiling samples the profiler thread could not keep up with.
    pub profile_overflow: u64,
    /// Capture jobs dropped because the capture thread's queue was full.
    pub capture_overflow: u64,
    /// Downstream calls made outside any request (start-up, background threads): not kept.
    pub downstream_outside: u64,
    /// Requests whose downstream calls were forgotten (too many requests open at once).
    pub downstream_dropped_requests: u64,
    /// Explicit targets the kernel had unmarked while they lived on (an exec): marked again.
    pub retargeted: u64,
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

    /// Every scan while profiling: the frames with the most on-CPU samples so far.
    fn on_profile(&mut self, _hot: &[crate::model::profile::HotFrame]) -> anyhow::Result<()> {
        Ok(())
    }

    /// A call of a `--handler` function returned.
    fn on_handler(&mut self, _call: &HandlerCall) -> anyhow::Result<()> {
        Ok(())
    }
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
    kernel: Box<dyn Kernel>,
    child: Option<Child>,
    ctx: Context,
    tracker: Tracker,
    ports: LocalPorts,
    malformed: u64,
    capturing: Option<Capturing>,
    handlers: Vec<Handler>,
    actor: Option<Actor>,
    profiler: Option<Profiler>,
    /// Slow requests waiting for their own samples from the profiler thread.
    awaiting: Vec<profiles::Awaiting>,
    calls: CallTracker,
    thresholds: Thresholds,
    /// Requests carry their round trips one by one (`Request::round_trips`).
    keep_round_trips: bool,
    /// Requests in flight at the last scan that have not ended since: what the deadline timer
    /// captures and signals between scans.
    open: Vec<RequestRecord>,
    /// When a capture or a signal is next due (kernel monotonic ns).
    due_ns: Option<u64>,
    /// When requests were last looked for (the scan, or `discover`).
    seen_ns: u64,
    /// The cgroup (and container) of each process that served a request.
    cgroup_labels: crate::procfs::cgroup::Labels,
    /// `--cgroup`/`--container`: cgroups created and processes arriving after attach.
    cgroup_watch: crate::procfs::cgroup::Watch,
    /// Capture pieces that could not be attached (said once at start).
    pub degraded: Vec<String>,
    /// "pid 12, port 8000 (pids [..])" for the user.
    pub described: String,
    pub attach_mode: String,
    /// `--pid` targets and the launched command, marked again if the kernel forgets them.
    retarget: retarget::Retarget,
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
        let settings = cfg
            .profile
            .as_ref()
            .map(|p| ProfileSettings {
                sample_hz: p.sample_hz,
                off_cpu: p.wall,
            })
            .unwrap_or_default();
        let (mut probes, ring, maps, profile_maps) =
            Probes::load(&tracefs_path, offsets, settings)?;
        // One stack resolver (symbols, Python readers) for the profiler and the captures.
        let py_procs = cfg.profile.as_ref().map(|_| profile_maps.py_procs);
        let stacks =
            crate::symbols::Stacks::spawn(py_procs).context("starting the stack resolver")?;
        let mut profiler = match &cfg.profile {
            Some(p) => Some(
                Profiler::spawn(p.clone(), stacks.clone())
                    .context("starting the profiler thread")?,
            ),
            None => None,
        };
        let samples_ring = profiler.as_ref().map(|_| profile_maps.samples);
        let degraded = maps.degraded.clone();
        let (watch, signals) = (maps.watch, maps.signals);
        let capturing = match cfg.capture {
            Some(c) => Some(start_capture(c, maps.stack_maps, stacks.clone())?),
            None => None,
        };

        let mut described = Vec::new();
        let mut known = Vec::new();
        for &pid in &cfg.targets.pids {
            probes.add_target(pid)?;
            known.push(pid);
            // On the socket path, connections to the ports it listens on are its requests.
            for port in procfs::listening_ports(pid) {
                probes.serve_port(port)?;
            }
            // Children forked before attach (a gunicorn master's workers) are targets too;
            // later forks are followed in the kernel.
            for child in procfs::descendants(pid) {
                probes.add_target(child)?;
                if let Some(p) = profiler.as_mut() {
                    p.probe(child);
                }
            }
            if let Some(p) = profiler.as_mut() {
                p.probe(pid);
            }
            described.push(format!("pid {pid}"));
        }
        for &port in &cfg.targets.ports {
            probes.watch_port(port)?;
            probes.serve_port(port)?;
            let pids = procfs::listeners(port);
            if pids.is_empty() {
                eprintln!(
                    "slowtrace: nothing listens on TCP port {port} yet; tracing whoever binds it"
                );
            }
            for pid in &pids {
                probes.add_target(*pid)?;
                if let Some(p) = profiler.as_mut() {
                    p.probe(*pid);
                }
            }
            known.extend(&pids);
            described.push(format!("port {port} (pids {pids:?})"));
        }
        let mut cgroup_watch = crate::procfs::cgroup::Watch::new(cfg.targets.cgroups.clone());
        if !cgroup_watch.is_empty() {
            // The kernel catches later arrivals once it knows the ids; what is there now is
            // marked here. A process that moves in between this listing and its cgroup's id
            // reaching the kernel is found by the next poll, a second later.
            probes.attach_cgroup_programs()?;
            let found = cgroup_watch.poll();
            for &id in &found.new_ids {
                probes.add_target_cgroup(id)?;
            }
            for &pid in &found.new_pids {
                probes.add_cgroup_member(pid)?;
                for port in procfs::listening_ports(pid) {
                    probes.serve_port(port)?;
                }
                if let Some(p) = profiler.as_mut() {
                    p.probe(pid);
                }
            }
            known.extend(&found.new_pids);
            let paths: Vec<&str> = cfg
                .targets
                .cgroups
                .iter()
                .map(|c| c.path.as_str())
                .collect();
            described.push(format!(
                "cgroup {} (pids {:?})",
                paths.join(" "),
                found.new_pids
            ));
        }
        // Refuse before anything is launched when a running target would die of the signal.
        if let Some(a) = &cfg.act {
            for (_, sig) in [a.interrupt, a.dump].into_iter().flatten() {
                act::check_catches(&known, sig, a.force)?;
            }
        }
        let child = match &cfg.targets.command {
            None => None,
            Some((prog, args)) => {
                let targets = &mut probes;
                let output = cfg.command_output.as_deref();
                let child = crate::launch::spawn_registered(prog, args, output, |pid| {
                    targets.add_target(pid).map_err(Into::into)
                })?;
                described.push(format!("command {} (pid {})", prog.display(), child.id()));
                Some(child)
            }
        };
        let handler_ring = if cfg.handlers.is_empty() {
            None
        } else {
            probes.attach_handlers(&cfg.handlers)?;
            described.push(format!("{} handler functions", cfg.handlers.len()));
            probes.handler_events.take()
        };
        let attach_mode = probes.attach_mode.clone();
        let kernel = AyaKernel {
            probes,
            requests: ring,
            downstream: profile_maps.downstream,
            samples: samples_ring,
            handlers: handler_ring,
            watch: Some(watch),
            signals: Some(signals),
        };
        let mut agent = Agent::assemble(Box::new(kernel), cfg, capturing, profiler);
        agent.cgroup_watch = cgroup_watch;
        agent.retarget.stacks = Some(stacks);
        for &pid in &cfg.targets.pids {
            agent.retarget.add(pid);
        }
        if let Some(c) = &child {
            agent.retarget.add(c.id());
        }
        agent.child = child;
        agent.degraded = degraded;
        agent.described = described.join(", ");
        agent.attach_mode = attach_mode;
        Ok(agent)
    }

    /// An agent on `kernel`, with no command launched: what `attach` builds on, and what the
    /// unit tests drive with a fake kernel.
    fn assemble(
        kernel: Box<dyn Kernel>,
        cfg: &AgentConfig,
        capturing: Option<Capturing>,
        profiler: Option<Profiler>,
    ) -> Agent {
        Agent {
            kernel,
            child: None,
            ctx: Context {
                keep_query: cfg.keep_query,
                mono_to_unix_ns: mono_to_unix_ns(),
            },
            tracker: Tracker::new(cfg.idle_flush.as_nanos() as u64),
            ports: LocalPorts::default(),
            malformed: 0,
            capturing,
            handlers: cfg.handlers.clone(),
            actor: cfg.act.map(Actor::new),
            profiler,
            awaiting: Vec::new(),
            calls: CallTracker::default(),
            thresholds: Thresholds {
                n_plus_one: cfg.n_plus_one,
                ..Thresholds::default()
            },
            keep_round_trips: cfg.keep_round_trips,
            open: Vec::new(),
            due_ns: None,
            seen_ns: 0,
            cgroup_labels: crate::procfs::cgroup::Labels::default(),
            cgroup_watch: crate::procfs::cgroup::Watch::new(Vec::new()),
            degraded: Vec::new(),
            described: String::new(),
            attach_mode: String::new(),
            retarget: retarget::Retarget::default(),
        }
    }

    fn request(&mut self, r: &RequestRecord, end: EndReason, now_ns: u64) -> Request {
        let port = match r.local_port {
            0 => self.ports.get(r.tgid, r.listen_fd),
            p => Some(p),
        };
        let mut req = Request::from_record(r, end, now_ns, port, &self.ctx);
        if let Some(l) = self.cgroup_labels.get(r.tgid) {
            req.cgroup = Some(l.cgroup.clone());
            req.container.clone_from(&l.container);
        }
        req
    }

    /// Every finished request goes through here: enriched (breakdown, downstream calls,
    /// findings, signals, captures and the app frame that made the calls), then handed out once.
    /// A slow request whose captures are still being taken is held back and handed out when
    /// they are in (`release`), so every output sees the same complete request.
    fn finish(
        &mut self,
        r: &RequestRecord,
        end: EndReason,
        now_ns: u64,
        out: &mut dyn Consumer,
    ) -> anyhow::Result<()> {
        let key = (r.tgid, r.conn_id, r.seq);
        if !self.open.is_empty() {
            self.open.retain(|o| (o.tgid, o.conn_id, o.seq) != key);
        }
        let mut req = self.request(r, end, now_ns);
        if let Some(a) = self.actor.as_mut() {
            req.signals = a.finish(&key);
        }
        self.explain(r, end, &mut req);
        match self.capturing.as_mut() {
            None => self.hand_out(key, Box::new(req), None, out),
            Some(c) => match c.finish(self.kernel.as_mut(), r, end, req) {
                Finish::Now(req, slow) => self.hand_out(key, req, slow.map(|s| *s), out),
                Finish::Held => Ok(()),
            },
        }
    }

    /// Held-back slow requests whose captures came in (all of them when `all`).
    fn release(&mut self, all: bool, out: &mut dyn Consumer) -> anyhow::Result<()> {
        let ready = match self.capturing.as_mut() {
            Some(c) if all => c.drain(),
            Some(c) => c.ready(false),
            None => Vec::new(),
        };
        for (key, slow) in ready {
            self.hand_out(key, Box::new(slow.request.clone()), Some(slow), out)?;
        }
        Ok(())
    }

    /// The one place a finished request leaves the agent.
    fn hand_out(
        &mut self,
        key: crate::capture::watchdog::RequestKey,
        mut req: Box<Request>,
        mut slow: Option<SlowRequest>,
        out: &mut dyn Consumer,
    ) -> anyhow::Result<()> {
        if let Some(s) = slow.as_mut() {
            let site = crate::model::downstream::calls::app_site(&s.captures);
            for d in [req.downstream.as_mut(), s.request.downstream.as_mut()]
                .into_iter()
                .flatten()
            {
                d.site.clone_from(&site);
            }
        }
        // A request past the threshold takes its own samples along, for its flamegraph: it goes
        // out when the profiler thread has handed them back (`profiles_in`).
        let over = self
            .capturing
            .as_ref()
            .is_some_and(|c| req.duration_us >= c.threshold_us());
        match (slow, self.profiler.as_mut()) {
            (Some(s), Some(_)) if over => self.await_profile(key, req, s, out),
            (slow, p) => {
                if let Some(p) = p {
                    p.request_done(key);
                }
                self.emit(req, slow, out)
            }
        }
    }

    /// Out to the consumer: the request, then its slow record.
    fn emit(
        &mut self,
        mut req: Box<Request>,
        slow: Option<SlowRequest>,
        out: &mut dyn Consumer,
    ) -> anyhow::Result<()> {
        req.reported_slow = slow.is_some();
        out.on_event(AgentEvent::Request(req))?;
        match slow {
            Some(s) => out.on_slow(&s),
            None => Ok(()),
        }
    }

    /// `--interrupt-after` / `--dump-signal`: signal the serving thread once per request.
    fn act(&mut self, in_flight: &[RequestRecord], now_ns: u64) {
        let Some(actor) = self.actor.as_mut() else {
            return;
        };
        let running = act_running(in_flight);
        for (_, pid, tid, sig, why) in actor.due(&running, now_ns, act::catches) {
            match act::send(pid, tid, sig) {
                Ok(()) => log::info!("sent signal {sig} ({why}) to pid {pid} tid {tid}"),
                Err(e) => eprintln!("slowtrace: sending signal {sig} to {pid}/{tid}: {e}"),
            }
        }
    }

    /// Handler calls from the kernel, each with its enclosing request when known.
    fn drain_handlers(&mut self, out: &mut dyn Consumer) -> anyhow::Result<()> {
        while let Some(rec) = self.kernel.next_handler_call() {
            let Ok(rec) = rec else {
                self.malformed += 1;
                continue;
            };
            let Some(h) = self.handlers.get(rec.handler as usize) else {
                self.malformed += 1;
                continue;
            };
            let n = (rec.req_len as usize).min(rec.req.len());
            let prefix = (n > 0).then(|| &rec.req[..n]);
            let mut call = HandlerCall::from_record(&rec, h, prefix, &self.ctx);
            if let (Some(c), 0) = (self.capturing.as_mut(), rec.depth) {
                call.captures = c.finish_handler(
                    self.kernel.as_mut(),
                    handler_key(rec.tgid, rec.start_ns, rec.handler),
                    call.duration_us,
                );
            }
            out.on_handler(&call)?;
        }
        Ok(())
    }

    fn plan_captures(&mut self, in_flight: &[RequestRecord], now_ns: u64) {
        let Some(c) = self.capturing.as_mut() else {
            return;
        };
        let mut running = running(in_flight);
        // Outermost handler calls in progress are watched like requests.
        if !self.handlers.is_empty() {
            running.extend(
                self.kernel
                    .handler_stacks()
                    .into_iter()
                    .filter(|(_, st)| st.depth > 0)
                    .map(|(tid, st)| Running {
                        key: handler_key(st.tgid, st.start_ns[0], st.handler[0]),
                        pid: st.tgid,
                        tid,
                        start_ns: st.start_ns[0],
                    }),
            );
        }
        c.collect();
        let plan = c.watchdog.plan(&running, now_ns);
        for tid in plan.watch {
            self.kernel.watch(tid, true);
        }
        for tid in plan.unwatch {
            self.kernel.watch(tid, false);
        }
        for job in plan.jobs {
            if !c.worker.submit(job) {
                c.watchdog.record(&job.key, Err(()));
            }
        }
    }

    /// A capture or signal is due: act on the requests open at the last scan (those that
    /// ended since are drained first, so they are not captured after their end).
    fn on_deadline(&mut self, out: &mut dyn Consumer) -> anyhow::Result<()> {
        self.drain_side();
        self.drain(out)?;
        // Likewise handler calls: a call that returned since is no longer on its thread's handler
        // stack, and planning would take it for lost and drop its captures before its record
        // collects them.
        self.drain_handlers(out)?;
        let now = mono_ns();
        let open = std::mem::take(&mut self.open);
        self.act(&open, now);
        self.plan_captures(&open, now);
        self.open = open;
        self.schedule(now);
        Ok(())
    }

    /// How often requests must be looked for so that none passes a capture or signal deadline
    /// more than ~20 ms before it is seen: the scan is enough for deadlines past
    /// `SCAN_EVERY` + 20 ms (`--threshold 300ms`); a shorter one needs `discover` in between.
    fn discover_every(&self) -> Option<u64> {
        let margin = Duration::from_millis(20);
        let capture = self.capturing.as_ref().map(|c| c.threshold_us() * 1000);
        let signals = self.actor.as_ref().map_or(Vec::new(), |a| {
            let p = a.policy();
            [p.interrupt, p.dump]
                .into_iter()
                .flatten()
                .map(|(after, _)| after.as_nanos() as u64)
                .collect()
        });
        let first = capture.into_iter().chain(signals).min()?;
        let every = first.saturating_sub(margin.as_nanos() as u64);
        (every < SCAN_EVERY.as_nanos() as u64).then(|| every.max(DRAIN_EVERY.as_nanos() as u64))
    }

    /// Between scans, with a deadline shorter than the scan period: requests that started since
    /// requests were last looked for join the open ones, so the deadline timer covers them.
    fn discover(&mut self, now: u64) {
        let Some(every) = self.discover_every() else {
            return;
        };
        if now < self.seen_ns + every {
            return;
        }
        // Only requests newer than the last look: older ones were seen then, and some of those
        // the scan has since ended itself (idle), which the kernel's map does not know.
        let since = self.seen_ns;
        self.seen_ns = now;
        let fresh: Vec<RequestRecord> = self
            .kernel
            .conns()
            .into_iter()
            .filter(|(_, c)| c.phase() != tracer_common::Phase::Idle && c.rec.start_ns > since)
            .map(|(_, c)| c.rec)
            .filter(|r| {
                !self
                    .open
                    .iter()
                    .any(|o| (o.tgid, o.conn_id, o.seq) == (r.tgid, r.conn_id, r.seq))
            })
            .collect();
        if !fresh.is_empty() {
            self.open.extend(fresh);
            self.schedule(now);
        }
    }

    /// Set the deadline timer to the next capture or signal due among the open requests.
    fn schedule(&mut self, now: u64) {
        let capture = self
            .capturing
            .as_ref()
            .and_then(|c| c.watchdog.next_due(&running(&self.open)));
        let signal = self
            .actor
            .as_ref()
            .and_then(|a| a.next_due(&act_running(&self.open)));
        // A deadline already past was just acted on (a signal the process may not take):
        // look again at the next drain, not in a loop.
        let floor = now + DRAIN_EVERY.as_nanos() as u64;
        self.due_ns = capture
            .into_iter()
            .chain(signal)
            .min()
            .map(|d| if d <= now { floor } else { d });
    }

    fn counters(&self) -> Counters {
        Counters {
            kernel: self.kernel.counters(),
            malformed: self.malformed,
            profile_overflow: self.profiler.as_ref().map_or(0, |p| p.overflow),
            capture_overflow: self.capturing.as_ref().map_or(0, |c| c.worker.overflow()),
            downstream_outside: self.calls.outside,
            downstream_dropped_requests: self.calls.dropped_requests,
            retargeted: self.retarget.remarked,
        }
    }

    fn drain(&mut self, out: &mut dyn Consumer) -> anyhow::Result<()> {
        while let Some(decoded) = self.kernel.next_request() {
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
        // Handler calls that returned collect their captures before planning forgets them.
        self.drain_handlers(out)?;
        for pid in self.retarget.check(self.kernel.as_mut()) {
            // A new image under the same pid: its Python, if any, is looked for again.
            if let Some(p) = self.profiler.as_mut() {
                p.probe(pid);
            }
        }
        let now = mono_ns();
        let scan = self.tracker.scan(self.kernel.conns(), now, procfs::alive);
        for (rec, why) in &scan.finished {
            self.finish(rec, *why, now, out)?;
        }
        self.act(&scan.in_flight, now);
        self.poll_cgroups();
        if let Some(p) = self.profiler.as_mut() {
            // Serving processes we have not looked at (forked, launched, bound a port later):
            // find their Python now rather than at their first sample.
            for r in &scan.in_flight {
                p.probe(r.tgid);
            }
        }
        self.plan_captures(&scan.in_flight, now);
        self.open.clone_from(&scan.in_flight);
        self.seen_ns = now;
        self.schedule(now);
        self.release(false, out)?;
        for key in &scan.dead {
            self.kernel.forget_conn(key);
            self.ports.forget(key.tgid);
        }
        // MEMORY-HOOK: drop what is kept for exited processes (agent/reaper.rs).
        self.reap(&scan);
        let in_flight = scan
            .in_flight
            .iter()
            .map(|r| self.request(r, EndReason::InFlight, now))
            .collect();
        if let Some(p) = self.profiler.as_ref() {
            out.on_profile(&p.hot())?;
        }
        out.on_event(AgentEvent::Tick {
            in_flight,
            counters: self.counters(),
        })
    }

    /// `--cgroup`: cgroups created below a target since, and processes there the kernel did not
    /// mark (it marks those that move in or exec there once it knows the cgroup's id).
    fn poll_cgroups(&mut self) {
        if self.cgroup_watch.is_empty() {
            return;
        }
        let Some(found) = self.cgroup_watch.poll_due() else {
            return;
        };
        for &id in &found.new_ids {
            self.kernel.add_target_cgroup(id);
        }
        for &pid in &found.new_pids {
            if self.kernel.adopt(pid) {
                log::info!("pid {pid}: found in a --cgroup by user space");
            }
            for port in procfs::listening_ports(pid) {
                self.kernel.serve_port(port);
            }
            if let Some(p) = self.profiler.as_mut() {
                p.probe(pid);
            }
        }
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
        let why = runtime.block_on(self.event_loop(out, duration, &stop))?;
        let now = mono_ns();
        for (r, end) in self.tracker.finish_all(self.kernel.conns(), now) {
            self.finish(&r, end, now, out)?;
        }
        self.release(true, out)?;
        self.profiles_in(true, out)?;
        let command_status = self.child.take().and_then(stop_child);
        let counters = self.counters();
        let profile = self.profiler.take().map(Profiler::finish);
        Ok(Finished {
            stop: why,
            counters,
            command_status,
            profile,
        })
    }

    async fn event_loop(
        &mut self,
        out: &mut dyn Consumer,
        duration: Option<Duration>,
        stop: &AtomicBool,
    ) -> anyhow::Result<Stop> {
        // Woken by the kernel when request records pile up (its own copy of the fd, so the
        // kernel side keeps the ring).
        let mut wakeup = match self.kernel.wakeup_fd() {
            Some(fd) => {
                let owned = fd.try_clone_to_owned()?;
                // SAFETY: `owned` is our own duplicate of the ring's fd, open for as long as
                // the AsyncFd that owns it lives.
                Some(
                    unsafe { AsyncFd::register(owned) }
                        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?,
                )
            }
            None => None,
        };
        // The kernel wakes us only when its ring fills up (a wakeup per request would cost more
        // than the request): drain on this short timer.
        let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(SCAN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = tokio::time::sleep(duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
        tokio::pin!(deadline);
        // Both listeners exist for the whole loop: a `ctrl_c()` future made afresh each iteration
        // misses a SIGINT that lands while the loop body runs (seen: a benchmark's Ctrl-C lost
        // during a long drain, and slowtrace tracing on forever).
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let why = loop {
            tokio::select! {
                guard = readable_opt(&mut wakeup) => {
                    let mut guard = guard?;
                    self.drain(out)?;
                    guard.clear_ready();
                }
                _ = drain_tick.tick() => {
                    self.drain_side();
                    self.drain(out)?;
                    if let Some(p) = self.profiler.as_mut() {
                        p.flush_done();
                    }
                    self.profiles_in(false, out)?;
                    self.drain_handlers(out)?;
                    self.discover(mono_ns());
                }
                _ = tick.tick() => {
                    self.drain_side();
                    self.drain(out)?;
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
                _ = sleep_until_mono(self.due_ns) => {
                    self.on_deadline(out)?;
                }
                _ = &mut deadline => break Stop::Duration,
                _ = sigint.recv() => break Stop::CtrlC,
                _ = sigterm.recv() => break Stop::Sigterm,
            }
        };
        // A request or handler call finishing right as we stop (the client got its response, the
        // server is one syscall away from the close) is still recorded: a short grace period.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Records the kernel wrote before we stopped listening.
        self.drain_side();
        self.drain(out)?;
        self.drain_handlers(out)?;
        self.scan(out)?;
        Ok(why)
    }
}

/// The open requests as the watchdog sees them.
fn running(in_flight: &[RequestRecord]) -> Vec<Running> {
    in_flight
        .iter()
        .map(|r| Running {
            key: (r.tgid, r.conn_id, r.seq),
            pid: r.tgid,
            tid: r.tid,
            start_ns: r.start_ns,
        })
        .collect()
}

/// The open requests as the actor sees them: (key, pid, tid, start).
fn act_running(
    in_flight: &[RequestRecord],
) -> Vec<(crate::capture::watchdog::RequestKey, u32, u32, u64)> {
    in_flight
        .iter()
        .map(|r| ((r.tgid, r.conn_id, r.seq), r.tgid, r.tid, r.start_ns))
        .collect()
}

/// Sleep until a kernel-monotonic deadline; forever when there is none.
async fn sleep_until_mono(due_ns: Option<u64>) {
    match due_ns {
        Some(due) => {
            let wait = Duration::from_nanos(due.saturating_sub(mono_ns()));
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}

/// Watchdog key of a handler call: the request-index half is tagged so it never meets a request.
fn handler_key(tgid: u32, start_ns: u64, handler: u32) -> crate::capture::watchdog::RequestKey {
    (tgid, start_ns, 0x8000_0000 | handler)
}

/// Readiness of an optional ring buffer; never ready when there is none.
async fn readable_opt(
    fd: &mut Option<AsyncFd<OwnedFd>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, OwnedFd>> {
    match fd {
        Some(f) => f.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Finished {
    pub stop: Stop,
    pub counters: Counters,
    /// Exit code of the launched command, if there was one and it exited normally.
    pub command_status: Option<i32>,
    /// What the profiler wrote and saw, when profiling.
    pub profile: Option<crate::profile::Report>,
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

#[cfg(test)]
mod tests;
