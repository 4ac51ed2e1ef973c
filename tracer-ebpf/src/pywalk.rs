//! The in-kernel Python frame walker: from the current thread's `PyThreadState` down its chain of
//! `_PyInterpreterFrame`s (3.11+) or `PyFrameObject`s (3.9/3.10), keeping each frame's code
//! object and instruction pointer (`f_lasti` for 3.9/3.10). User space
//! resolves those to function, file and line later (code objects are long-lived and cached), so
//! a sample describes the thread at the instant it was taken, without pausing it.
//!
//! Layouts come from user space per process (`PY_PROCS`), one per CPython version; the walk
//! reads at most `PY_FRAMES` frame headers, one `bpf_probe_read_user` each.

use aya_ebpf::{
    bindings::bpf_pidns_info,
    helpers::{
        bpf_probe_read_user, bpf_probe_read_user_buf, generated::bpf_get_ns_current_pid_tgid,
    },
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use tracer_common::{
    profile::{py_status, NO_FIELD, PY_FLAG_ENTRY, PY_FRAMES, PY_OWNER_MASK},
    ProfileRecord, PyFrameRaw, PyProcLayout,
};

/// tgid → where its CPython keeps things. Copied to children at fork (procs.rs).
#[map]
pub static PY_PROCS: HashMap<u32, PyProcLayout> = HashMap::with_max_entries(8192, 0);

/// tid → its `PyThreadState` address, found once by walking the interpreter's thread list.
#[map]
static PY_TSTATE: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Bytes of a frame header read at once; every field we need lies within it (3.11: 72 bytes,
/// 3.9's `PyFrameObject` through `f_lasti`: 108).
const FRAME_READ: usize = 136;
/// Thread states looked at per lookup (one interpreter).
const MAX_THREADS: usize = 32;

/// One frame header, off the 512-byte BPF stack.
#[map]
static FRAME_BUF: PerCpuArray<[u8; FRAME_READ]> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The TID a thread state belongs to: its `native_thread_id` (3.11+), or the `tid` of the
/// `struct pthread` its `thread_id` points to (3.9/3.10).
#[inline(always)]
fn thread_of(l: &PyProcLayout, ts: u64) -> Option<u64> {
    let id = read_u64(ts + l.tstate_native_thread_id as u64)?;
    if l.pthread_tid == NO_FIELD {
        return Some(id);
    }
    unsafe { bpf_probe_read_user((id + l.pthread_tid as u64) as *const u32) }
        .ok()
        .map(u64::from)
}

/// The thread state of host thread `tid`, whose TID in its own namespace is `own`, validated
/// by its `native_thread_id` (a cached address may belong to a thread that exited).
#[inline(always)]
fn tstate(l: &PyProcLayout, tid: u32, own: u32) -> Option<u64> {
    if let Some(&ts) = unsafe { PY_TSTATE.get(&tid) } {
        if thread_of(l, ts) == Some(own as u64) {
            return Some(ts);
        }
    }
    let interp = read_u64(l.runtime + l.runtime_interp_head as u64)?;
    let mut ts = read_u64(interp + l.interp_threads_head as u64)?;
    for _ in 0..MAX_THREADS {
        if ts == 0 {
            return None;
        }
        if thread_of(l, ts) == Some(own as u64) {
            let _ = PY_TSTATE.insert(&tid, &ts, 0);
            return Some(ts);
        }
        ts = read_u64(ts + l.tstate_next as u64)?;
    }
    None
}

#[inline(always)]
fn field_u64(buf: &[u8; FRAME_READ], off: u32) -> u64 {
    // The mask bounds the offset for the verifier: 127 + 8 <= FRAME_READ.
    let off = (off & 0x7f) as usize;
    unsafe { core::ptr::read_unaligned(buf.as_ptr().add(off) as *const u64) }
}

#[inline(always)]
fn field_u8(buf: &[u8; FRAME_READ], off: u32) -> u8 {
    let off = (off & 0x7f) as usize;
    unsafe { *buf.as_ptr().add(off) }
}

/// The TID the current thread has in the process's own PID namespace: what CPython recorded in
/// its thread state. The host TID when the process shares ours (`pidns_ino` 0); None when the
/// helper refuses (the namespace is not the current task's own: it cannot be, as the layout was
/// registered for this process and its forks, which share it, unless a child unshared since).
#[inline(always)]
fn own_tid(l: &PyProcLayout, tid: u32) -> Option<u32> {
    if l.pidns_ino == 0 {
        return Some(tid);
    }
    let mut ns = bpf_pidns_info { pid: 0, tgid: 0 };
    let r = unsafe {
        bpf_get_ns_current_pid_tgid(
            l.pidns_dev,
            l.pidns_ino,
            &mut ns,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    (r == 0).then_some(ns.pid)
}

/// Fill `rec.py`, `rec.py_flags`, `rec.py_n` and `rec.py_status` for the current thread.
#[inline(always)]
pub fn walk(rec: &mut ProfileRecord, tgid: u32, tid: u32) {
    rec.py_n = 0;
    let Some(l) = (unsafe { PY_PROCS.get(&tgid) }) else {
        rec.py_status = py_status::NOT_PYTHON;
        return;
    };
    let l = *l;
    // The cache stays keyed by the host TID; thread states are matched by the process's own.
    let Some(ts) = own_tid(&l, tid).and_then(|own| tstate(&l, tid, own)) else {
        rec.py_status = py_status::NO_THREAD;
        return;
    };
    let Some(mut frame) = read_u64(ts + l.tstate_frame as u64) else {
        rec.py_status = py_status::READ_FAILED;
        return;
    };
    if l.cframe_current != NO_FIELD && frame != 0 {
        match read_u64(frame + l.cframe_current as u64) {
            Some(f) => frame = f,
            None => {
                rec.py_status = py_status::READ_FAILED;
                return;
            }
        }
    }
    let Some(buf) = FRAME_BUF.get_ptr_mut(0) else {
        return;
    };
    let buf = unsafe { &mut *buf };
    rec.py_status = py_status::OK;
    let mut n = 0usize;
    for i in 0..PY_FRAMES {
        if frame == 0 {
            break;
        }
        if unsafe { bpf_probe_read_user_buf(frame as *const u8, buf) }.is_err() {
            rec.py_status = py_status::READ_FAILED;
            break;
        }
        rec.py[i] = PyFrameRaw {
            code: field_u64(buf, l.frame_code),
            instr: field_u64(buf, l.frame_instr),
        };
        let mut flags = 0;
        if l.frame_owner != NO_FIELD {
            flags = field_u8(buf, l.frame_owner) & PY_OWNER_MASK;
        }
        if l.frame_objects != 0
            || (l.frame_is_entry != NO_FIELD && field_u8(buf, l.frame_is_entry) != 0)
        {
            flags |= PY_FLAG_ENTRY;
        }
        rec.py_flags[i] = flags;
        n = i + 1;
        frame = field_u64(buf, l.frame_previous);
    }
    if n == PY_FRAMES && frame != 0 {
        rec.py_status = py_status::TRUNCATED;
    }
    rec.py_n = n as u32;
}

/// Forget a thread's cached thread state (it exited).
#[inline(always)]
pub fn forget_thread(tid: u32) {
    let _ = PY_TSTATE.remove(&tid);
}
