//! Types shared by slowtrace's kernel programs and its user-space agent, and the connection state
//! machine both sides agree on.
//!
//! Everything here is `#[repr(C)]` plain data or a pure function: the eBPF side compiles it for
//! `bpfel-unknown-none`, user space decodes the same bytes, and the state machine is unit-tested on
//! the host exactly as the kernel runs it.
#![no_std]

pub mod conn;
pub mod counters;
pub mod downstream;
pub mod profile;
pub mod sched;

pub use conn::{ConnKey, ConnState, EndReason, Phase, RequestRecord};
pub use counters::Counter;
pub use downstream::{DownstreamRecord, DsConn};
pub use profile::{ProfileRecord, PyFrameRaw, PyProcLayout};

/// Bytes of the request kept per request: the request line and, usually, `Host`. Never the body.
pub const REQ_PREFIX: usize = 256;
/// Bytes of the response kept per request: the status line.
pub const RESP_PREFIX: usize = 32;

/// Value type of the `TARGETS` map (tgid → why it is traced).
pub mod target {
    /// Named with `--pid`, or launched with `-- CMD`.
    pub const EXPLICIT: u8 = 1;
    /// Forked by a traced process after attach.
    pub const FORKED: u8 = 2;
    /// Bound a `--port` that slowtrace watches.
    pub const PORT: u8 = 3;
    /// Runs in a `--cgroup` (or `--container`) cgroup: moved there, or exec'd there, after attach.
    pub const CGROUP: u8 = 4;
}

/// Offsets into the `sched_process_fork` tracepoint record, read from tracefs at start-up
/// because non-syscall tracepoint layouts are not ABI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    pub fork_parent_pid: u32,
    pub fork_child_pid: u32,
    /// `signal:signal_generate`: the signal number and the receiving task.
    pub signal_sig: u32,
    pub signal_pid: u32,
    /// `sched:sched_switch`: the state the previous task left in, and the next task's pid.
    pub switch_prev_state: u32,
    pub switch_next_pid: u32,
    /// `sched:sched_wakeup`: the woken task.
    pub wakeup_pid: u32,
    /// `cgroup:cgroup_attach_task`: the destination hierarchy (0: cgroup v2), cgroup id (u64)
    /// and the task moved (its thread-group leader when a whole process moves).
    pub attach_dst_root: u32,
    pub attach_dst_id: u32,
    pub attach_pid: u32,
    pub _pad: u32,
}

/// Kernel struct field offsets, looked up by user space in the running kernel's BTF and set as
/// a global before load (Rust eBPF has no CO-RE). Without BTF user space attaches the fallback
/// programs, which read none of these.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock_common` (at offset 0 of `struct sock`).
    pub sk_family: u32,
    /// Local port, host byte order.
    pub sk_num: u32,
    /// Peer port, network byte order.
    pub sk_dport: u32,
    pub sk_daddr: u32,
    pub sk_v6_daddr: u32,
    /// `struct sock`: u16 each.
    pub sk_type: u32,
    pub sk_protocol: u32,
    /// `struct unix_sock.addr`: set on a bound socket and on the sockets accepted from it.
    pub unix_addr: u32,
    /// `struct unix_sock.peer`.
    pub unix_peer: u32,
    /// `struct unix_address.name` (a `sockaddr_un`).
    pub unix_name: u32,
    /// `struct task_struct.pid` and `.tgid`.
    pub task_pid: u32,
    pub task_tgid: u32,
}

/// Native frames kept per on-CPU capture sample (return addresses, innermost first).
pub const SAMPLE_USER_FRAMES: usize = 64;
/// Kernel frames kept per on-CPU capture sample.
pub const SAMPLE_KERN_FRAMES: usize = 32;

/// Where a watched thread was when the perf event last caught it on a CPU: its user and kernel
/// stacks, copied in one program run so that both describe the same instant. Raw addresses, not
/// stack-map ids: a stack-trace map reuses a bucket on a hash collision, and an id read later
/// could then name another stack's frames.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackSample {
    /// bpf_ktime_get_ns of the sample.
    pub ts: u64,
    /// Bytes of `user` and `kern` filled (bpf_get_stack's result; negative: an error).
    pub user_len: i32,
    pub kern_len: i32,
    pub user: [u64; SAMPLE_USER_FRAMES],
    pub kern: [u64; SAMPLE_KERN_FRAMES],
}

impl Default for StackSample {
    fn default() -> Self {
        Self {
            ts: 0,
            user_len: 0,
            kern_len: 0,
            user: [0; SAMPLE_USER_FRAMES],
            kern: [0; SAMPLE_KERN_FRAMES],
        }
    }
}

impl StackSample {
    /// The user frames filled in, innermost first.
    pub fn user_frames(&self) -> &[u64] {
        let n = (self.user_len.max(0) as usize / 8).min(SAMPLE_USER_FRAMES);
        &self.user[..n]
    }

    /// The kernel frames filled in, innermost first.
    pub fn kern_frames(&self) -> &[u64] {
        let n = (self.kern_len.max(0) as usize / 8).min(SAMPLE_KERN_FRAMES);
        &self.kern[..n]
    }
}

/// The last signal generated for a traced task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalNote {
    pub ts: u64,
    pub sig: u32,
    /// tgid of the sender.
    pub sender: u32,
}

/// One call of a `--handler` function (ring buffer `HANDLER_EVENTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandlerRecord {
    pub tgid: u32,
    pub tid: u32,
    /// Which `--handler` function (the uprobe's attach cookie).
    pub handler: u32,
    /// Nesting depth of handler calls on this thread (0 = outermost).
    pub depth: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The request this thread was serving when the call started (0 when none).
    pub conn_id: u64,
    pub seq: u32,
    /// Socket of that request.
    pub fd: u32,
    /// Start of that request's bytes (its request line), copied at return: by the time user
    /// space reads the record the connection may be closed.
    pub req_len: u32,
    pub _pad: u32,
    pub req: [u8; HANDLER_REQ_PREFIX],
}

/// Bytes of the enclosing request kept with a handler call.
pub const HANDLER_REQ_PREFIX: usize = 96;

/// Calls in progress on one thread; deeper recursion is counted but not timed.
pub const HANDLER_DEPTH: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandlerStack {
    pub depth: u32,
    pub tgid: u32,
    pub handler: [u32; HANDLER_DEPTH],
    pub start_ns: [u64; HANDLER_DEPTH],
}

/// The request a thread is serving: set when it reads a new request, cleared when the request
/// is emitted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CurrentRequest {
    pub conn_id: u64,
    pub seq: u32,
    pub fd: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C) plain data without padding-dependent invariants.
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::RequestRecord {}
    unsafe impl aya::Pod for super::TracepointOffsets {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::StackSample {}
    unsafe impl aya::Pod for super::SignalNote {}
    unsafe impl aya::Pod for super::HandlerRecord {}
    unsafe impl aya::Pod for super::HandlerStack {}
    unsafe impl aya::Pod for super::CurrentRequest {}
    unsafe impl aya::Pod for super::ProfileRecord {}
    unsafe impl aya::Pod for super::PyProcLayout {}
    unsafe impl aya::Pod for super::DsConn {}
    unsafe impl aya::Pod for super::DownstreamRecord {}
    unsafe impl aya::Pod for super::sched::ThreadSched {}
}
