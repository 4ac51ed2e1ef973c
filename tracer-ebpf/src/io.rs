//! Socket syscalls of the targets: accept, the read and write families, close.
//!
//! Syscall tracepoint records are ABI: arguments at 16 + 8*i, the return value at 16.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    conn::{is_status_line, Step},
    ConnKey, ConnState, Counter, CurrentRequest, EndReason, RequestRecord, REQ_PREFIX, RESP_PREFIX,
};

use crate::maps::{count, is_target, kind, SyscallArgs, ARGS, CONNS, EVENTS, SCRATCH};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
}

/// Waking user space for every record costs a wakeup (and a context switch) per request; user
/// space drains on a short timer instead, and is woken only when the ring fills up.
const WAKE_AT_BYTES: u64 = 1024 * 1024;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

#[inline(always)]
pub fn wake_flags(ring: &aya_ebpf::maps::RingBuf, at: u64) -> u64 {
    if ring.query(BPF_RB_AVAIL_DATA) >= at {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
pub fn emit(r: &RequestRecord) {
    match EVENTS.output::<RequestRecord>(r, wake_flags(&EVENTS, WAKE_AT_BYTES)) {
        Ok(()) => count(Counter::Events),
        Err(_) => count(Counter::RingFull),
    }
}

/// Common sys_enter path: only targets, and for I/O only fds that are tracked connections.
#[inline(always)]
fn enter(ctx: &TracePointContext, k: u8) {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if !is_target(tgid) {
        return;
    }
    let fd = arg(ctx, 0) as i32;
    let ptr = match k {
        kind::SENDFILE => 0,
        _ => arg(ctx, 1),
    };
    if k != kind::ACCEPT {
        let key = ConnKey {
            tgid,
            fd: fd as u32,
        };
        match CONNS.get_ptr_mut(&key) {
            Some(conn) => {
                if k >= kind::WRITE {
                    unsafe { (*conn).writing = 1 };
                }
            }
            // A downstream socket (connected by the target)?
            None if unsafe { crate::downstream::DS_CONNS.get(&key) }.is_some() => {}
            None => return,
        }
    }
    let a = SyscallArgs {
        kind: k,
        _pad: [0; 3],
        fd,
        ptr,
    };
    if ARGS.insert(&tid, &a, 0).is_err() {
        count(Counter::ArgsMapFull);
    }
}

#[tracepoint]
pub fn enter_accept(ctx: TracePointContext) -> u32 {
    enter(&ctx, kind::ACCEPT);
    0
}

#[tracepoint]
pub fn enter_read(ctx: TracePointContext) -> u32 {
    enter(&ctx, kind::READ);
    0
}

#[tracepoint]
pub fn enter_readv(ctx: TracePointContext) -> u32 {
    enter(&ctx, kind::READV);
    0
}

#[tracepoint]
pub fn enter_recvmsg(ctx: TracePointContext) -> u32 {
    enter(&ctx, kind::RECVMSG);
    0
}

#[tracepoint]
pub fn enter_write(ctx: TracePointContext) -> u32 {
    enter(&ctx, kind::WRITE);
    0
}

#[tracepoint]
pub fn enter_writev(ctx: TracePointContext) -> u32 {
    enter(&ctx, kind::WRITEV);
    0
}

#[tracepoint]
pub fn enter_sendmsg(ctx: TracePointContext) -> u32 {
    enter(&ctx, kind::SENDMSG);
    0
}

#[tracepoint]
pub fn enter_sendfile(ctx: TracePointContext) -> u32 {
    enter(&ctx, kind::SENDFILE);
    0
}

/// close(2): finish the connection's open request, forget the connection.
#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !is_target(tgid) {
        return 0;
    }
    let key = ConnKey {
        tgid,
        fd: arg(&ctx, 0) as u32,
    };
    if let Some(conn) = CONNS.get_ptr_mut(&key) {
        let conn = unsafe { &mut *conn };
        conn.close(unsafe { bpf_ktime_get_ns() }, EndReason::Close, emit);
        let _ = CONNS.remove(&key);
    } else {
        crate::downstream::closed(&key);
    }
    0
}

