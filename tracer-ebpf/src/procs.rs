//! Which processes are traced: children of targets, and whoever binds a watched port.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use tracer_common::{target, Counter, TracepointOffsets};

use crate::maps::{count, is_target, set_target, ARGS, WATCH_PORTS};

/// Set by user space from tracefs's format file before load.
#[unsafe(no_mangle)]
pub static OFFSETS: TracepointOffsets = TracepointOffsets {
    fork_parent_pid: 12,
    fork_child_pid: 20,
    signal_sig: 8,
    signal_pid: 36,
    switch_prev_state: 32,
    switch_next_pid: 56,
    wakeup_pid: 24,
    attach_dst_root: 8,
    attach_dst_id: 16,
    attach_pid: 24,
    _pad: 0,
};

/// `--cgroup`/`--container`: cgroup v2 ids (the directory's inode number) whose processes are
/// targets, each target cgroup and its descendants → 1. Filled by user space before it reads
/// the processes already there, so a process that arrives later is caught here.
#[map]
pub static TARGET_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// A traced process forked: trace the child (gunicorn/uWSGI workers, nginx workers, respawns).
/// Threads come through here too; their tids are harmless extra keys, removed at exit.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_target(tgid) {
        return 0;
    }
    let off = unsafe { core::ptr::read_volatile(&OFFSETS) };
    if let Ok(child) = unsafe { ctx.read_at::<i32>(off.fork_child_pid as usize) } {
        if set_target(child as u32, target::FORKED) {
            count(Counter::Forks);
        }
        // A forked child has the parent's memory, so the parent's Python layout (runtime
        // address included) is the child's: its samples get Python frames from the start.
        if let Some(l) = unsafe { crate::pywalk::PY_PROCS.get(&tgid) } {
            let l = *l;
            let _ = crate::pywalk::PY_PROCS.insert(&(child as u32), &l, 0);
        }
    }
    0
}

/// A task exited: forget it as a target and drop any syscall it left half-done.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if !is_target(tgid) {
        return 0;
    }
    let _ = ARGS.remove(&tid);
    set_target(tid, 0);
    let _ = crate::handlers::HSTACK.remove(&tid);
    let _ = crate::handlers::CURRENT.remove(&tid);
    let _ = crate::pywalk::PY_PROCS.remove(&tid);
    crate::profile::forget_thread(tid);
    let _ = crate::sched::THREADS.remove(&tid);
    0
}

/// A process exec'd (attached only with `--cgroup`): a target if it runs in a target cgroup.
/// This catches processes born in the cgroup without a migration (clone3's CLONE_INTO_CGROUP,
/// as systemd starts services) and processes moved there before we attached whose parent is
/// not traced. Execs are rare; untargeted processes pay one helper call and one lookup each.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_target(tgid) {
        return 0;
    }
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if unsafe { TARGET_CGROUPS.get(&cgroup) }.is_some() {
        set_target(tgid, target::CGROUP);
    }
    0
}

/// A task was moved into a cgroup (attached only with `--cgroup`): a process moved into a
/// target cgroup (how docker/runc and systemd-run put a container's first process in it)
/// becomes a target at once; its children follow by fork. Fires once per migration, in the
/// writer's context, for every hierarchy (v1 ids are another numbering: `dst_root` 0 is v2).
#[tracepoint]
pub fn cgroup_attach_task(ctx: TracePointContext) -> u32 {
    let off = unsafe { core::ptr::read_volatile(&OFFSETS) };
    let Ok(root) = (unsafe { ctx.read_at::<i32>(off.attach_dst_root as usize) }) else {
        return 0;
    };
    if root != 0 {
        return 0;
    }
    let Ok(id) = (unsafe { ctx.read_at::<u64>(off.attach_dst_id as usize) }) else {
        return 0;
    };
    if unsafe { TARGET_CGROUPS.get(&id) }.is_none() {
        return 0;
    }
    if let Ok(pid) = unsafe { ctx.read_at::<i32>(off.attach_pid as usize) } {
        if pid > 0 && !is_target(pid as u32) {
            set_target(pid as u32, target::CGROUP);
        }
    }
    0
}

/// bind(2) of a watched TCP port makes the caller a target, so `--port` also finds servers
/// started after slowtrace.
#[tracepoint]
pub fn enter_bind(ctx: TracePointContext) -> u32 {
    let sa = unsafe { ctx.read_at::<u64>(24) }.unwrap_or(0) as *const u16;
    if sa.is_null() {
        return 0;
    }
    let Ok(family) = (unsafe { bpf_probe_read_user(sa) }) else {
        return 0;
    };
    if family != 2 && family != 10 {
        return 0;
    }
    let Ok(port) = (unsafe { bpf_probe_read_user(sa.wrapping_add(1)) }) else {
        return 0;
    };
    let port = u16::from_be(port);
    if unsafe { WATCH_PORTS.get(&port) }.is_none() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if set_target(tgid, target::PORT) {
        count(Counter::PortBinds);
    }
    0
}
