//! The kernel as the agent sees it, behind one trait, as bandwhich passes all OS input through
//! one struct: the aya implementation here, a fake in the agent's unit tests, so everything
//! above the probes (enrichment order, held-back requests, the final drain) is tested without
//! root or eBPF.
//!
//! Not behind it: the stack maps the capture worker reads on its own thread, and the CPython
//! layouts the stack resolver writes; those are the capture side's own OS input.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, BorrowedFd},
};

use aya::maps::{MapData, RingBuf};
use tracer_common::{
    ConnKey, ConnState, Counter, DownstreamRecord, HandlerRecord, HandlerStack, ProfileRecord,
    RequestRecord, SignalNote,
};

use super::Probes;
use crate::events::{self, ShortRecord};

/// Everything the agent reads from and writes to the kernel while it runs.
pub trait Kernel {
    /// The next finished request from the kernel, if one is waiting.
    fn next_request(&mut self) -> Option<Result<RequestRecord, ShortRecord>>;
    /// The next downstream exchange.
    fn next_downstream(&mut self) -> Option<Result<DownstreamRecord, ShortRecord>>;
    /// The next profiling sample (None when profiling is off).
    fn next_sample(&mut self) -> Option<Result<ProfileRecord, ShortRecord>>;
    /// The next `--handler` call.
    fn next_handler_call(&mut self) -> Option<Result<HandlerRecord, ShortRecord>>;
    /// A snapshot of the served connections: each entry a consistent copy of one moment.
    fn conns(&self) -> Vec<(ConnKey, ConnState)>;
    /// A connection of a dead process.
    fn forget_conn(&mut self, key: &ConnKey);
    /// `--handler` calls in progress: (tid, stack).
    fn handler_stacks(&self) -> Vec<(u32, HandlerStack)>;
    /// The per-CPU counters, summed.
    fn counters(&self) -> HashMap<Counter, u64>;
    /// Have the kernel take stacks of this thread (a request past half the threshold), or not.
    fn watch(&mut self, tid: u32, on: bool);
    /// The last signal generated for a task.
    fn signal_note(&self, tid: u32) -> Option<SignalNote>;
    /// An fd that turns readable when request records pile up; None: drained on the timer only.
    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>>;
    /// `--cgroup`: processes arriving in cgroup `id` from now on are targets.
    fn add_target_cgroup(&mut self, _id: u64) {}
    /// Trace `tgid`, found in a target cgroup, unless it is traced already; true if it was not.
    fn adopt(&mut self, _tgid: u32) -> bool {
        false
    }
    /// Connections to local TCP port `port` are served ones.
    fn serve_port(&mut self, _port: u16) {}
    /// Mark `tgid` a target again if the kernel has unmarked it; whether it had.
    fn remark(&mut self, tgid: u32) -> bool;
}

/// The kernel through aya: the loaded programs' maps and ring buffers.
pub struct AyaKernel {
    pub probes: Probes,
    pub requests: RingBuf<MapData>,
    pub downstream: RingBuf<MapData>,
    /// Only when profiling.
    pub samples: Option<RingBuf<MapData>>,
    pub handlers: Option<RingBuf<MapData>>,
    pub watch: Option<aya::maps::HashMap<MapData, u32, u8>>,
    pub signals: Option<aya::maps::HashMap<MapData, u32, SignalNote>>,
}

fn next<T: events::Record>(ring: &mut RingBuf<MapData>) -> Option<Result<T, ShortRecord>> {
    let item = ring.next()?;
    Some(events::decode(&item))
}

impl Kernel for AyaKernel {
    fn next_request(&mut self) -> Option<Result<RequestRecord, ShortRecord>> {
        next(&mut self.requests)
    }

    fn next_downstream(&mut self) -> Option<Result<DownstreamRecord, ShortRecord>> {
        next(&mut self.downstream)
    }

    fn next_sample(&mut self) -> Option<Result<ProfileRecord, ShortRecord>> {
        next(self.samples.as_mut()?)
    }

    fn next_handler_call(&mut self) -> Option<Result<HandlerRecord, ShortRecord>> {
        next(self.handlers.as_mut()?)
    }

    fn conns(&self) -> Vec<(ConnKey, ConnState)> {
        self.probes.conns()
    }

    fn forget_conn(&mut self, key: &ConnKey) {
        self.probes.forget_conn(key);
    }

    fn handler_stacks(&self) -> Vec<(u32, HandlerStack)> {
        self.probes.handler_stacks()
    }

    fn counters(&self) -> HashMap<Counter, u64> {
        self.probes.counters()
    }

    fn watch(&mut self, tid: u32, on: bool) {
        let Some(w) = self.watch.as_mut() else {
            return;
        };
        let done = if on {
            w.insert(tid, 1, 0)
        } else {
            w.remove(&tid)
        };
        // A full watch map or a thread gone already: the capture falls back to /proc.
        if let Err(e) = done {
            log::debug!("watching tid {tid} ({on}): {e}");
        }
    }

    fn remark(&mut self, tgid: u32) -> bool {
        if self.probes.is_target(tgid) {
            return false;
        }
        match self.probes.add_target(tgid) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("marking {tgid} again: {e}");
                false
            }
        }
    }

    fn signal_note(&self, tid: u32) -> Option<SignalNote> {
        self.signals.as_ref()?.get(&tid, 0).ok()
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.requests.as_fd())
    }

    fn add_target_cgroup(&mut self, id: u64) {
        if let Err(e) = self.probes.add_target_cgroup(id) {
            log::warn!("cgroup id {id}: {e}");
        }
    }

    fn adopt(&mut self, tgid: u32) -> bool {
        if self.probes.is_target(tgid) {
            return false;
        }
        match self.probes.add_cgroup_member(tgid) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("pid {tgid} (in a --cgroup): {e}");
                false
            }
        }
    }

    fn serve_port(&mut self, port: u16) {
        if let Err(e) = self.probes.serve_port(port) {
            log::warn!("port {port}: {e}");
        }
    }
}
