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
use tracer_common::{Counter, CurrentRequest, HandlerRecord, HandlerStack, HANDLER_DEPTH};

use crate::maps::{count, is_target};

#[map]
pub static HSTACK: HashMap<u32, HandlerStack> = HashMap::with_max_entries(16384, 0);

#[map]
pub static HANDLER_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

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
    let rec = HandlerRecord {
        tgid,
        tid,
        handler: st.handler[d],
        depth: d as u32,
        start_ns: st.start_ns[d],
        end_ns: unsafe { bpf_ktime_get_ns() },
        conn_id: cur.conn_id,
        seq: cur.seq,
        fd: cur.fd,
    };
    match HANDLER_EVENTS.output::<HandlerRecord>(&rec, 0) {
        Ok(()) => count(Counter::Events),
        Err(_) => count(Counter::RingFull),
    }
    if st.depth == 0 {
        let _ = HSTACK.remove(&tid);
    }
    0
}
