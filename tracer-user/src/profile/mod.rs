//! The profiler: kernel samples → resolved stacks → the continuous profile, on its own thread.
//!
//! Symbolization and Python code-object reads are blocking and sometimes slow, so they stay off
//! the event loop behind a bounded queue (a full queue drops samples, counted). Samples go over
//! in one batch per drain, and each batch is resolved in one round trip to the stack resolver
//! thread (`crate::symbols`, shared with the captures). The profiler thread owns the profile; the
//! agent tells it when requests end (a slow request takes its own samples along, for its
//! flamegraph) and takes the whole profile at the end. It writes no files: the outputs draw the
//! flamegraphs (`sinks::flame`, `sinks::files`).

mod merge;
mod resolve;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tracer_common::{profile::sample_kind, ProfileRecord};

use crate::{
    model::{
        profile::{
            FrameInfo, HotFrame, Metric, Profile, ReqKey, RequestProfile, Sample, Task, Weights,
        },
        request::endpoint_of,
    },
    procfs,
    reaper::{self, PerProcess, Sweep, STATS, SWEEP_EVERY},
    sinks::{
        pprof,
        pyroscope::{Period, PushConfig, PushReport, Pusher},
    },
    symbols::Stacks,
};

/// Messages waiting for the profiler thread at most.
const QUEUE: usize = 4096;
/// Samples handed over and not yet profiled, at most: the queue's bound in samples (a message
/// carries a batch of them, and memory is what this bounds).
const MAX_QUEUED_SAMPLES: usize = 4096;
/// Samples in one message at most: one round trip to the resolver thread each, short enough
/// that a capture queued behind a batch there waits a millisecond or so, not a backlog.
const SAMPLE_BATCH: usize = 64;
/// How often the hot-frames table for `top` is refreshed.
const HOT_EVERY: Duration = Duration::from_secs(1);
const HOT_ROWS: usize = 200;

#[derive(Debug, Clone)]
pub struct ProfilerConfig {
    pub sample_hz: u64,
    /// `record --flamegraph`: where cpu/wall folded, svg and speedscope files go (and
    /// slow/<id>.svg per slow request). None: profile for `top` only.
    pub out_dir: Option<PathBuf>,
    pub endpoint: Option<glob::Pattern>,
    /// Off-CPU records too (the wall-clock profile).
    pub wall: bool,
    /// `--pprof`: keep the whole run's samples by label set (pid, thread, request) too.
    pub labels: bool,
    /// `--pyroscope`: push each period's profile.
    pub push: Option<PushConfig>,
}

enum Msg {
    /// A drain's samples, oldest first. A message is small whatever it carries: the queue's
    /// slots stay small, and only the samples actually waiting take memory.
    Samples(Vec<ProfileRecord>),
    /// Fast requests that ended: their own stacks are dropped.
    DoneBatch(Vec<ReqKey>),
    /// A slow request ended: hand its own samples back (on the `taken` channel).
    Take(ReqKey),
    Finish(mpsc::Sender<Report>),
}

/// What the profiler did, for the exit summary.
#[derive(Debug, Default)]
pub struct Report {
    pub samples: u64,
    pub python_procs: u64,
    /// The whole run's profile, for the flamegraph files.
    pub profile: Option<Box<Profile>>,
    pub dropped_requests: u64,
    /// Top folded lines of each profile, for the summary.
    pub top_cpu: Vec<String>,
    pub top_wall: Vec<String>,
    pub errors: Vec<String>,
    /// Samples of Python processes by what the kernel walker found: ok, no thread state, read
    /// failed, truncated.
    pub py_walks: [u64; 4],
    /// What `--pyroscope` pushed.
    pub push: Option<PushReport>,
}

pub struct Profiler {
    tx: SyncSender<Msg>,
    thread: Option<JoinHandle<()>>,
    hot: Arc<Mutex<Vec<HotFrame>>>,
    stacks: Stacks,
    probed: std::collections::HashSet<u32>,
    /// Samples dropped because the queue was full.
    pub overflow: u64,
    /// Samples since the last hand-over.
    samples: Vec<ProfileRecord>,
    /// Samples handed over and not yet profiled (the profiler thread takes them off).
    queued: Arc<AtomicUsize>,
    /// Fast requests ended since the last `flush_done`.
    done: Vec<ReqKey>,
    /// The profiler thread's answers to `ask_request`: a slow request and its own samples.
    taken: Receiver<Taken>,
    /// Slow requests whose own samples were not asked for (queue full) or not waited for.
    missed_takes: u64,
}

/// A slow request and its own samples (None: it had none, or they were dropped).
pub type Taken = (ReqKey, Option<RequestProfile>);

/// Request ends handed over in one message at most.
const DONE_BATCH: usize = 4096;

