//! Per-connection request boundaries, shared by the kernel programs and the unit tests.
//!
//! A served connection alternates between reading a request and writing its response. The kernel
//! sees only syscalls, so the rule is byte-direction based and protocol-agnostic:
//!
//! * a request starts at the first inbound bytes on an idle connection;
//! * its response starts at the first outbound bytes after that;
//! * it ends at the last outbound bytes before the next inbound bytes, or at close.
//!
//! Pipelined HTTP/1.x requests arrive in one read, so on top of that rule an outbound write that
//! starts a new status line (`HTTP/`) while a response is already going out ends the current
//! request and starts the next one of the pipeline.
//!
//! The functions take an `emit` callback instead of returning the finished record, so the eBPF side
//! can hand the record straight from map memory to the ring buffer without a stack copy.

use crate::{REQ_PREFIX, RESP_PREFIX};

/// Key of the connection map: one served socket of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Where a connection is in its request/response cycle.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Idle = 0,
    Request = 1,
    Response = 2,
}

impl Phase {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Request,
            2 => Self::Response,
            _ => Self::Idle,
        }
    }
}

/// Why a request record was finished.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Still open (only in user-space snapshots of in-flight requests).
    None = 0,
    /// The server closed the connection.
    Close = 1,
    /// The next request arrived on the same (keep-alive) connection.
    NextRequest = 2,
    /// The next response of a pipeline started.
    Pipelined = 3,
    /// The fd number was handed out again by accept before we saw a close.
    FdReused = 4,
    /// User space: the connection was quiet after the response long enough to call it done.
    Idle = 5,
    /// User space: still running when tracing stopped.
    InFlight = 6,
    /// User space: the serving process exited with the request open.
    ProcessExit = 7,
}

impl EndReason {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Close,
            2 => Self::NextRequest,
            3 => Self::Pipelined,
            4 => Self::FdReused,
            5 => Self::Idle,
            6 => Self::InFlight,
            7 => Self::ProcessExit,
            _ => Self::None,
        }
    }
}

/// `RequestRecord::flags`: this request was pipelined behind an earlier one on the same read.
pub const FLAG_PIPELINED: u8 = 1;

/// One request as the kernel saw it. This is the ring-buffer event (one per request).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RequestRecord {
    pub tgid: u32,
    /// Thread that read the request: the one serving it.
    pub tid: u32,
    pub fd: u32,
    /// Listening socket the connection was accepted from (-1 unknown); user space maps it to a port.
    pub listen_fd: i32,
    /// Accept time in ns: together with (tgid, fd) it names the connection even after fd reuse.
    pub conn_id: u64,
    /// Index of this request on its connection, from 0.
    pub seq: u32,
    pub end_reason: u8,
    pub flags: u8,
    /// Valid bytes in `req`.
    pub req_len: u16,
    /// Valid bytes in `resp`.
    pub resp_len: u16,
    /// AF_INET, AF_INET6, AF_UNIX or 0 when unknown.
    pub peer_family: u16,
    /// Host byte order.
    pub peer_port: u16,
    /// Position in a pipeline (0 = first request of the read).
    pub pipeline_index: u16,
    pub peer_addr: [u8; 16],
    /// Local port of a TCP connection, host byte order (0: unknown; then `listen_fd` says).
    pub local_port: u16,
    pub _pad_port: [u16; 3],
    pub start_ns: u64,
    /// First outbound byte; 0 when no response was written.
    pub resp_ns: u64,
    /// Last outbound byte, or the close when there was no response.
    pub end_ns: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub comm: [u8; 16],
    /// Start of the request bytes (request line, headers), never more than `REQ_PREFIX`.
    pub req: [u8; REQ_PREFIX],
    /// Start of the response bytes (status line).
    pub resp: [u8; RESP_PREFIX],
    /// Where the serving thread's time went while the request ran (`crate::sched` indices, ns).
    pub sched: [u64; crate::sched::PARTS],
    /// Last time the serving thread got the CPU back during the request (0: it never left).
    pub sched_last_in: u64,
    /// Last time it left the CPU during the request. If a switch-in was missed (a tracepoint
    /// program can be skipped when another BPF program runs on that CPU), counting the next
    /// on-CPU segment from here instead of the older `sched_last_in` avoids counting a segment
    /// twice.
    pub sched_last_out: u64,
}

impl RequestRecord {
    pub const fn zeroed() -> Self {
        Self {
            tgid: 0,
            tid: 0,
            fd: 0,
            listen_fd: -1,
            conn_id: 0,
            seq: 0,
            end_reason: 0,
            flags: 0,
            req_len: 0,
            resp_len: 0,
            peer_family: 0,
            peer_port: 0,
            pipeline_index: 0,
            peer_addr: [0; 16],
            local_port: 0,
            _pad_port: [0; 3],
            start_ns: 0,
            resp_ns: 0,
            end_ns: 0,
            bytes_in: 0,
            bytes_out: 0,
            comm: [0; 16],
            req: [0; REQ_PREFIX],
            resp: [0; RESP_PREFIX],
            sched: [0; crate::sched::PARTS],
            sched_last_in: 0,
            sched_last_out: 0,
        }
    }
}

