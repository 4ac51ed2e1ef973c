//! The capture worker: one thread that reads where a thread is (Python frames from process
//! memory, native and kernel frames from the kernel's stack samples, state and syscall from /proc)
//! and symbolizes it. Every read is a blocking syscall, so none of this runs on the event loop; a
//! bounded queue in front of it means a burst of slow requests costs missed captures (counted), never
//! a stalled pipeline.

use std::{
    sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    thread::JoinHandle,
};

use aya::maps::{HashMap, MapData, StackTraceMap};
use tracer_common::StackSample;

use super::{
    procinfo,
    python::PythonStacks,
    symbols::Symbols,
    watchdog::{Job, RequestKey},
};
use crate::{
    model::slow::{Capture, Frame},
    reaper::{self, Sweep, STATS, SWEEP_EVERY},
};

/// An on-CPU sample older than this does not describe the thread "now" (99 Hz → ~10 ms apart).
const FRESH_NS: u64 = 100_000_000;
const QUEUE: usize = 256;

/// The kernel maps the worker reads.
pub struct StackMaps {
    pub stacks: StackTraceMap<MapData>,
    pub on_cpu: HashMap<MapData, u32, StackSample>,
    pub off_cpu: HashMap<MapData, u32, StackSample>,
}

pub type CaptureResult = (RequestKey, Result<Capture, ()>);

pub struct Worker {
    jobs: Option<SyncSender<Job>>,
    results: Receiver<CaptureResult>,
    thread: Option<JoinHandle<()>>,
    /// Jobs dropped because the queue was full.
    pub overflow: u64,
}

impl Worker {
    pub fn spawn(maps: StackMaps, now_ns: fn() -> u64) -> std::io::Result<Worker> {
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(QUEUE);
        let (res_tx, res_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                let mut reader = Reader {
                    maps,
                    symbols: Symbols::new(),
                    python: PythonStacks::default(),
                };
                let mut sweep = Sweep::new(SWEEP_EVERY);
                loop {
                    let job = match jobs_rx.recv_timeout(SWEEP_EVERY) {
                        Ok(job) => Some(job),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    if sweep.due() {
                        reader.sweep();
                    }
                    let Some(job) = job else { continue };
                    let t = std::time::Instant::now();
                    let mut capture = reader.capture(&job, now_ns());
                    capture.took_us = t.elapsed().as_micros() as u64;
                    if res_tx.send((job.key, Ok(capture))).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Worker {
            jobs: Some(jobs_tx),
            results: res_rx,
            thread: Some(thread),
            overflow: 0,
        })
    }

    /// Queue a capture; false (and counted) when the worker is behind.
    pub fn submit(&mut self, job: Job) -> bool {
        let Some(tx) = &self.jobs else { return false };
        match tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.overflow += 1;
                false
            }
        }
    }

    pub fn results(&self) -> impl Iterator<Item = CaptureResult> + '_ {
        self.results.try_iter()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Reader {
    maps: StackMaps,
    symbols: Symbols,
    python: PythonStacks,
}

impl Reader {
    /// Drop the Python readers and symbolizer files of processes that exited.
    fn sweep(&mut self) {
        let gone = reaper::reap(
            &mut [&mut self.python, &mut self.symbols],
            &[],
            true,
            crate::procfs::alive,
        );
        reaper::add(&STATS.forgotten_captures, gone.len() as u64);
    }