/// Every traced read/write-family sys_exit: finish what the matching sys_enter stashed.
#[tracepoint]
pub fn sys_exit_io(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(a) = (unsafe { ARGS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = ARGS.remove(&tid);
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1);
    match a.kind {
        kind::READ | kind::READV | kind::RECVMSG => read_done(&a, tid, ret),
        kind::ACCEPT => {}
        _ => write_done(&a, tid, ret),
    }
    0
}

/// accept/accept4 exits. Unlike the other exits this one also works without a stash: a server
/// already blocked in accept when slowtrace attached still gets its next connection tracked
/// (without the listening fd and peer, which only the sys_enter arguments tell).
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if !is_target(tgid) {
        return 0;
    }
    let a = match unsafe { ARGS.get(&tid) }.copied() {
        Some(a) => {
            let _ = ARGS.remove(&tid);
            a
        }
        None => SyscallArgs {
            kind: kind::ACCEPT,
            _pad: [0; 3],
            fd: -1,
            ptr: 0,
        },
    };
    if a.kind == kind::ACCEPT {
        accepted(tgid, &a, unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1));
    }
    0
}

fn accepted(tgid: u32, a: &SyscallArgs, ret: i64) {
    if ret < 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let key = ConnKey {
        tgid,
        fd: ret as u32,
    };
    // A close we never saw (close_range, dup2 onto it, attach mid-way): the old request ends here.
    if let Some(old) = CONNS.get_ptr_mut(&key) {
        unsafe { &mut *old }.close(now, EndReason::FdReused, emit);
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let s = unsafe { &mut *s };
    *s = ConnState::accepted(tgid, ret as u32, a.fd, now);
    if let Ok(comm) = bpf_get_current_comm() {
        s.rec.comm = comm;
    }
    if a.ptr != 0 {
        read_peer(a.ptr as *const u8, &mut s.rec);
    }
    if CONNS.insert(&key, s, 0).is_err() {
        count(Counter::ConnMapFull);
    }
}

/// The peer address accept(2) wrote into the caller's sockaddr.
#[inline(always)]
fn read_peer(sa: *const u8, r: &mut RequestRecord) {
    let Ok(family) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user(sa as *const u16) }) else {
        return;
    };
    let Ok(port) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user(sa.add(2) as *const u16) })
    else {
        return;
    };
    r.peer_family = family;
    r.peer_port = u16::from_be(port);
    let (off, len) = match family {
        AF_INET => (4, 4),
        AF_INET6 => (8, 16),
        _ => return,
    };
    let _ =
        unsafe { aya_ebpf::helpers::bpf_probe_read_user_buf(sa.add(off), &mut r.peer_addr[..len]) };
}

/// First data pointer and its length for the buffer shapes of the read/write families.
#[inline(always)]
pub fn data_ptr(a: &SyscallArgs) -> Option<(*const u8, u64)> {
    use aya_ebpf::helpers::bpf_probe_read_user;
    let iov = match a.kind {
        kind::READ | kind::WRITE => return Some((a.ptr as *const u8, u64::MAX)),
        kind::READV | kind::WRITEV => a.ptr as *const u64,
        kind::RECVMSG | kind::SENDMSG => {
            // struct msghdr { void *msg_name; int msg_namelen; struct iovec *msg_iov; ... }
            let p = unsafe { bpf_probe_read_user((a.ptr + 16) as *const u64) }.ok()?;
            p as *const u64
        }
        _ => return None,
    };
    let base = unsafe { bpf_probe_read_user(iov) }.ok()?;
    let len = unsafe { bpf_probe_read_user(iov.add(1)) }.ok()?;
    Some((base as *const u8, len))
}

