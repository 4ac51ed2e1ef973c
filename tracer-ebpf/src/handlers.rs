//! `--handler BINARY:PATTERN`: time named native functions with uprobe + uretprobe. The handler
//! is identified by the attach cookie; calls nest per thread (recursion), and a thread that exits
//! inside a handler has its stack dropped at exit (procs.rs), so nothing leaks.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_attach_cookie},
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, RingBuf},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext as _,
};
use tracer_common::{
    ConnKey, Counter, CurrentRequest, HandlerRecord, HandlerStack, HANDLER_DEPTH,
    HANDLER_REQ_PREFIX,
};

use crate::maps::{count, is_target, CONNS};

#[map]
pub static HSTACK: HashMap<u32, HandlerStack> = HashMap::with_max_entries(16384, 0);

#[map]
pub static HANDLER_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// tid → the request it serves (written by io.rs).
#[map]
pub static CURRENT: HashMap<u32, CurrentRequest> = HashMap::with_max_entries(16384, 0);

#[uprobe]
pub fn handler_entry(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if !is_target(tgid) {
        return 0;
    }
    let handler = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    let st = match HSTACK.get_ptr_mut(&tid) {
        Some(p) => unsafe { &mut *p },
        None => {
            let fresh = HandlerStack {
                tgid,
                ..HandlerStack::default()
            };
            if HSTACK.insert(&tid, &fresh, 0).is_err() {
                count(Counter::ArgsMapFull);
                return 0;
            }
            match HSTACK.get_ptr_mut(&tid) {
                Some(p) => unsafe { &mut *p },
                None => return 0,
            }
        }
    };
    let d = st.depth as usize;
    if d < HANDLER_DEPTH {
        st.handler[d] = handler;
        st.start_ns[d] = now;
    }
    st.depth += 1;
    0
}

#[uretprobe]
pub fn handler_return(_ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let Some(st) = HSTACK.get_ptr_mut(&tid) else {
        return 0;
    };
    let st = unsafe { &mut *st };
    if st.depth == 0 {
        return 0;
    }
    st.depth -= 1;
    let d = st.depth as usize;
    if d >= HANDLER_DEPTH {
        return 0;
    }
    let cur = unsafe { CURRENT.get(&tid) }.copied().unwrap_or_default();
    let Some(mut rec) = HANDLER_EVENTS.reserve::<HandlerRecord>(0) else {
        count(Counter::RingFull);
        return 0;
    };
    let r = HandlerRecord {
        tgid,
        tid,
        handler: st.handler[d],
        depth: d as u32,
        start_ns: st.start_ns[d],
        end_ns: unsafe { bpf_ktime_get_ns() },
        conn_id: cur.conn_id,
        seq: cur.seq,
        fd: cur.fd,
        req_len: 0,
        _pad: 0,
        req: [0; HANDLER_REQ_PREFIX],
    };
    let out = rec.as_mut_ptr();
    unsafe { core::ptr::write(out, r) };
    if cur.conn_id != 0 {
        let key = ConnKey { tgid, fd: cur.fd };
        if let Some(c) = unsafe { CONNS.get(&key) } {
            if c.rec.conn_id == cur.conn_id {
                let n = (c.rec.req_len as usize).min(HANDLER_REQ_PREFIX);
                unsafe {
                    (*out).req.copy_from_slice(&c.rec.req[..HANDLER_REQ_PREFIX]);
                    (*out).req_len = n as u32;
                }
            }
        }
    }
    rec.submit(crate::io::wake_flags(&HANDLER_EVENTS, 64 * 1024));
    count(Counter::Events);
    if st.depth == 0 {
        let _ = HSTACK.remove(&tid);
    }
    0
}
