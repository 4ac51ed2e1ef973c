//! Continuous profiling of the targets: an on-CPU sample of whatever target thread is running
//! when the perf event fires, and an off-CPU record for each time a thread serving a request
//! leaves the CPU, weighted by how long it stayed off. Each carries user, kernel and Python
//! stacks and the request the thread was serving.
//!
//! Off CPU, the stacks are taken at switch-out (sched_switch runs in the leaving task's context,
//! so its user memory and registers are the ones to read), parked per thread, and sent when the
//! thread is switched back in, with the duration.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_stack, bpf_probe_read_kernel},
    },
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
    EbpfContext,
};
use tracer_common::{
    profile::{sample_kind, KERN_FRAMES, SAMPLE_REQ_PREFIX, USER_FRAMES},
    ConnKey, Counter, Phase, ProfileRecord,
};

use crate::{
    handlers::CURRENT,
    maps::{count, is_target, CONNS},
    pywalk,
};

/// Which profiles user space asked for (`profile_flags`), set before load.
#[unsafe(no_mangle)]
pub static PROFILE_FLAGS: u32 = 0;
pub const PROFILE_ON_CPU: u32 = 1;
pub const PROFILE_OFF_CPU: u32 = 2;

#[map]
pub static SAMPLES: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Off-CPU records waiting for their thread to run again.
#[map]
static OFF_PENDING: HashMap<u32, ProfileRecord> = HashMap::with_max_entries(1024, 0);

/// Where an off-CPU record is built (too big for the BPF stack).
#[map]
static PROFILE_SCRATCH: PerCpuArray<ProfileRecord> = PerCpuArray::with_max_entries(1, 0);

/// Fill everything but the kind and timing. Returns the request's phase (Idle when none).
#[inline(always)]
fn fill<C: EbpfContext>(ctx: &C, rec: &mut ProfileRecord, tgid: u32, tid: u32) -> Phase {
    rec.tgid = tgid;
    rec.tid = tid;
    rec.conn_id = 0;
    rec.seq = 0;
    rec.fd = 0;
    rec.req_len = 0;
    let mut phase = Phase::Idle;
    if let Some(cur) = unsafe { CURRENT.get(&tid) } {
        let key = ConnKey { tgid, fd: cur.fd };
        if let Some(c) = unsafe { CONNS.get(&key) } {
            if cur.conn_id != 0 && c.rec.conn_id == cur.conn_id && c.rec.seq == cur.seq {
                phase = Phase::from_u8(c.phase);
                rec.conn_id = cur.conn_id;
                rec.seq = cur.seq;
                rec.fd = cur.fd;
                let n = (c.rec.req_len as usize).min(SAMPLE_REQ_PREFIX);
                rec.req.copy_from_slice(&c.rec.req[..SAMPLE_REQ_PREFIX]);
                rec.req_len = n as u32;
            }
        }
    }
    rec.user_len = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            rec.user.as_mut_ptr().cast(),
            (USER_FRAMES * 8) as u32,
            BPF_F_USER_STACK as u64,
        )
    } as i32;
    rec.kern_len = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            rec.kern.as_mut_ptr().cast(),
            (KERN_FRAMES * 8) as u32,
            0,
        )
    } as i32;
    pywalk::walk(rec, tgid, tid);
    phase
}

/// Called from the perf-event program for every tick on a target's thread.
#[inline(always)]
pub fn on_cpu<C: EbpfContext>(ctx: &C, tgid: u32, tid: u32) {
    let flags = unsafe { core::ptr::read_volatile(&PROFILE_FLAGS) };
    if flags & PROFILE_ON_CPU == 0 || !is_target(tgid) {
        return;
    }
    let Some(mut slot) = SAMPLES.reserve::<ProfileRecord>(0) else {
        count(Counter::SampleRingFull);
        return;
    };
    let rec = unsafe { &mut *slot.as_mut_ptr() };
    rec.kind = sample_kind::ON_CPU;
    rec.state = 0;
    rec.ts = unsafe { bpf_ktime_get_ns() };
    rec.off_ns = 0;
    let phase = fill(ctx, rec, tgid, tid);
    if phase == Phase::Idle {
        // Between requests: the sample counts for the process, not for a request.
        rec.conn_id = 0;
        rec.req_len = 0;
    }
    slot.submit(crate::io::wake_flags(&SAMPLES, 512 * 1024));
    count(Counter::Samples);
}

/// The thread `next` is switched in: send its parked off-CPU record with the time it was off.
#[inline(always)]
pub fn switch_in(next: u32, now: u64) {
    let Some(p) = OFF_PENDING.get_ptr(&next) else {
        return;
    };
    match SAMPLES.reserve::<ProfileRecord>(0) {
        Some(mut slot) => {
            let out = slot.as_mut_ptr();
            unsafe {
                bpf_probe_read_kernel(
                    out.cast(),
                    core::mem::size_of::<ProfileRecord>() as u32,
                    p.cast(),
                );
                (*out).off_ns = now.saturating_sub((*out).ts);
            }
            slot.submit(crate::io::wake_flags(&SAMPLES, 512 * 1024));
            count(Counter::Samples);
        }
        None => count(Counter::SampleRingFull),
    }
    let _ = OFF_PENDING.remove(&next);
}

/// The current thread, serving a request (checked by the caller), leaves the CPU: park its
/// stacks until it runs again.
#[inline(always)]
pub fn switch_out<C: EbpfContext>(ctx: &C, tgid: u32, tid: u32, now: u64, state: u32) {
    let Some(rec) = PROFILE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let rec = unsafe { &mut *rec };
    rec.kind = sample_kind::OFF_CPU;
    rec.state = state;
    rec.ts = now;
    rec.off_ns = 0;
    fill(ctx, rec, tgid, tid);
    if OFF_PENDING.insert(&tid, rec, 0).is_err() {
        count(Counter::OffCpuMapFull);
    }
}

/// Off-CPU profiling asked for.
#[inline(always)]
pub fn off_cpu_on() -> bool {
    let flags = unsafe { core::ptr::read_volatile(&PROFILE_FLAGS) };
    flags & PROFILE_OFF_CPU != 0
}

/// A thread exited: nothing of it may stay parked.
#[inline(always)]
pub fn forget_thread(tid: u32) {
    let _ = OFF_PENDING.remove(&tid);
    pywalk::forget_thread(tid);
}