/// Copy up to `max` (≤ dst's size) bytes from user memory; returns the count copied.
#[inline(always)]
fn copy_prefix(dst: *mut u8, max: usize, src: *const u8, avail: u64) -> u16 {
    let mut n = avail;
    if n > max as u64 {
        n = max as u64;
    }
    if n == 0 {
        return 0;
    }
    let rc = unsafe { generated::bpf_probe_read_user(dst.cast(), n as u32, src.cast()) };
    if rc < 0 {
        count(Counter::PrefixFault);
        0
    } else {
        n as u16
    }
}

pub fn read_done(a: &SyscallArgs, tid: u32, ret: i64) {
    if ret <= 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = ConnKey {
        tgid,
        fd: a.fd as u32,
    };
    match CONNS.get_ptr_mut(&key) {
        Some(conn) => served_read(unsafe { &mut *conn }, a, tid, ret),
        None => crate::downstream::read(&key, tid, data_ptr(a), ret as u64),
    }
}

/// `ret > 0` bytes were read from served connection `conn`.
#[inline(always)]
pub fn served_read(conn: &mut ConnState, a: &SyscallArgs, tid: u32, ret: i64) {
    let now = unsafe { bpf_ktime_get_ns() };
    if conn.inbound(now, ret as u64, emit) != Step::RequestStarted {
        return;
    }
    conn.rec.tid = tid;
    set_current(tid, conn.rec.conn_id, conn.rec.seq, a.fd as u32);
    if let Some((p, len)) = data_ptr(a) {
        let avail = if len < ret as u64 { len } else { ret as u64 };
        conn.rec.req_len = copy_prefix(conn.rec.req.as_mut_ptr(), REQ_PREFIX, p, avail);
    }
}

/// The thread now serves this request. Updated in place when the thread has an entry already
/// (a hash update allocates and frees an element; a write through the pointer does not).
#[inline(always)]
fn set_current(tid: u32, conn_id: u64, seq: u32, fd: u32) {
    match crate::handlers::CURRENT.get_ptr_mut(&tid) {
        Some(c) => unsafe {
            (*c).conn_id = conn_id;
            (*c).seq = seq;
            (*c).fd = fd;
        },
        None => {
            let cur = CurrentRequest { conn_id, seq, fd };
            let _ = crate::handlers::CURRENT.insert(&tid, &cur, 0);
        }
    }
}

pub fn write_done(a: &SyscallArgs, tid: u32, ret: i64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = ConnKey {
        tgid,
        fd: a.fd as u32,
    };
    match CONNS.get_ptr_mut(&key) {
        Some(conn) => served_write(unsafe { &mut *conn }, a, ret),
        None if ret > 0 => crate::downstream::wrote(&key, tid, data_ptr(a), ret as u64),
        None => {}
    }
}

/// A write-family call on served connection `conn` returned `ret`.
#[inline(always)]
pub fn served_write(conn: &mut ConnState, a: &SyscallArgs, ret: i64) {
    conn.writing = 0;
    if ret <= 0 || conn.phase == tracer_common::Phase::Idle as u8 {
        return;
    }
    let data = data_ptr(a);
    // The first write of a response starts it whatever its bytes are: no need to read its head
    // first (each user-memory read is a helper call, ~10% of this program's time). Only a write
    // in the middle of a response is read, to see whether it starts the next pipelined one.
    let mut head = [0u8; 8];
    if conn.phase == tracer_common::Phase::Response as u8 {
        if let Some((p, _)) = data {
            let _ = unsafe { aya_ebpf::helpers::bpf_probe_read_user_buf(p, &mut head) };
        }
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if conn.outbound(now, ret as u64, is_status_line(&head), emit) != Step::ResponseStarted {
        return;
    }
    if let Some((p, len)) = data {
        let avail = if len < ret as u64 { len } else { ret as u64 };
        conn.rec.resp_len = copy_prefix(conn.rec.resp.as_mut_ptr(), RESP_PREFIX, p, avail);
    }
}