impl Profiler {
    /// `stacks`: the stack resolver thread, shared with the captures.
    pub fn spawn(cfg: ProfilerConfig, stacks: Stacks) -> std::io::Result<Profiler> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        let hot = Arc::new(Mutex::new(Vec::new()));
        let queued = Arc::new(AtomicUsize::new(0));
        let (taken_tx, taken) = mpsc::channel();
        let thread = {
            let (hot, queued, stacks) = (Arc::clone(&hot), Arc::clone(&queued), stacks.clone());
            std::thread::Builder::new()
                .name("profiler".into())
                .spawn(move || run(&cfg, &stacks, &rx, &taken_tx, &hot, &queued))?
        };
        Ok(Profiler {
            tx,
            thread: Some(thread),
            hot,
            stacks,
            probed: std::collections::HashSet::new(),
            overflow: 0,
            samples: Vec::new(),
            queued,
            done: Vec::new(),
            taken,
            missed_takes: 0,
        })
    }

    /// A sample, handed over with the others of this drain (`flush_done`).
    pub fn submit(&mut self, rec: ProfileRecord) {
        self.samples.push(rec);
        if self.samples.len() >= SAMPLE_BATCH {
            self.flush_samples();
        }
    }

    /// Hand over the samples gathered so far, or drop them (counted) when too many wait.
    fn flush_samples(&mut self) {
        let n = self.samples.len();
        if n == 0 {
            return;
        }
        let batch = std::mem::take(&mut self.samples);
        // Counted before the send: the thread may take them off before `try_send` returns.
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > MAX_QUEUED_SAMPLES
            || self.tx.try_send(Msg::Samples(batch)).is_err()
        {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.overflow += n as u64;
        }
    }

    /// Find CPython in `pid` now (targets known at start), not at its first sample.
    pub fn probe(&mut self, pid: u32) {
        if self.probed.insert(pid) {
            self.stacks.try_run(move |r| r.probe(pid));
        }
    }

    /// A request ended and its own samples are not wanted. Batched: a message per request
    /// woke the profiler thread once per request, a quarter of the agent's CPU at 40k
    /// requests/s (perf under wrk).
    pub fn request_done(&mut self, key: ReqKey) {
        self.done.push(key);
        if self.done.len() >= DONE_BATCH {
            self.flush_done();
        }
    }

    /// A slow request ended: ask for its own samples, for its flamegraph. The answer comes
    /// back through `taken`, after the samples already handed over: waiting for it here held
    /// the event loop behind the profiler's backlog (50-70 ms on 2 busy cores), and with it
    /// every capture due in that time. False when the queue is full (counted): the request
    /// goes out without its own flamegraph.
    pub fn ask_request(&mut self, key: ReqKey) -> bool {
        self.flush_done();
        let asked = self.tx.try_send(Msg::Take(key)).is_ok();
        if !asked {
            self.missed_takes += 1;
        }
        asked
    }

    /// Answers to `ask_request` that came in since the last call.
    pub fn taken(&mut self) -> Vec<Taken> {
        self.taken.try_iter().collect()
    }

    /// Wait up to `timeout` for the next answer to `ask_request`.
    pub fn wait_taken(&mut self, timeout: Duration) -> Option<Taken> {
        self.taken.recv_timeout(timeout).ok()
    }

    /// `n` slow requests went out without waiting any longer for their own samples.
    pub fn gave_up(&mut self, n: u64) {
        self.missed_takes += n;
    }

    /// Hand over the samples and the batched request ends (each drain), in that order: a
    /// request's samples must be in before its end forgets them. A batch of ends may be dropped
    /// when the queue is full: it only frees memory, which the profile's own bound also does.
    pub fn flush_done(&mut self) {
        self.flush_samples();
        if !self.done.is_empty() {
            let batch = std::mem::take(&mut self.done);
            let _ = self.tx.try_send(Msg::DoneBatch(batch));
        }
    }

    pub fn hot(&self) -> Vec<HotFrame> {
        self.hot.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Stop the thread; the report carries the whole profile.
    pub fn finish(mut self) -> Report {
        self.flush_done();
        let (tx, rx) = mpsc::channel();
        let mut report = if self.tx.send(Msg::Finish(tx)).is_ok() {
            rx.recv().unwrap_or_default()
        } else {
            Report::default()
        };
        report.dropped_requests += self.missed_takes;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        report
    }
}

/// The pids the agent asked to probe: forgotten with the process, so a new process with the
/// same pid is probed again. (The profiler thread sweeps its own state; see `Dead`.)
impl PerProcess for Profiler {
    fn pids(&self) -> Vec<u32> {
        self.probed.iter().copied().collect()
    }

    fn forget_process(&mut self, pid: u32) -> bool {
        self.probed.remove(&pid)
    }
}