    fn capture(&mut self, job: &Job, now_ns: u64) -> Capture {
        let (pid, tid) = (job.pid, job.tid);
        let mut c = Capture {
            offset_ms: job.offset_ms,
            ..Capture::default()
        };
        let state = procinfo::state(pid, tid).unwrap_or("unknown");
        c.state = state.to_owned();
        // Python first: it is the part that moves fastest under us.
        match self.python.stack(pid, tid) {
            Ok(frames) => c.python = frames,
            Err(e) => c.errors.push(e),
        }
        if state == "exited" {
            let gone = reaper::reap(
                &mut [&mut self.python, &mut self.symbols],
                &[pid],
                false,
                |_| false,
            );
            reaper::add(&STATS.forgotten_captures, gone.len() as u64);
            c.native_source = "none".into();
            return c;
        }
        let blocked = state == "blocked";
        let sample = if blocked {
            self.maps.off_cpu.get(&tid, 0).ok()
        } else {
            self.maps
                .on_cpu
                .get(&tid, 0)
                .ok()
                .filter(|s| now_ns.saturating_sub(s.ts) < FRESH_NS)
        };
        if blocked {
            if let Some((nr, pc)) = procinfo::syscall(pid, tid) {
                c.syscall = Some(procinfo::syscall_name(nr));
                if sample.is_none() && pc != 0 {
                    c.native = self.symbols.user(pid, &[pc]);
                    c.native_source = "syscall pc".into();
                }
            }
        }
        if let Some(s) = sample {
            c.native = self
                .stack(s.user_id)
                .map(|ips| self.symbols.user(pid, &ips))
                .unwrap_or_default();
            c.kernel = self
                .stack(s.kern_id)
                .map(|ips| without_probe_frames(self.symbols.kernel(&ips)))
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

    fn stack(&self, id: i64) -> Option<Vec<u64>> {
        let id = u32::try_from(id).ok()?;
        let trace = self.maps.stacks.get(&id, 0).ok()?;
        Some(
            trace
                .frames()
                .iter()
                .map(|f| f.ip)
                .filter(|ip| *ip != 0)
                .collect(),
        )
    }
}

/// The innermost kernel frames of a sample are the sampling machinery itself (our BPF program,
/// the tracepoint or perf-event path, the timer interrupt): drop everything up to the last of
/// them. A sample taken while the thread ran in user space has nothing left, as it should.
pub fn without_probe_frames(frames: Vec<Frame>) -> Vec<Frame> {
    const MACHINERY: &[&str] = &[
        "bpf_",
        "__bpf_",
        "__traceiter_",
        "perf_",
        "__perf_",
        "asm_sysvec_",
        "sysvec_",
        "__sysvec_",
        "hrtimer_",
    ];
    without_frames_up_to_last(frames, MACHINERY)
}

/// Drop every frame up to (and including) the last one whose name starts with one of
/// `prefixes`: the innermost frames that belong to how the stack was taken, not to the thread.
pub fn without_frames_up_to_last(frames: Vec<Frame>, prefixes: &[&str]) -> Vec<Frame> {
    let cut = frames
        .iter()
        .rposition(|f| prefixes.iter().any(|m| f.function.starts_with(m)))
        .map_or(0, |i| i + 1);
    frames.into_iter().skip(cut).collect()
}

/// Frames for humans in reports: `function (file:line)` or `function [module]`.
pub fn describe(f: &Frame) -> String {
    match (&f.file, f.line, &f.module) {
        (Some(file), Some(line), _) => format!("{} ({file}:{line})", f.function),
        (_, _, Some(m)) => format!("{} [{m}]", f.function),
        _ => f.function.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> Frame {
        Frame {
            function: name.into(),
            file: None,
            line: None,
            module: None,
        }
    }

    #[test]
    fn probe_frames_are_dropped() {
        let off = vec![
            f("bpf_prog_09a9_off_cpu"),
            f("bpf_trace_run4"),
            f("__traceiter_sched_switch"),
            f("__schedule"),
            f("schedule"),
            f("do_nanosleep"),
        ];
        let names: Vec<String> = without_probe_frames(off)
            .into_iter()
            .map(|x| x.function)
            .collect();
        assert_eq!(names, ["__schedule", "schedule", "do_nanosleep"]);
        let in_user = vec![
            f("bpf_prog_x"),
            f("perf_swevent_hrtimer"),
            f("asm_sysvec_apic_timer_interrupt"),
        ];
        assert!(without_probe_frames(in_user).is_empty());
    }
}
