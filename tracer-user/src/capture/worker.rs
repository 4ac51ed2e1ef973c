//! The capture side: where a slow request's thread is now (Python frames from process memory,
//! native and kernel frames from the kernel's stack samples, state and syscall from /proc),
//! symbolized. Every read is a blocking syscall and the Python reader and the symbolizer live on
//! the stack resolver thread (`crate::symbols`), so each capture runs there, whole: the event
//! loop only queues it. The queue is bounded, so a burst of slow requests costs missed captures
//! (counted), never a stalled pipeline.

use std::sync::{
    mpsc::{self, Receiver, Sender},
    Arc,
};

use aya::maps::{HashMap, MapData, StackTraceMap};
use tracer_common::StackSample;

use super::{
    procinfo,
    watchdog::{Job, RequestKey},
};
use crate::{
    model::slow::{Capture, Frame},
    symbols::{self, Resolver, Stacks, Taken},
};

/// An on-CPU sample older than this does not describe the thread "now" (99 Hz → ~10 ms apart).
const FRESH_NS: u64 = 100_000_000;

/// The kernel maps a capture reads.
pub struct StackMaps {
    pub stacks: StackTraceMap<MapData>,
    pub on_cpu: HashMap<MapData, u32, StackSample>,
    pub off_cpu: HashMap<MapData, u32, StackSample>,
}

pub type CaptureResult = (RequestKey, Result<Capture, ()>);

pub struct Worker {
    stacks: Stacks,
    /// Shared with the captures queued on the resolver thread.
    maps: Arc<StackMaps>,
    now_ns: fn() -> u64,
    done: Sender<CaptureResult>,
    results: Receiver<CaptureResult>,
    /// Jobs dropped because the queue was full.
    pub overflow: u64,
}

impl Worker {
    pub fn new(maps: StackMaps, now_ns: fn() -> u64, stacks: Stacks) -> Worker {
        let (done, results) = mpsc::channel();
        Worker {
            stacks,
            maps: Arc::new(maps),
            now_ns,
            done,
            results,
            overflow: 0,
        }
    }

    /// Queue a capture; false (and counted) when the resolver thread is behind.
    pub fn submit(&mut self, job: Job) -> bool {
        let (maps, done, now_ns) = (Arc::clone(&self.maps), self.done.clone(), self.now_ns);
        let queued = self.stacks.try_run(move |r| {
            let t = std::time::Instant::now();
            let mut capture = capture(&maps, r, &job, now_ns());
            capture.took_us = t.elapsed().as_micros() as u64;
            let _ = done.send((job.key, Ok(capture)));
        });
        if !queued {
            self.overflow += 1;
        }
        queued
    }

    pub fn results(&self) -> impl Iterator<Item = CaptureResult> + '_ {
        self.results.try_iter()
    }
}

fn capture(maps: &StackMaps, r: &mut Resolver, job: &Job, now_ns: u64) -> Capture {
    let (pid, tid) = (job.pid, job.tid);
    let mut c = Capture {
        offset_ms: job.offset_ms,
        ..Capture::default()
    };
    let state = procinfo::state(pid, tid).unwrap_or("unknown");
    c.state = state.to_owned();
    // Python first: it is the part that moves fastest under us.
    match r.python_stack(pid, tid) {
        Ok(frames) => c.python = frames,
        Err(e) => c.errors.push(e),
    }
    if state == "exited" {
        symbols::forget_exited(r, &[pid], false);
        c.native_source = "none".into();
        return c;
    }
    let blocked = state == "blocked";
    let sample = if blocked {
        // Stacks are recorded only while the thread is watched (from half the threshold on): a
        // thread that blocked before that has, at best, the switch-out of an earlier wait here.
        maps.off_cpu
            .get(&tid, 0)
            .ok()
            .filter(|s| s.ts >= job.start_ns)
    } else {
        maps.on_cpu
            .get(&tid, 0)
            .ok()
            .filter(|s| now_ns.saturating_sub(s.ts) < FRESH_NS)
    };
    if blocked {
        if let Some((nr, pc)) = procinfo::syscall(pid, tid) {
            c.syscall = Some(procinfo::syscall_name(nr));
            if sample.is_none() && pc != 0 {
                c.native = r.native(pid, &[pc]);
                c.native_source = "syscall pc".into();
            }
        }
    }
    if let Some(s) = sample {
        let taken = if blocked {
            Taken::SwitchedOut
        } else {
            Taken::Sampled
        };
        c.native = stack(maps, s.user_id)
            .map(|ips| r.native(pid, &ips))
            .unwrap_or_default();
        c.kernel = stack(maps, s.kern_id)
            .map(|ips| r.kernel(&ips, taken))
            .unwrap_or_default();
        c.native_source = if blocked {
            "switch-out"
        } else {
            "on-cpu sample"
        }
        .into();
    }
    if c.kernel.is_empty() && blocked {
        c.kernel = procinfo::kernel_stack(pid, tid);
    }
    if c.native_source.is_empty() {
        c.native_source = "none".into();
    }
    c
}

fn stack(maps: &StackMaps, id: i64) -> Option<Vec<u64>> {
    let id = u32::try_from(id).ok()?;
    let trace = maps.stacks.get(&id, 0).ok()?;
    Some(
        trace
            .frames()
            .iter()
            .map(|f| f.ip)
            .filter(|ip| *ip != 0)
            .collect(),
    )
}

/// Frames for humans in reports: `function (file:line)` or `function [module]`.
pub fn describe(f: &Frame) -> String {
    match (&f.file, f.line, &f.module) {
        (Some(file), Some(line), _) => format!("{} ({file}:{line})", f.function),
        (_, _, Some(m)) => format!("{} [{m}]", f.function),
        _ => f.function.clone(),
    }
}
