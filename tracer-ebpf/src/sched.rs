//! Where a request's time goes. The scheduler tracepoints follow each target thread that serves
//! a request: when it leaves the CPU (sched_switch, in its own context), why (the syscall it is
//! in, read from its registers, or on the syscall path noted by the waitable syscalls' entry
//! tracepoints); when it is woken (sched_wakeup); when it runs again.
//! The intervals are added to the request's record in the connection map, so they travel with
//! the one record per request. The same switch also feeds the off-CPU profile (profile.rs).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::HashMap,
    programs::{tracing::StackIdContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use tracer_common::{sched, sched::ThreadSched, ConnKey, Phase};

use crate::{
    downstream::DS_CONNS,
    handlers::CURRENT,
    maps::{is_target, kind, ARGS, CONNS},
    procs::OFFSETS,
    profile,
    sock::{self, Syscall, KOFFS},
};

/// tid → scheduler bookkeeping, for target threads.
#[map]
pub static THREADS: HashMap<u32, ThreadSched> = HashMap::with_max_entries(16384, 0);

/// x86_64 syscall numbers the reasons are told by.
mod nr {
    pub const POLL: i64 = 7;
    pub const SELECT: i64 = 23;
    pub const NANOSLEEP: i64 = 35;
    pub const FCNTL: i64 = 72;
    pub const FLOCK: i64 = 73;
    pub const FUTEX: i64 = 202;
    pub const CLOCK_NANOSLEEP: i64 = 230;
    pub const EPOLL_WAIT: i64 = 232;
    pub const PSELECT6: i64 = 270;
    pub const PPOLL: i64 = 271;
    pub const EPOLL_PWAIT: i64 = 281;
    pub const EPOLL_PWAIT2: i64 = 441;
    /// fcntl commands that wait for a lock.
    pub const F_SETLKW: u64 = 7;
    pub const F_OFD_SETLKW: u64 = 38;
}

/// `prev_state` bit of an uninterruptible sleep (disk I/O, mostly).
const TASK_UNINTERRUPTIBLE: u32 = 2;

/// Entry of a syscall a thread can wait in (futex, flock, fcntl, sleeps, poll/select/epoll;
/// attached to those only, not to every syscall: the read/write family and connect already
/// stash their arguments in `ARGS`). Syscall tracepoint records carry `__syscall_nr` at 8 and
/// the arguments from 16.
#[tracepoint]
pub fn enter_waitable(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if !is_target(tgid) {
        return 0;
    }
    let nr = i64::from(unsafe { ctx.read_at::<i32>(8) }.unwrap_or(-1));
    let arg0 = unsafe { ctx.read_at::<u64>(16) }.unwrap_or(0);
    let arg1 = unsafe { ctx.read_at::<u64>(24) }.unwrap_or(0);
    match THREADS.get_ptr_mut(&tid) {
        Some(t) => unsafe {
            (*t).nr = nr;
            (*t).arg0 = arg0;
            (*t).arg1 = arg1;
        },
        None => {
            let t = ThreadSched {
                nr,
                arg0,
                arg1,
                tgid,
                ..ThreadSched::default()
            };
            let _ = THREADS.insert(&tid, &t, 0);
        }
    }
    0
}

/// The matching exits: the thread is no longer in that syscall.
#[tracepoint]
pub fn exit_waitable(_ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(t) = THREADS.get_ptr_mut(&tid) {
        unsafe { (*t).nr = NOT_IN_WAITABLE };
    }
    0
}

/// `ThreadSched::nr` when the thread is not in one of the waitable syscalls.
const NOT_IN_WAITABLE: i64 = -1;

#[tracepoint]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    let off = unsafe { core::ptr::read_volatile(&OFFSETS) };
    if let Ok(pid) = unsafe { ctx.read_at::<i32>(off.wakeup_pid as usize) } {
        woken(pid as u32);
    }
    0
}

#[inline(always)]
fn woken(pid: u32) {
    if let Some(t) = THREADS.get_ptr_mut(&pid) {
        let t = unsafe { &mut *t };
        if t.out_ts != 0 && t.wake_ts == 0 {
            t.wake_ts = unsafe { bpf_ktime_get_ns() };
        }
    }
}

/// Why a thread that left the CPU in state `state` is waiting, from the waitable syscall its
/// entry tracepoint noted and the stashed read/write arguments (the syscall-tracepoint path).
#[inline(always)]
fn reason_noted(t: &ThreadSched, tgid: u32, tid: u32, state: u32) -> u32 {
    // A read/write-family call or a connect on a downstream socket: its arguments are stashed.
    let io_downstream = || match unsafe { ARGS.get(&tid) } {
        Some(a) if a.kind == kind::CONNECT => true,
        Some(a) => unsafe {
            DS_CONNS
                .get(&ConnKey {
                    tgid,
                    fd: a.fd as u32,
                })
                .is_some()
        },
        None => false,
    };
    classify_wait(t.nr, t.arg1, t.ds_waiting != 0, state, io_downstream)
}