/// Value of the connection map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnState {
    /// A `Phase`.
    pub phase: u8,
    /// Non-zero while a write-family syscall on this socket is in progress, so user space does
    /// not call a long `sendfile` finished just because no write has returned for a while.
    pub writing: u8,
    pub _pad: [u8; 6],
    /// The kernel `struct sock` (0 when unknown, on the syscall path): a different socket under
    /// the same fd number means the fd was reused without a close we saw.
    pub sk: u64,
    pub rec: RequestRecord,
}

/// What the caller must do after an inbound or outbound step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to capture.
    Continue,
    /// A new request began: capture the request prefix (tid, comm, bytes).
    RequestStarted,
    /// The response began: capture the response prefix.
    ResponseStarted,
}

impl ConnState {
    /// A freshly accepted connection.
    pub const fn accepted(tgid: u32, fd: u32, listen_fd: i32, now: u64) -> Self {
        let mut rec = RequestRecord::zeroed();
        rec.tgid = tgid;
        rec.fd = fd;
        rec.listen_fd = listen_fd;
        rec.conn_id = now;
        Self {
            phase: Phase::Idle as u8,
            writing: 0,
            _pad: [0; 6],
            sk: 0,
            rec,
        }
    }

    pub const fn phase(&self) -> Phase {
        Phase::from_u8(self.phase)
    }

    /// `n` bytes were read from the socket at `now` (n > 0).
    #[inline(always)]
    pub fn inbound(&mut self, now: u64, n: u64, emit: impl FnOnce(&RequestRecord)) -> Step {
        match self.phase() {
            Phase::Idle => {
                self.begin(now, n, false);
                Step::RequestStarted
            }
            Phase::Request => {
                self.rec.bytes_in += n;
                Step::Continue
            }
            Phase::Response => {
                self.finish(EndReason::NextRequest, emit);
                self.begin(now, n, false);
                Step::RequestStarted
            }
        }
    }

    /// `n` bytes were written at `now` (n > 0); `status_line` says they start with `HTTP/`.
    #[inline(always)]
    pub fn outbound(
        &mut self,
        now: u64,
        n: u64,
        status_line: bool,
        emit: impl FnOnce(&RequestRecord),
    ) -> Step {
        match self.phase() {
            // Server speaks first (banners, non-HTTP protocols): not part of a request.
            Phase::Idle => Step::Continue,
            Phase::Request => {
                self.phase = Phase::Response as u8;
                self.rec.resp_ns = now;
                self.rec.end_ns = now;
                self.rec.bytes_out += n;
                Step::ResponseStarted
            }
            Phase::Response if status_line => {
                // The next response of a pipeline: the server turned to the next request when it
                // finished writing the previous response.
                let turn = self.rec.end_ns;
                self.finish(EndReason::Pipelined, emit);
                self.begin(turn, 0, true);
                self.phase = Phase::Response as u8;
                self.rec.resp_ns = now;
                self.rec.end_ns = now;
                self.rec.bytes_out = n;
                Step::ResponseStarted
            }
            Phase::Response => {
                self.rec.end_ns = now;
                self.rec.bytes_out += n;
                Step::Continue
            }
        }
    }

    /// The connection is going away (close, or its fd number was reused).
    #[inline(always)]
    pub fn close(&mut self, now: u64, reason: EndReason, emit: impl FnOnce(&RequestRecord)) {
        match self.phase() {
            Phase::Idle => {}
            Phase::Request => {
                self.rec.end_ns = now;
                self.finish(reason, emit);
            }
            Phase::Response => self.finish(reason, emit),
        }
    }

    #[inline(always)]
    fn finish(&mut self, reason: EndReason, emit: impl FnOnce(&RequestRecord)) {
        self.rec.end_reason = reason as u8;
        emit(&self.rec);
        self.phase = Phase::Idle as u8;
    }

    /// Reset the per-request fields. A pipelined request keeps the request prefix of the read it
    /// arrived in; user space finds its own request line there by `pipeline_index`.
    #[inline(always)]
    fn begin(&mut self, now: u64, n: u64, pipelined: bool) {
        let r = &mut self.rec;
        if r.start_ns != 0 {
            r.seq += 1;
        }
        if pipelined {
            r.flags |= crate::conn::FLAG_PIPELINED;
            r.pipeline_index += 1;
        } else {
            r.flags = 0;
            r.pipeline_index = 0;
            r.req_len = 0;
        }
        r.end_reason = EndReason::None as u8;
        r.start_ns = now;
        r.resp_ns = 0;
        r.end_ns = 0;
        r.bytes_in = n;
        r.bytes_out = 0;
        r.resp_len = 0;
        r.sched = [0; crate::sched::PARTS];
        r.sched_last_in = 0;
        r.sched_last_out = 0;
        self.phase = Phase::Request as u8;
    }
}

/// Whether bytes start an HTTP/1.x status line.
#[inline(always)]
pub fn is_status_line(head: &[u8; 8]) -> bool {
    head[0] == b'H' && head[1] == b'T' && head[2] == b'T' && head[3] == b'P' && head[4] == b'/'
}

#[cfg(test)]
mod tests;
