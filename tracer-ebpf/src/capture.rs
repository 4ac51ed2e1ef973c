//! Where a slow request's thread is: user and kernel stacks of watched threads taken on CPU by a
//! sampling perf event, the user registers of a request's thread where it leaves the CPU
//! (`user_regs`, kept by the sched program), plus the signals traced processes receive (so a
//! killed worker's record can name what killed it).

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{self, bpf_get_stack},
    },
    macros::{map, perf_event, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{PerfEventContext, TracePointContext},
    EbpfContext,
};
use tracer_common::{SignalNote, StackSample, SAMPLE_KERN_FRAMES, SAMPLE_USER_FRAMES};

use crate::{maps::is_target, procs::OFFSETS};

/// Threads serving a request that passed the threshold (user space adds and removes them).
#[map]
pub static WATCH: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Latest on-CPU sample of each watched thread (~800 bytes each, preallocated: 1.6 MB).
#[map]
pub static ON_CPU: HashMap<u32, StackSample> = HashMap::with_max_entries(2048, 0);

/// Where a sample is built: it is bigger than the 512-byte BPF stack.
#[map]
static SAMPLE_SCRATCH: PerCpuArray<StackSample> = PerCpuArray::with_max_entries(1, 0);

/// Last signal generated for a traced task (tid).
#[map]
pub static SIGNALS: HashMap<u32, SignalNote> = HashMap::with_max_entries(4096, 0);

/// Both stacks of a watched thread, from one program run, so they describe one instant.
#[inline(always)]
fn sample<C: EbpfContext>(ctx: &C, tid: u32) {
    if unsafe { WATCH.get(&tid) }.is_none() {
        return;
    }
    let Some(s) = SAMPLE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let s = unsafe { &mut *s };
    s.ts = unsafe { bpf_ktime_get_ns() };
    s.user_len = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            s.user.as_mut_ptr().cast(),
            (SAMPLE_USER_FRAMES * 8) as u32,
            BPF_F_USER_STACK as u64,
        )
    } as i32;
    s.kern_len = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            s.kern.as_mut_ptr().cast(),
            (SAMPLE_KERN_FRAMES * 8) as u32,
            0,
        )
    } as i32;
    let _ = ON_CPU.insert(&tid, s, 0);
}

/// The current task's user registers as saved at its entry into the kernel: instruction, stack
/// and frame pointer. Read through the BTF pointer `bpf_task_pt_regs` returns (verifier-checked
/// direct loads at `struct pt_regs` offsets: bp is word 4, ip 16, sp 19 on x86-64).
#[inline(always)]
pub fn user_regs() -> (u64, u64, u64) {
    let task = unsafe { generated::bpf_get_current_task_btf() };
    let regs = unsafe { generated::bpf_task_pt_regs(task) } as *const u64;
    unsafe {
        (
            core::ptr::read_volatile(regs.add(16)),
            core::ptr::read_volatile(regs.add(19)),
            core::ptr::read_volatile(regs.add(4)),
        )
    }
}

/// One perf event per CPU serves both the slow-request captures (watched threads) and the
/// continuous profile (every target thread).
#[perf_event]
pub fn on_cpu_sample(ctx: PerfEventContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    sample(&ctx, id as u32);
    crate::profile::on_cpu(&ctx, (id >> 32) as u32, id as u32);
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