/// The same from the syscall the thread is in right now, read from its registers: no syscall
/// tracepoint needed.
#[inline(always)]
fn reason_regs(s: Option<Syscall>, t: &ThreadSched, tgid: u32, state: u32) -> u32 {
    let Some(s) = s else {
        return classify_wait(NOT_IN_WAITABLE, 0, false, state, || false);
    };
    let io_downstream = || {
        s.nr == sock::nr::CONNECT
            || [false, true].iter().any(|&out| {
                sock::io_args(&s, out).is_some_and(|a| unsafe {
                    DS_CONNS
                        .get(&ConnKey {
                            tgid,
                            fd: a.fd as u32,
                        })
                        .is_some()
                })
            })
    };
    classify_wait(s.nr, s.si, t.ds_waiting != 0, state, io_downstream)
}

#[inline(always)]
fn classify_wait(
    nr: i64,
    arg1: u64,
    ds_waiting: bool,
    state: u32,
    io_downstream: impl Fn() -> bool,
) -> u32 {
    let r = match nr {
        nr::FUTEX | nr::FLOCK => sched::LOCK,
        nr::FCNTL if arg1 == nr::F_SETLKW || arg1 == nr::F_OFD_SETLKW => sched::LOCK,
        nr::NANOSLEEP | nr::CLOCK_NANOSLEEP => sched::SLEEP,
        nr::POLL
        | nr::PPOLL
        | nr::SELECT
        | nr::PSELECT6
        | nr::EPOLL_WAIT
        | nr::EPOLL_PWAIT
        | nr::EPOLL_PWAIT2
            if ds_waiting =>
        {
            sched::DOWNSTREAM
        }
        nr::POLL
        | nr::PPOLL
        | nr::SELECT
        | nr::PSELECT6
        | nr::EPOLL_WAIT
        | nr::EPOLL_PWAIT
        | nr::EPOLL_PWAIT2 => {
            if state & TASK_UNINTERRUPTIBLE != 0 {
                sched::DISK
            } else {
                sched::OTHER
            }
        }
        _ if io_downstream() => sched::DOWNSTREAM,
        _ if state & TASK_UNINTERRUPTIBLE != 0 => sched::DISK,
        _ => sched::OTHER,
    };
    r as u32
}

/// sched_switch as a classic tracepoint: the fallback when kernel BTF is missing (the raw
/// tracepoint needs a `task_struct` offset, and the registers need BTF helpers).
#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let off = unsafe { core::ptr::read_volatile(&OFFSETS) };
    let next = unsafe { ctx.read_at::<i32>(off.switch_next_pid as usize) }.ok();
    let state = unsafe { ctx.read_at::<i64>(off.switch_prev_state as usize) }.unwrap_or(0) as u32;
    on_switch(&ctx, next, state, false);
    0
}

/// sched_switch as a raw tracepoint, TP_PROTO(bool preempt, struct task_struct *prev,
/// struct task_struct *next, unsigned int prev_state): no record is built for it, which matters
/// as it runs on every context switch of the machine. It also takes the off-CPU stacks of
/// the user registers of a request's thread as it leaves, for captures.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    let o = unsafe { core::ptr::read_volatile(&KOFFS) };
    // Only a target's thread has anything to charge at switch-in.
    let next = target_task_pid(ctx.arg::<u64>(2), &o);
    let state = ctx.arg::<u64>(3) as u32;
    on_switch(&ctx, next, state, true);
    0
}

/// sched_wakeup as a raw tracepoint, TP_PROTO(struct task_struct *p).
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    let o = unsafe { core::ptr::read_volatile(&KOFFS) };
    if let Some(pid) = target_task_pid(ctx.arg::<u64>(0), &o) {
        woken(pid as u32);
    }
    0
}

/// The pid (thread id) of `task` if its process is a target: the process is tested first,
/// with the array lookup, before anything per thread is looked up.
#[inline(always)]
fn target_task_pid(task: u64, o: &tracer_common::KernelOffsets) -> Option<i32> {
    let read = |off: u32| unsafe { bpf_probe_read_kernel((task + off as u64) as *const i32) };
    let tgid = read(o.task_tgid).ok()?;
    if !is_target(tgid as u32) {
        return None;
    }
    read(o.task_pid).ok()
}

