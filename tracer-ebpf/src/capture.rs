//! Where a slow request's thread is: user and kernel stacks of watched threads, taken on CPU by
//! a sampling perf event and off CPU at the moment the thread switches out, plus the signals
//! traced processes receive (so a killed worker's record can name what killed it).

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, perf_event, raw_tracepoint, tracepoint},
    maps::{HashMap, StackTrace},
    programs::{
        tracing::StackIdContext, PerfEventContext, RawTracePointContext, TracePointContext,
    },
    EbpfContext,
};
use tracer_common::{SignalNote, StackSample};

use crate::{maps::is_target, procs::OFFSETS};

/// Threads serving a request that passed the threshold (user space adds and removes them).
#[map]
pub static WATCH: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Latest on-CPU sample of each watched thread.
#[map]
pub static ON_CPU: HashMap<u32, StackSample> = HashMap::with_max_entries(4096, 0);

/// Stack of each watched thread when it last left the CPU.
#[map]
pub static OFF_CPU: HashMap<u32, StackSample> = HashMap::with_max_entries(4096, 0);

/// Last signal generated for a traced task (tid).
#[map]
pub static SIGNALS: HashMap<u32, SignalNote> = HashMap::with_max_entries(4096, 0);

/// BPF_F_REUSE_STACKID: on a hash collision keep the newest stack, which is the one we read.
const REUSE: u64 = 1 << 10;

#[inline(always)]
pub fn sample<C: EbpfContext + StackIdContext>(ctx: &C, into: &HashMap<u32, StackSample>) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if unsafe { WATCH.get(&tid) }.is_none() {
        return;
    }
    let s = StackSample {
        ts: unsafe { bpf_ktime_get_ns() },
        user_id: ctx
            .get_stackid(&STACKS, BPF_F_USER_STACK as u64 | REUSE)
            .unwrap_or(-1),
        kern_id: ctx.get_stackid(&STACKS, REUSE).unwrap_or(-1),
    };
    let _ = into.insert(&tid, &s, 0);
}

/// One perf event per CPU serves both the slow-request captures (watched threads) and the
/// continuous profile (every target thread).
#[perf_event]
pub fn on_cpu_sample(ctx: PerfEventContext) -> u32 {
    sample(&ctx, &ON_CPU);
    let id = bpf_get_current_pid_tgid();
    crate::profile::on_cpu(&ctx, (id >> 32) as u32, id as u32);
    0
}

/// sched_switch runs in the context of the task leaving the CPU, so "current" is prev and its
/// stacks are exactly where it blocked; no task_struct field is read.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn off_cpu(ctx: RawTracePointContext) -> i32 {
    sample(&ctx, &OFF_CPU);
    0
}

#[tracepoint]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let off = unsafe { core::ptr::read_volatile(&OFFSETS) };
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(off.signal_pid as usize) }) else {
        return 0;
    };
    let pid = pid as u32;
    if !is_target(pid) {
        return 0;
    }
    let Ok(sig) = (unsafe { ctx.read_at::<i32>(off.signal_sig as usize) }) else {
        return 0;
    };
    let note = SignalNote {
        ts: unsafe { bpf_ktime_get_ns() },
        sig: sig as u32,
        sender: (bpf_get_current_pid_tgid() >> 32) as u32,
    };
    let _ = SIGNALS.insert(&pid, &note, 0);
    0
}
