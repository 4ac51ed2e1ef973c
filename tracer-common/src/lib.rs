//! Types shared by slowtrace's kernel programs and its user-space agent, and the connection state
//! machine both sides agree on.
//!
//! Everything here is `#[repr(C)]` plain data or a pure function: the eBPF side compiles it for
//! `bpfel-unknown-none`, user space decodes the same bytes, and the state machine is unit-tested on
//! the host exactly as the kernel runs it.
#![no_std]

pub mod conn;
pub mod counters;

pub use conn::{ConnKey, ConnState, EndReason, Phase, RequestRecord};
pub use counters::Counter;

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
}

/// Offsets into the `sched_process_fork` tracepoint record, read from tracefs at start-up
/// because non-syscall tracepoint layouts are not ABI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    pub fork_parent_pid: u32,
    pub fork_child_pid: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C) plain data without padding-dependent invariants.
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::RequestRecord {}
    unsafe impl aya::Pod for super::TracepointOffsets {}
}