#[inline(always)]
fn on_switch<C: EbpfContext + StackIdContext>(ctx: &C, next: Option<i32>, state: u32, regs: bool) {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let prev_target = tid != 0 && is_target(tgid);
    if next.is_none() && !prev_target {
        // Neither side is ours: the common case, as this runs on every switch of the machine.
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let profiling = profile::off_cpu_on();
    if let Some(next) = next {
        let next = next as u32;
        switched_in(next, now);
        if profiling {
            profile::switch_in(next, now);
        }
    }
    if !prev_target {
        return;
    }
    // Only threads inside a request: idle workers waiting in accept or for the next keep-alive
    // request are not request time. A response blocked on a slow client is.
    let Some(cur) = (unsafe { CURRENT.get(&tid) }).copied() else {
        return;
    };
    let key = ConnKey { tgid, fd: cur.fd };
    let Some(c) = CONNS.get_ptr_mut(&key) else {
        return;
    };
    let c = unsafe { &mut *c };
    if c.rec.conn_id != cur.conn_id || c.rec.seq != cur.seq {
        return;
    }
    let sys = if regs { sock::current_syscall() } else { None };
    // Blocked writing this response (a slow client, a long sendfile): still the request's time.
    // The socket path has no syscall entry to set `writing`, so it is set here and cleared by
    // the next transfer on the socket.
    if c.phase == Phase::Response as u8
        && sys.is_some_and(|s| sock::io_args(&s, true).is_some_and(|a| a.fd as u32 == cur.fd))
    {
        c.writing = 1;
    }
    let in_request = c.phase == Phase::Request as u8 || c.writing != 0;
    if !in_request {
        return;
    }
    let mut ran_from = c.rec.start_ns;
    if c.rec.sched_last_in > ran_from {
        ran_from = c.rec.sched_last_in;
    }
    if c.rec.sched_last_out > ran_from {
        ran_from = c.rec.sched_last_out;
    }
    c.rec.sched[sched::ON_CPU] += now.saturating_sub(ran_from);
    c.rec.sched_last_out = now;
    c.rec.sched[sched::SWITCHES] += 1;
    if THREADS.get_ptr(&tid).is_none() {
        // A thread that never entered a waitable syscall since attach.
        let fresh = ThreadSched {
            nr: NOT_IN_WAITABLE,
            tgid,
            ..ThreadSched::default()
        };
        let _ = THREADS.insert(&tid, &fresh, 0);
    }
    if let Some(t) = THREADS.get_ptr_mut(&tid) {
        let t = unsafe { &mut *t };
        t.out_ts = now;
        t.wake_ts = 0;
        t.conn_id = cur.conn_id;
        t.seq = cur.seq;
        t.fd = cur.fd;
        // Where its user stack is, for a capture while it stays off (three loads; the stack
        // itself is only copied if the request turns out slow).
        (t.user_ip, t.user_sp, t.user_bp) = if regs {
            crate::capture::user_regs()
        } else {
            (0, 0, 0)
        };
        // Preempted (runnable): all of the time off is waiting for a CPU.
        t.reason = if state & 0xff == 0 {
            sched::RUNQUEUE as u32
        } else if regs {
            reason_regs(sys, t, tgid, state)
        } else {
            reason_noted(t, tgid, tid, state)
        };
    }
    if profiling {
        profile::switch_out(ctx, tgid, tid, now, state);
    }
}

/// `next` runs again: charge the interval it was off to its request.
#[inline(always)]
fn switched_in(next: u32, now: u64) {
    let Some(t) = THREADS.get_ptr_mut(&next) else {
        return;
    };
    let t = unsafe { &mut *t };
    if t.out_ts == 0 {
        return;
    }
    let out = t.out_ts;
    t.out_ts = 0;
    let woke = if t.wake_ts >= out && t.wake_ts != 0 && t.reason != sched::RUNQUEUE as u32 {
        t.wake_ts
    } else if t.reason == sched::RUNQUEUE as u32 {
        out
    } else {
        now
    };
    let key = ConnKey {
        tgid: t.tgid,
        fd: t.fd,
    };
    let Some(c) = CONNS.get_ptr_mut(&key) else {
        return;
    };
    let c = unsafe { &mut *c };
    if c.rec.conn_id != t.conn_id || c.rec.seq != t.seq {
        return;
    }
    let reason = (t.reason as usize).min(sched::OTHER);
    if reason != sched::RUNQUEUE {
        c.rec.sched[reason] += woke.saturating_sub(out);
    }
    c.rec.sched[sched::RUNQUEUE] += now.saturating_sub(woke);
    c.rec.sched_last_in = now;
}
