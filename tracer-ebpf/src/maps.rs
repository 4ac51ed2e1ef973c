//! Maps shared with user space. Sizes are defaults; user space may override max_entries at load.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use tracer_common::{ConnKey, ConnState, Counter};

/// tgid (or tid of a forked child) → why it is traced (`tracer_common::target`; 0: it is not),
/// indexed by pid. An array lookup is inlined by the verifier, where a hash lookup is a call
/// and a hash: this test runs first in every program, on every socket transfer and context
/// switch of the machine. User space sizes it to pid_max (4 MB at the largest pid_max).
#[map]
pub static TARGETS: Array<u8> = Array::with_max_entries(4_194_304, 0);

/// TCP ports whose binder becomes a target (`--port`), host byte order → 1.
#[map]
pub static WATCH_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

/// Served connections of the targets.
#[map]
pub static CONNS: HashMap<ConnKey, ConnState> = HashMap::with_max_entries(16384, 0);

/// Syscall arguments between sys_enter and sys_exit, per thread.
#[map]
pub static ARGS: HashMap<u32, SyscallArgs> = HashMap::with_max_entries(16384, 0);

/// One `RequestRecord` (~480 bytes) per finished request. User space drains it every 50 ms and
/// is woken at 1 MB: 4 MB hold 8,000 requests, 80 ms at 100k requests/s. Its pages are mapped
/// twice into the agent (the data area is mapped again for wrap-around), so its size counts
/// double in the agent's RSS.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Drops and errors, per CPU (`tracer_common::Counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Scratch space to build a `ConnState` off the 512-byte BPF stack.
#[map]
pub static SCRATCH: PerCpuArray<ConnState> = PerCpuArray::with_max_entries(1, 0);

/// What a sys_enter program saw, for its sys_exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    pub kind: u8,
    pub _pad: [u8; 3],
    pub fd: i32,
    /// Buffer, iovec array, msghdr or sockaddr pointer, depending on `kind`.
    pub ptr: u64,
}

/// `SyscallArgs::kind`.
pub mod kind {
    pub const ACCEPT: u8 = 1;
    pub const READ: u8 = 2;
    pub const READV: u8 = 3;
    pub const RECVMSG: u8 = 4;
    pub const WRITE: u8 = 5;
    pub const WRITEV: u8 = 6;
    pub const SENDMSG: u8 = 7;
    pub const SENDFILE: u8 = 8;
    pub const CONNECT: u8 = 9;
}

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // Per-CPU slot: no other writer, a plain add is enough.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn is_target(tgid: u32) -> bool {
    TARGETS.get(tgid).is_some_and(|v| *v != 0)
}

/// Mark `tgid` traced (`why`, a `tracer_common::target` value) or not (0). False when the pid
/// is beyond the array (pid_max raised after start).
#[inline(always)]
pub fn set_target(tgid: u32, why: u8) -> bool {
    match TARGETS.get_ptr_mut(tgid) {
        Some(p) => {
            unsafe { *p = why };
            true
        }
        None => false,
    }
}
