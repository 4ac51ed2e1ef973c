//! The capture side: where a slow request's thread is now (Python frames from process memory,
//! native and kernel frames from the kernel's stack samples, state and syscall from /proc),
//! symbolized. Every read is a blocking syscall and the Python reader and the symbolizer live on
//! the stack resolver thread (`crate::symbols`), so each capture runs there, whole: the event
//! loop only queues it. The queue is bounded, so a burst of slow requests costs missed captures
//! (counted), never a stalled pipeline.

use std::sync::{
    mpsc::{self, Receiver, Sender},
    Arc, Mutex,
};

use aya::maps::{HashMap, MapData};
use tracer_common::{sched::ThreadSched, StackSample};

use super::{
    ehframe::EhFrames,
    eventloop, procinfo,
    unwind::{self, UserRegs},
    watchdog::{Job, RequestKey},
};
use crate::{
    model::slow::{Capture, Frame},
    symbols::{self, Resolver, Stacks, Taken},
};

/// An on-CPU sample older than this does not describe the thread at the capture (the perf
/// event fires at 99 Hz: a thread on a CPU has a sample at most ~10 ms old).
const FRESH_NS: u64 = 30_000_000;

/// The kernel maps a capture reads.
pub struct StackMaps {
    /// Latest on-CPU sample (user and kernel stacks of one instant) of each watched thread.
    pub on_cpu: HashMap<MapData, u32, StackSample>,
    /// The sched program's per-thread record: when the thread left the CPU inside which
    /// request, with its user registers. None when the sched programs are not attached.
    pub threads: Option<HashMap<MapData, u32, ThreadSched>>,
}

pub type CaptureResult = (RequestKey, Result<Capture, ()>);

