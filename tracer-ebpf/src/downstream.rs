//! Downstream calls: sockets a target connects (TCP, Unix) are followed; on each, a write after
//! an answer (or the first write) starts an exchange, and the first byte read back ends its wait.
//! One record per exchange, sent when the answer starts, carrying the start of what was sent
//! (the statement or command; user space fingerprints it, values never leave it) and the served
//! request the thread was in.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tracer_common::{
    downstream::{ds_phase, DS_ADDR, DS_GREETING, DS_PREFIX},
    ConnKey, Counter, DownstreamRecord, DsConn,
};

use crate::{
    handlers::CURRENT,
    maps::{count, is_target, kind, SyscallArgs, ARGS},
    sched::THREADS,
};

#[map]
pub static DS_CONNS: HashMap<ConnKey, DsConn> = HashMap::with_max_entries(16384, 0);

/// Polled every 50 ms: 2 MB hold ~7,000 exchanges (~300 bytes each).
#[map]
pub static DS_EVENTS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

/// A `DsConn` being built (too big for the BPF stack).
#[map]
pub static DS_SCRATCH: PerCpuArray<DsConn> = PerCpuArray::with_max_entries(1, 0);

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = -115;

#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
}

#[tracepoint]
pub fn enter_connect(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if !is_target(tgid) {
        return 0;
    }
    let a = SyscallArgs {
        kind: kind::CONNECT,
        _pad: [0; 3],
        fd: arg(&ctx, 0) as i32,
        ptr: arg(&ctx, 1),
    };
    if ARGS.insert(&tid, &a, 0).is_err() {
        count(Counter::ArgsMapFull);
    }
    0
}

/// connect(2) returned: success, or in progress for a non-blocking socket.
#[tracepoint]
pub fn exit_connect(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let Some(a) = (unsafe { ARGS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = ARGS.remove(&tid);
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1);
    if a.kind != kind::CONNECT || (ret != 0 && ret != EINPROGRESS) || a.ptr == 0 {
        return 0;
    }
    let sa = a.ptr as *const u8;
    let Ok(family) = (unsafe { bpf_probe_read_user(sa as *const u16) }) else {
        return 0;
    };
    if family != AF_INET && family != AF_INET6 && family != AF_UNIX {
        return 0;
    }
    let Some(d) = DS_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let d = unsafe { &mut *d };
    d.conn_id = unsafe { bpf_ktime_get_ns() };
    d.start_ns = 0;
    d.tid = tid;
    d.phase = ds_phase::IDLE;
    d.greeting_len = 0;
    d.family = family;
    d.port = 0;
    d.req_len = 0;
    d.exchanges = 0;
    d.addr = [0; DS_ADDR];
    d.sk = 0;
    match family {
        AF_UNIX => {
            let _ = unsafe { aya_ebpf::helpers::bpf_probe_read_user_buf(sa.add(2), &mut d.addr) };
        }
        _ => {
            if let Ok(p) = unsafe { bpf_probe_read_user(sa.add(2) as *const u16) } {
                d.port = u16::from_be(p);
            }
            let (off, len) = if family == AF_INET { (4, 4) } else { (8, 16) };
            let _ = unsafe {
                aya_ebpf::helpers::bpf_probe_read_user_buf(sa.add(off), &mut d.addr[..len])
            };
        }
    }
    let key = ConnKey {
        tgid,
        fd: a.fd as u32,
    };
    if DS_CONNS.insert(&key, d, 0).is_err() {
        count(Counter::DownstreamMapFull);
    } else {
        count(Counter::DownstreamConns);
    }
    0
}

/// The thread wrote `n > 0` bytes from `data` to downstream socket `key`.
#[inline(always)]
pub fn wrote(key: &ConnKey, tid: u32, data: Option<(*const u8, u64)>, n: u64) {
    let Some(d) = DS_CONNS.get_ptr_mut(key) else {
        return;
    };
    let d = unsafe { &mut *d };
    if d.phase == ds_phase::SENT {
        // More of the same request.
        return;
    }
    d.phase = ds_phase::SENT;
    d.start_ns = unsafe { bpf_ktime_get_ns() };
    d.tid = tid;
    d.req_len = 0;
    if let Some((p, len)) = data {
        let mut take = if len < n { len } else { n };
        if take > DS_PREFIX as u64 {
            take = DS_PREFIX as u64;
        }
        if take > 0 {
            let rc = unsafe {
                generated::bpf_probe_read_user(d.req.as_mut_ptr().cast(), take as u32, p.cast())
            };
            if rc == 0 {
                d.req_len = take as u16;
            } else {
                count(Counter::PrefixFault);
            }
        }
    }
    if let Some(t) = THREADS.get_ptr_mut(&tid) {
        unsafe { (*t).ds_waiting = 1 };
    }
}

/// The thread read `n > 0` bytes from downstream socket `key`.
#[inline(always)]
pub fn read(key: &ConnKey, tid: u32, data: Option<(*const u8, u64)>, n: u64) {
    let Some(d) = DS_CONNS.get_ptr_mut(key) else {
        return;
    };
    let d = unsafe { &mut *d };
    match d.phase {
        ds_phase::SENT => {}
        ds_phase::IDLE if d.exchanges == 0 && d.greeting_len == 0 => {
            // The server spoke first (MySQL's handshake): keep it for recognition.
            if let Some((p, len)) = data {
                let mut take = if len < n { len } else { n };
                if take > DS_GREETING as u64 {
                    take = DS_GREETING as u64;
                }
                let rc = unsafe {
                    generated::bpf_probe_read_user(
                        d.greeting.as_mut_ptr().cast(),
                        take as u32,
                        p.cast(),
                    )
                };
                if rc == 0 {
                    d.greeting_len = take as u8;
                }
            }
            return;
        }
        _ => return,
    }
    d.phase = ds_phase::ANSWERED;
    if let Some(t) = THREADS.get_ptr_mut(&tid) {
        unsafe { (*t).ds_waiting = 0 };
    }
    let index = d.exchanges;
    d.exchanges += 1;
    let cur = unsafe { CURRENT.get(&d.tid) }.copied().unwrap_or_default();
    let Some(mut slot) = DS_EVENTS.reserve::<DownstreamRecord>(0) else {
        count(Counter::DownstreamRingFull);
        return;
    };
    let out = unsafe { &mut *slot.as_mut_ptr() };
    out.tgid = key.tgid;
    out.tid = d.tid;
    out.fd = key.fd;
    out.index = index;
    out.ds_conn_id = d.conn_id;
    out.start_ns = d.start_ns;
    out.resp_ns = unsafe { bpf_ktime_get_ns() };
    out.req_conn_id = cur.conn_id;
    out.req_seq = cur.seq;
    out.req_fd = cur.fd;
    out.family = d.family;
    out.port = d.port;
    out.req_len = d.req_len;
    out.greeting_len = d.greeting_len;
    out._pad = 0;
    out.addr = d.addr;
    out.greeting = d.greeting;
    out.req.copy_from_slice(&d.req);
    slot.submit(crate::io::wake_flags(&DS_EVENTS, 512 * 1024));
    count(Counter::DownstreamCalls);
}

/// close(2) of a downstream socket.
#[inline(always)]
pub fn closed(key: &ConnKey) {
    let _ = DS_CONNS.remove(key);
}
