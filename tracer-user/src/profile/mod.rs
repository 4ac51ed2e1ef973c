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
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracer_common::{profile::sample_kind, ProfileRecord};

use crate::{
    model::{
        profile::{FrameInfo, HotFrame, Metric, Profile, ReqKey, RequestProfile, Sample, Weights},
        request::endpoint_of,
    },
    procfs,
    reaper::{self, PerProcess, Sweep, STATS, SWEEP_EVERY},
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
}

enum Msg {
    /// A drain's samples, oldest first. A message is small whatever it carries: the queue's
    /// slots stay small, and only the samples actually waiting take memory.
    Samples(Vec<ProfileRecord>),
    /// Fast requests that ended: their own stacks are dropped.
    DoneBatch(Vec<ReqKey>),
    /// A slow request ended: hand its own samples back.
    Take(ReqKey, mpsc::SyncSender<Option<RequestProfile>>),
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
}

/// Request ends handed over in one message at most.
const DONE_BATCH: usize = 4096;

impl Profiler {
    /// `stacks`: the stack resolver thread, shared with the captures.
    pub fn spawn(cfg: ProfilerConfig, stacks: Stacks) -> std::io::Result<Profiler> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        let hot = Arc::new(Mutex::new(Vec::new()));
        let queued = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (hot, queued, stacks) = (Arc::clone(&hot), Arc::clone(&queued), stacks.clone());
            std::thread::Builder::new()
                .name("profiler".into())
                .spawn(move || run(&cfg, &stacks, &rx, &hot, &queued))?
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

    /// A slow request ended: its own samples, for its flamegraph (waits for the profiler
    /// thread, at most one batch of samples; slow requests are few).
    pub fn take_request(&mut self, key: ReqKey) -> Option<RequestProfile> {
        self.flush_done();
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx.send(Msg::Take(key, tx)).ok()?;
        rx.recv().ok().flatten()
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
        let report = if self.tx.send(Msg::Finish(tx)).is_ok() {
            rx.recv().unwrap_or_default()
        } else {
            Report::default()
        };
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

    fn sweep(&mut self, profile: &mut Profile) {
        if !self.sweep.due() {
            return;
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
    }
}

fn run(
    cfg: &ProfilerConfig,
    stacks: &Stacks,
    rx: &Receiver<Msg>,
    hot: &Mutex<Vec<HotFrame>>,
    queued: &AtomicUsize,
) {
    let mut profile = Profile::default();
    let mut report = Report::default();
    let period_us = 1_000_000 / cfg.sample_hz.max(1);
    let mut hot_at = Instant::now();
    let mut dead = Dead::new();
    loop {
        let msg = match rx.recv_timeout(SWEEP_EVERY) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        dead.sweep(&mut profile);
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
                        add(&mut profile, &mut report, r, frames, period_us);
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
            Msg::Take(key, reply) => {
                let _ = reply.send(profile.take_request(&key));
            }
            Msg::Finish(reply) => {
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
    });
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
