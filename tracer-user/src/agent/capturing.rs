//! The capture side of a running agent: the watchdog's plan carried out (kernel watch list,
//! capture worker), finished captures joined to their requests, killed-request detection.

use std::time::Duration;

use tracer_common::{EndReason, RequestRecord};

use super::{mono_ns, CaptureConfig};
use crate::{
    capture::{
        watchdog::{Job, Policy, RequestKey, Watchdog},
        worker::{CaptureResult, StackMaps, Worker},
    },
    model::{
        slow::{self, Killed, SlowRequest},
        Request,
    },
    probes::kernel::Kernel,
};

/// Where capture jobs go: the capture worker, or a fake in the agent's tests.
pub(super) trait CaptureJobs {
    /// Queue a job; false when the queue is full (counted by the implementation).
    fn submit(&mut self, job: Job) -> bool;
    /// Captures finished since the last call.
    fn results(&mut self) -> Vec<CaptureResult>;
    /// Jobs refused because the queue was full.
    fn overflow(&self) -> u64;
}

impl CaptureJobs for Worker {
    fn submit(&mut self, job: Job) -> bool {
        Worker::submit(self, job)
    }

    fn results(&mut self) -> Vec<CaptureResult> {
        Worker::results(self).collect()
    }

    fn overflow(&self) -> u64 {
        self.overflow
    }
}

/// The capture side of a running agent.
pub(super) struct Capturing {
    pub(super) watchdog: Watchdog,
    pub(super) worker: Box<dyn CaptureJobs>,
    /// Slow requests that ended while a capture of them was still being taken: held back (not
    /// longer than `CLOSING_WAIT`) so a slow capture worker costs latency, not captures.
    closing: Vec<Closing>,
}

struct Closing {
    key: RequestKey,
    slow: SlowRequest,
    pending: u32,
    deadline: std::time::Instant,
}

const CLOSING_WAIT: Duration = Duration::from_secs(5);

/// What became of a finished request.
pub(super) enum Finish {
    /// Fast (no slow record), or slow or killed with all its captures in: hand it out now.
    Now(Box<Request>, Option<Box<SlowRequest>>),
    /// Slow with captures still being taken: held back (`ready` releases it), so that it is
    /// handed out once, complete, in every output.
    Held,
}

pub(super) fn start_capture(
    c: CaptureConfig,
    maps: StackMaps,
    resolver: crate::symbols::Stacks,
) -> anyhow::Result<Capturing> {
    Ok(Capturing::new(
        c,
        Box::new(Worker::new(maps, mono_ns, resolver)),
    ))
}

impl Capturing {
    pub(super) fn new(c: CaptureConfig, worker: Box<dyn CaptureJobs>) -> Capturing {
        let policy = Policy {
            threshold_ns: c.threshold.as_nanos() as u64,
            resample_ns: c.resample.as_nanos() as u64,
            max_captures: c.max_captures,
        };
        Capturing {
            watchdog: Watchdog::new(policy),
            worker,
            closing: Vec::new(),
        }
    }

    /// Move finished captures from the worker to their requests.
    pub(super) fn collect(&mut self) {
        let results = self.worker.results();
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
    pub(super) fn ready(&mut self, all: bool) -> Vec<(RequestKey, SlowRequest)> {
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
                (c.key, c.slow)
            })
            .collect()
    }

    /// At exit: give outstanding captures a moment to come back.
    pub(super) fn drain(&mut self) -> Vec<(RequestKey, SlowRequest)> {
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

    /// The request `r` ended as `req`: with its slow-request record if it was slow or killed,
    /// or held back until its captures are in.
    pub(super) fn finish(
        &mut self,
        kernel: &mut dyn Kernel,
        r: &RequestRecord,
        end: EndReason,
        req: Request,
    ) -> Finish {
        self.collect();
        let key = (r.tgid, r.conn_id, r.seq);
        let watched = self.watchdog.finish(&key);
        if let Some((w, true)) = &watched {
            kernel.watch(w.tid, false);
        }
        let killed = self.killed(kernel, r, end, &req);
        let threshold_ms = self.watchdog.policy().threshold_ns / 1_000_000;
        if req.duration_us / 1000 < threshold_ms && killed.is_none() {
            return Finish::Now(Box::new(req), None);
        }
        let pending = watched.as_ref().map_or(0, |(w, _)| w.pending());
        let (captures, missed) = watched
            .map(|(w, _)| (w.captures, w.missed))
            .unwrap_or_default();
        let slow = SlowRequest {
            kind: if killed.is_some() { "killed" } else { "slow" },
            threshold_ms,
            request: req,
            killed,
            captures,
            captures_missed: missed,
            profile: None,
        };
        if pending > 0 {
            self.closing.push(Closing {
                key,
                slow,
                pending,
                deadline: std::time::Instant::now() + CLOSING_WAIT,
            });
            return Finish::Held;
        }
        Finish::Now(Box::new(slow.request.clone()), Some(Box::new(slow)))
    }

    /// The slow threshold in microseconds.
    pub fn threshold_us(&self) -> u64 {
        self.watchdog.policy().threshold_ns / 1000
    }

    /// Captures of a finished handler call, if it ran past the threshold.
    pub(super) fn finish_handler(
        &mut self,
        kernel: &mut dyn Kernel,
        key: RequestKey,
        duration_us: u64,
    ) -> Vec<slow::Capture> {
        self.collect();
        let Some((w, unwatch)) = self.watchdog.finish(&key) else {
            return Vec::new();
        };
        if unwatch {
            kernel.watch(w.tid, false);
        }
        if duration_us * 1000 < self.watchdog.policy().threshold_ns {
            return Vec::new();
        }
        w.captures
    }

    /// A fatal signal sent to the serving thread or process while the request ran, or the
    /// process dying with it open.
    pub(super) fn killed(
        &mut self,
        kernel: &dyn Kernel,
        r: &RequestRecord,
        end: EndReason,
        req: &Request,
    ) -> Option<Killed> {
        let died = end == EndReason::ProcessExit;
        // Each look-up is two map syscalls: only requests that could have been killed pay them
        // (slow ones, 5xx answers such as gunicorn's after SIGABRT, and dead processes), not
        // every fast 200.
        let threshold_us = self.watchdog.policy().threshold_ns / 1000;
        if !died && !req.is_5xx() && req.duration_us < threshold_us {
            return None;
        }
        let end_ns = r.start_ns + req.duration_us * 1000;
        let note = [r.tid, r.tgid]
            .iter()
            .filter_map(|&t| kernel.signal_note(t))
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