/// The profiler thread's sweep: the samples of an exited process's open requests go one sweep
/// after the exit is seen, so that the agent, which may learn of the exit a scan after us, can
/// still end those requests and have their flamegraphs. (Its Python reader, maps and symbols
/// are the stack resolver's, which sweeps its own.)
struct Dead {
    sweep: Sweep,
    /// Exited at the last sweep, with requests still open then.
    pending: Vec<u32>,
}

impl Dead {
    fn new() -> Self {
        Self {
            sweep: Sweep::new(SWEEP_EVERY),
            pending: Vec::new(),
        }
    }

    /// True when it swept.
    fn sweep(&mut self, profile: &mut Profile) -> bool {
        if !self.sweep.due() {
            return false;
        }
        let forgotten = std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|pid| profile.forget_requests_of(*pid))
            .count();
        reaper::add(&STATS.forgotten_profiler, forgotten as u64);
        self.pending = profile
            .request_pids()
            .into_iter()
            .filter(|p| !procfs::alive(*p))
            .collect();
        let (frames, stacks, open) = profile.sizes();
        log::debug!("profile memory: {frames} frames, {stacks} stacks, {open} open requests");
        true
    }
}

fn run(
    cfg: &ProfilerConfig,
    stacks: &Stacks,
    rx: &Receiver<Msg>,
    taken: &mpsc::Sender<Taken>,
    hot: &Mutex<Vec<HotFrame>>,
    queued: &AtomicUsize,
) {
    let mut profile = Profile::default();
    profile.keep_labels(cfg.labels, cfg.push.is_some());
    let mut report = Report::default();
    let period_us = 1_000_000 / cfg.sample_hz.max(1);
    let mut hot_at = Instant::now();
    let mut dead = Dead::new();
    let mut names = ThreadNames::new(cfg.labels || cfg.push.is_some());
    let mut pushing = cfg
        .push
        .as_ref()
        .and_then(|push| match Pushing::start(cfg, push) {
            Ok(p) => Some(p),
            Err(e) => {
                report
                    .errors
                    .push(format!("starting the pyroscope push thread: {e}"));
                None
            }
        });
    loop {
        let wait = pushing
            .as_ref()
            .map_or(SWEEP_EVERY, |p| p.wait().min(SWEEP_EVERY));
        let msg = match rx.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if dead.sweep(&mut profile) {
            // Thread names are re-read after a sweep: a tid may belong to another thread now.
            names.clear();
        }
        if let Some(p) = pushing.as_mut().filter(|p| p.wait().is_zero()) {
            p.send(&mut profile);
        }
        let Some(msg) = msg else { continue };
        match msg {
            Msg::Samples(batch) => {
                let n = batch.len();
                // Resolved in one round trip; the records come back with their stacks.
                let resolved = stacks.call(move |res| {
                    let frames: Vec<_> = batch.iter().map(|r| resolve::stack(res, r)).collect();
                    (batch, frames)
                });
                if let Some((batch, frames)) = resolved {
                    for (r, frames) in batch.iter().zip(&frames) {
                        let name = names.get(r.tgid, r.tid);
                        add(&mut profile, &mut report, r, frames, period_us, name);
                    }
                }
                queued.fetch_sub(n, Ordering::Relaxed);
                if hot_at.elapsed() >= HOT_EVERY {
                    hot_at = Instant::now();
                    if let Ok(mut h) = hot.lock() {
                        *h = profile.hot(HOT_ROWS);
                    }
                }
            }
            Msg::DoneBatch(keys) => {
                for key in &keys {
                    profile.forget_request(key);
                }
            }
            Msg::Take(key) => {
                let _ = taken.send((key, profile.take_request(&key)));
            }
            Msg::Finish(reply) => {
                if let Some(p) = pushing.take() {
                    report.push = Some(p.finish(&mut profile));
                }
                report.samples = profile.samples;
                report.python_procs = stacks.call(|r| r.python_procs()).unwrap_or(0);
                report.dropped_requests = profile.dropped_requests;
                report.top_cpu = top(profile.folded(Metric::Cpu, cfg.endpoint.as_ref()));
                report.top_wall = top(profile.folded(Metric::Wall, cfg.endpoint.as_ref()));
                // The files are the outputs' business (`sinks::flame`): the profile goes with the
                // report.
                report.profile = Some(Box::new(std::mem::take(&mut profile)));
                let _ = reply.send(std::mem::take(&mut report));
                return;
            }
        }
    }
}