pub struct Worker {
    stacks: Stacks,
    /// Shared with the captures queued on the resolver thread.
    maps: Arc<StackMaps>,
    /// Unwind tables, used on the resolver thread only (the lock is never contended).
    eh: Arc<Mutex<EhFrames>>,
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
            eh: Arc::default(),
            now_ns,
            done,
            results,
            overflow: 0,
        }
    }

    /// Queue a capture; false (and counted) when the resolver thread is behind.
    pub fn submit(&mut self, job: Job) -> bool {
        let (maps, done, now_ns) = (Arc::clone(&self.maps), self.done.clone(), self.now_ns);
        let eh = Arc::clone(&self.eh);
        let queued = self.stacks.try_run(move |r| {
            let t = std::time::Instant::now();
            let mut eh = eh.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut capture = capture(&maps, r, &mut eh, &job, now_ns());
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

/// Where a capture's native and kernel frames come from: always one instant inside the
/// request, or nothing (with the reason), never an older stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Off CPU since a switch-out inside this request: its stack is copied and unwound from
    /// the registers saved then, its kernel stack read from /proc, while it stays off.
    SwitchOut { out_ts: u64, regs: UserRegs },
    /// On a CPU: the perf sample's user and kernel stacks (one program run), taken after the
    /// request started and at most `FRESH_NS` before the capture.
    OnCpu,
    /// No stack of this request's time.
    Nothing(&'static str),
}

/// Pick the source of a capture's native and kernel frames from what the kernel recorded:
/// `thread` is the sched program's record of the thread, `sample_ts` the time of its latest
/// on-CPU sample.
pub fn choose_source(
    job: &Job,
    thread: Option<&ThreadSched>,
    sample_ts: Option<u64>,
    now_ns: u64,
) -> Source {
    let (_, conn_id, seq) = job.key;
    // A handler call's key is not a connection's request: its time alone places a switch-out.
    let handler = seq & 0x8000_0000 != 0;
    if let Some(t) = thread.filter(|t| t.out_ts != 0) {
        let this_request =
            t.out_ts >= job.start_ns && (handler || (t.conn_id, t.seq) == (conn_id, seq));
        if !this_request {
            return Source::Nothing("off CPU since before this request (no switch-out inside it)");
        }
        if t.user_sp == 0 {
            return Source::Nothing(
                "registers at switch-out not recorded (classic sched tracepoint)",
            );
        }
        return Source::SwitchOut {
            out_ts: t.out_ts,
            regs: UserRegs {
                ip: t.user_ip,
                sp: t.user_sp,
                bp: t.user_bp,
            },
        };
    }
    match sample_ts {
        Some(ts) if ts >= job.start_ns && now_ns.saturating_sub(ts) <= FRESH_NS => Source::OnCpu,
        Some(ts) if ts >= job.start_ns => Source::Nothing("no on-CPU sample in the last 30 ms"),
        _ => Source::Nothing("no stack recorded inside this request"),
    }
}

fn capture(
    maps: &StackMaps,
    r: &mut Resolver,
    eh: &mut EhFrames,
    job: &Job,
    now_ns: u64,
) -> Capture {
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
    if eventloop::is_event_loop(&c.python) {
        c.stack_of = Some(eventloop::EVENT_LOOP);
    }
    if state == "exited" {
        symbols::forget_exited(r, &[pid], false);
        eh.forget(pid);
        c.native_source = "none".into();
        return c;
    }
    let mut syscall_pc = 0;
    if state == "blocked" {
        if let Some((nr, pc)) = procinfo::syscall(pid, tid) {
            c.syscall = Some(procinfo::syscall_name(nr));
            syscall_pc = pc;
        }
    }
    let thread = |maps: &StackMaps| maps.threads.as_ref().and_then(|m| m.get(&tid, 0).ok());
    let before = thread(maps);
    let sample = maps.on_cpu.get(&tid, 0).ok();
    let source = choose_source(job, before.as_ref(), sample.as_ref().map(|s| s.ts), now_ns);
    match source {
        Source::SwitchOut { out_ts, regs } => {
            let ips = match unwind::copy_stack(pid, regs.sp, unwind::STACK_COPY) {
                Ok(stack) => {
                    // .eh_frame where the files have it (CPython and libc have no frame
                    // pointers); the frame-pointer chain where it gets further.
                    let cfi = eh.walk(pid, regs, &stack, unwind::MAX_FRAMES);
                    let fp = unwind::frame_pointer_walk(regs, &stack, unwind::MAX_FRAMES);
                    if cfi.len() >= fp.len() {
                        cfi
                    } else {
                        fp
                    }
                }
                Err(e) => {
                    c.errors.push(format!("copying the user stack: {e}"));
                    vec![regs.ip]
                }
            };
            let kernel = procinfo::kernel_stack(pid, tid);
            // Both reads describe the switch-out only if the thread did not run meanwhile.
            if thread(maps).is_some_and(|t| t.out_ts == out_ts) {
                c.native = r.native_unwound(pid, &ips);
                c.kernel = kernel;
                c.native_source = "switch-out".into();
            } else {
                c.native_source = "none".into();
                c.errors
                    .push("no native stack: the thread ran while its stack was read".into());
            }
        }
        Source::OnCpu => {
            let s = sample.expect("OnCpu is chosen only with a sample");
            c.native = r.native(pid, s.user_frames());
            c.kernel = r.kernel(s.kern_frames(), Taken::Sampled);
            c.native_source = "on-cpu sample".into();
        }
        // Blocked now: /proc says where, at this instant (the leaf only: no frame pointer).
        Source::Nothing(_) if syscall_pc != 0 => {
            c.native = r.native(pid, &[syscall_pc]);
            c.kernel = procinfo::kernel_stack(pid, tid);
            c.native_source = "syscall pc".into();
        }
        Source::Nothing(why) => {
            c.native_source = "none".into();
            c.errors.push(format!("no native stack: {why}"));
        }
    }
    c
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

    const MS: u64 = 1_000_000;

    fn job() -> Job {
        Job {
            key: (10, 7, 3),
            pid: 10,
            tid: 11,
            offset_ms: 300,
            start_ns: 1000 * MS,
        }
    }

    fn off(out_ts: u64, conn_id: u64, seq: u32) -> ThreadSched {
        ThreadSched {
            out_ts,
            conn_id,
            seq,
            user_ip: 0x7f00_0010,
            user_sp: 0x7ffd_0000,
            user_bp: 0x7ffd_0040,
            ..ThreadSched::default()
        }
    }

    #[test]
    fn blocked_inside_the_request_uses_its_switch_out() {
        let t = off(1001 * MS, 7, 3);
        assert_eq!(
            choose_source(&job(), Some(&t), Some(900 * MS), 1300 * MS),
            Source::SwitchOut {
                out_ts: 1001 * MS,
                regs: UserRegs {
                    ip: 0x7f00_0010,
                    sp: 0x7ffd_0000,
                    bp: 0x7ffd_0040
                }
            },
            "the switch-out wins over any sample"
        );
    }

    #[test]
    fn never_a_switch_out_of_another_request() {
        // The thread's last switch-out belongs to the previous request on the connection, or
        // to another connection: stale, not shown.
        for t in [
            off(999 * MS, 7, 2),
            off(1001 * MS, 7, 2),
            off(1001 * MS, 8, 3),
        ] {
            assert!(
                matches!(
                    choose_source(&job(), Some(&t), None, 1300 * MS),
                    Source::Nothing(_)
                ),
                "{t:?}"
            );
        }
        // Running again (out_ts 0): the switch-out is over, only a fresh sample tells.
        let ran = off(0, 7, 3);
        assert!(matches!(
            choose_source(&job(), Some(&ran), None, 1300 * MS),
            Source::Nothing(_)
        ));
        // The classic sched tracepoint records no registers.
        let mut classic = off(1001 * MS, 7, 3);
        classic.user_sp = 0;
        assert!(matches!(
            choose_source(&job(), Some(&classic), None, 1300 * MS),
            Source::Nothing(_)
        ));
    }

    #[test]
    fn on_cpu_samples_must_be_fresh_and_inside_the_request() {
        let j = job();
        assert_eq!(
            choose_source(&j, None, Some(1290 * MS), 1300 * MS),
            Source::OnCpu
        );
        assert!(
            matches!(
                choose_source(&j, None, Some(1200 * MS), 1300 * MS),
                Source::Nothing(_)
            ),
            "too old"
        );
        assert!(
            matches!(
                choose_source(&j, None, Some(990 * MS), 1005 * MS),
                Source::Nothing(_)
            ),
            "fresh, but from before the request"
        );
        assert!(matches!(
            choose_source(&j, None, None, 1300 * MS),
            Source::Nothing(_)
        ));
    }

    #[test]
    fn handler_calls_are_placed_by_time() {
        let j = Job {
            key: (10, 1000 * MS, 0x8000_0001),
            ..job()
        };
        let t = off(1001 * MS, 99, 0);
        assert!(matches!(
            choose_source(&j, Some(&t), None, 1300 * MS),
            Source::SwitchOut { .. }
        ));
    }
}
