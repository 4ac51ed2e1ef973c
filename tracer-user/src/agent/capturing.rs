//! The capture side of a running agent: the watchdog's plan carried out (kernel watch list,
//! capture worker), finished captures joined to their requests, killed-request detection.

use std::time::Duration;

use aya::maps::MapData;
use tracer_common::{EndReason, RequestRecord};

use super::{mono_ns, CaptureConfig};
use crate::{
    capture::{
        watchdog::{Policy, Watchdog},
        worker::{StackMaps, Worker},
    },
    model::{
        slow::{self, Killed, SlowRequest},
        Request,
    },
    probes::CaptureMaps,
};

/// The capture side of a running agent.
pub(super) struct Capturing {
    pub(super) watchdog: Watchdog,
    pub(super) worker: Worker,
    pub(super) watch: aya::maps::HashMap<MapData, u32, u8>,
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

pub(super) fn start_capture(
    c: CaptureConfig,
    maps: CaptureMaps,
    resolver: crate::symbols::Stacks,
) -> anyhow::Result<Capturing> {
    let CaptureMaps {
        watch,
        stacks,
        on_cpu,
        off_cpu,
        signals,
        degraded: _,
    } = maps;
    let worker = Worker::new(
        StackMaps {
            stacks,
            on_cpu,
            off_cpu,
        },
        mono_ns,
        resolver,
    );
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
    pub(super) fn collect(&mut self) {
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
    pub(super) fn ready(&mut self, all: bool) -> Vec<SlowRequest> {
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
    pub(super) fn drain(&mut self) -> Vec<SlowRequest> {
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
    pub(super) fn finish(
        &mut self,
        r: &RequestRecord,
        end: EndReason,
        req: &Request,
    ) -> Option<SlowRequest> {
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

    /// The slow threshold in microseconds.
    pub fn threshold_us(&self) -> u64 {
        self.watchdog.policy().threshold_ns / 1000
    }

    /// Captures of a finished handler call, if it ran past the threshold.
    pub(super) fn finish_handler(
        &mut self,
        key: crate::capture::watchdog::RequestKey,
        duration_us: u64,
    ) -> Vec<slow::Capture> {
        self.collect();
        let Some((w, unwatch)) = self.watchdog.finish(&key) else {
            return Vec::new();
        };
        if unwatch {
            let _ = self.watch.remove(&w.tid);
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