/// One resolved sample into the profile.
fn add(
    profile: &mut Profile,
    report: &mut Report,
    r: &ProfileRecord,
    frames: &[FrameInfo],
    period_us: u64,
    thread_name: &str,
) {
    if let Some(n) = usize::from(r.py_status)
        .checked_sub(1)
        .and_then(|i| report.py_walks.get_mut(i))
    {
        *n += 1;
    }
    let endpoint =
        (r.conn_id != 0).then(|| endpoint_of(&r.req[..(r.req_len as usize).min(r.req.len())]));
    let weights = match r.kind {
        sample_kind::OFF_CPU => Weights {
            cpu_samples: 0,
            wall_us: r.off_ns / 1000,
        },
        _ => Weights {
            cpu_samples: 1,
            // Wall time is request time; outside requests a sample is CPU only.
            wall_us: if r.conn_id != 0 { period_us } else { 0 },
        },
    };
    profile.add(&Sample {
        endpoint: endpoint.as_deref(),
        frames,
        request: (r.conn_id != 0).then_some((r.tgid, r.conn_id, r.seq)),
        weights,
        task: Task {
            pid: r.tgid,
            tid: r.tid,
            name: thread_name,
        },
    });
}

/// Thread names (`comm`) by tid for the sample labels, read from /proc once per thread and
/// sweep. Off when no output uses labels.
struct ThreadNames {
    on: bool,
    names: HashMap<u32, String>,
}

/// Threads named at most between two sweeps (a name is ~16 bytes).
const MAX_THREAD_NAMES: usize = 16_384;

impl ThreadNames {
    fn new(on: bool) -> Self {
        Self {
            on,
            names: HashMap::new(),
        }
    }

    fn clear(&mut self) {
        self.names.clear();
    }

    /// The thread's name; empty when it is gone or names are off.
    fn get(&mut self, pid: u32, tid: u32) -> &str {
        if !self.on {
            return "";
        }
        if self.names.len() >= MAX_THREAD_NAMES && !self.names.contains_key(&tid) {
            self.names.clear();
        }
        self.names.entry(tid).or_insert_with(|| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .map(|s| s.trim_end().to_owned())
                .unwrap_or_default()
        })
    }
}

/// `--pyroscope` on the profiler thread: every period the period's table is built into pprof
/// profiles here (it needs the frame tables) and handed to the push thread.
struct Pushing {
    pusher: Pusher,
    every: Duration,
    next: Instant,
    since: SystemTime,
    app: Option<String>,
    sample_hz: u64,
    wall: bool,
    filter: Option<glob::Pattern>,
}

impl Pushing {
    fn start(cfg: &ProfilerConfig, push: &PushConfig) -> std::io::Result<Self> {
        Ok(Self {
            pusher: Pusher::spawn(push)?,
            every: push.every,
            next: Instant::now() + push.every,
            since: SystemTime::now(),
            app: push.app.clone(),
            sample_hz: cfg.sample_hz,
            wall: cfg.wall,
            filter: cfg.endpoint.clone(),
        })
    }

    /// Until the next push is due.
    fn wait(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// Build and hand over the period that ends now (nothing when nothing was sampled).
    fn send(&mut self, profile: &mut Profile) {
        self.next = Instant::now() + self.every;
        let until = SystemTime::now();
        let from = std::mem::replace(&mut self.since, until);
        let Some(table) = profile.take_period() else {
            return;
        };
        if table.is_empty() {
            return;
        }
        // Named once, after the busiest process of the first period: the series keep one name.
        let app = self
            .app
            .get_or_insert_with(|| {
                table
                    .busiest_pid()
                    .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
                    .map_or_else(|| "slowtrace".into(), |s| s.trim_end().to_owned())
            })
            .clone();
        let nanos = |t: SystemTime| {
            i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos())
                .unwrap_or(i64::MAX)
        };
        let (frames, stacks) = profile.tables();
        let meta = pprof::Meta {
            sample_hz: self.sample_hz,
            values: pprof::CPU,
            time_nanos: nanos(from),
            duration_nanos: nanos(until).saturating_sub(nanos(from)),
            filter: self.filter.as_ref(),
        };
        let mut profiles = vec![pprof::build(frames, stacks, &table, &meta)];
        if self.wall {
            let wall = pprof::Meta {
                values: &[pprof::Value::WallNs],
                ..meta
            };
            profiles.push(pprof::build(frames, stacks, &table, &wall));
        }
        profiles.retain(|p| !p.sample.is_empty());
        if profiles.is_empty() {
            return;
        }
        self.pusher.push(Period {
            profiles,
            from,
            until,
            app,
            sample_hz: self.sample_hz,
        });
    }

    /// The last (partial) period, then the push thread's report.
    fn finish(mut self, profile: &mut Profile) -> PushReport {
        self.send(profile);
        self.pusher.finish()
    }
}

/// The heaviest folded lines first.
fn top(mut lines: Vec<String>) -> Vec<String> {
    let weight = |l: &String| {
        l.rsplit_once(' ')
            .and_then(|(_, n)| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    lines.sort_by_key(|l| std::cmp::Reverse(weight(l)));
    lines.truncate(10);
    lines
}
