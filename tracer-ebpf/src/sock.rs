//! Socket I/O of the targets from the socket layer's own tracepoints (Linux 6.3+), the default
//! path. No syscall tracepoint is attached on it: enabling any syscall tracepoint puts every task
//! of the machine on the syscall-tracing slow path, so untargeted processes would pay for us.
//!
//! * `sock:sock_recv_length` / `sock:sock_send_length` (raw tracepoints) fire inside
//!   sock_recvmsg/sock_sendmsg after the transfer, for every family and every syscall that moves
//!   socket data (read/recv*/readv, write/send*/writev, sendfile and splice to a socket). The
//!   syscall's own registers (`bpf_task_pt_regs`) give the fd and the user buffer, so one program
//!   run per transfer does what a sys_enter/sys_exit pair and a per-thread argument map did.
//! * A socket is classified the first time a target moves data on it: TCP whose local port is a
//!   port a target listens on, or a Unix socket accepted from a bound one, is served (requests);
//!   any other TCP or connected Unix socket is downstream (calls). Connections accepted before
//!   attach are therefore followed from their next request on.
//! * `sock:inet_sock_set_state` (rare: a few per connection) learns listening ports, makes the
//!   listener of a `--port` a target, and ends a request when its process closes the socket. A
//!   different socket showing up under a known (tgid, fd) means the fd was reused: the old
//!   connection ends there.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, generated,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, LruHashMap},
    programs::RawTracePointContext,
};
use tracer_common::{
    downstream::{ds_phase, DS_ADDR},
    target, ConnKey, ConnState, Counter, EndReason, KernelOffsets,
};

use crate::{
    downstream::{self, DS_CONNS, DS_SCRATCH},
    io::{self, emit},
    maps::{count, is_target, kind, set_target, SyscallArgs, CONNS, SCRATCH, WATCH_PORTS},
};

/// Kernel struct offsets from BTF, set by user space before load.
#[unsafe(no_mangle)]
pub static KOFFS: KernelOffsets = KernelOffsets {
    sk_family: 0,
    sk_num: 0,
    sk_dport: 0,
    sk_daddr: 0,
    sk_v6_daddr: 0,
    sk_type: 0,
    sk_protocol: 0,
    unix_addr: 0,
    unix_peer: 0,
    unix_name: 0,
    task_pid: 0,
    task_tgid: 0,
};

/// Local TCP ports the targets serve on → 1 (seeded by user space, added on listen).
#[map]
pub static SERVED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// TCP socket → the connection entry it is followed under, so its close can end it.
#[map]
static SOCKS: LruHashMap<u64, ConnKey> = LruHashMap::with_max_entries(32768, 0);

/// Sockets of targets that are neither served nor downstream (UDP, socketpairs): not
/// classified again on every transfer.
#[map]
static IGNORED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;
const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;

/// TCP states (include/net/tcp_states.h).
mod tcp {
    pub const ESTABLISHED: i32 = 1;
    pub const FIN_WAIT1: i32 = 4;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
}

/// x86_64 syscall numbers.
pub mod nr {
    pub const READ: i64 = 0;
    pub const WRITE: i64 = 1;
    pub const CLOSE: i64 = 3;
    pub const READV: i64 = 19;
    pub const WRITEV: i64 = 20;
    pub const DUP2: i64 = 33;
    pub const SENDFILE: i64 = 40;
    pub const CONNECT: i64 = 42;
    pub const SENDTO: i64 = 44;
    pub const RECVFROM: i64 = 45;
    pub const SENDMSG: i64 = 46;
    pub const RECVMSG: i64 = 47;
    pub const SHUTDOWN: i64 = 48;
    pub const SPLICE: i64 = 275;
    pub const DUP3: i64 = 292;
    pub const RECVMMSG: i64 = 299;
    pub const SENDMMSG: i64 = 307;
    pub const CLOSE_RANGE: i64 = 436;
}

/// The syscall the current task is in, from its saved user registers (x86_64 `struct pt_regs`:
/// dx at 96, si at 104, di at 112, orig_ax at 120; this layout is ABI).
#[derive(Clone, Copy)]
pub struct Syscall {
    pub nr: i64,
    pub di: u64,
    pub si: u64,
    pub dx: u64,
}

#[inline(always)]
pub fn current_syscall() -> Option<Syscall> {
    let task = unsafe { generated::bpf_get_current_task_btf() };
    // Never null for the current task; and a null test here would be useless anyway, since the
    // verifier does not learn from it for this pointer type (seen: it then rejected the program
    // on the impossible branch).
    let regs = unsafe { generated::bpf_task_pt_regs(task) } as *const u64;
    // `regs` is a BTF pointer to `struct pt_regs`: the verifier checks these loads against its
    // layout and turns them into fault-safe direct loads, much cheaper than a
    // bpf_probe_read_kernel call (~100 ns of a ~750 ns socket transfer here, measured with
    // bpf_stats).
    unsafe {
        Some(Syscall {
            dx: core::ptr::read_volatile(regs.add(12)),
            si: core::ptr::read_volatile(regs.add(13)),
            di: core::ptr::read_volatile(regs.add(14)),
            nr: core::ptr::read_volatile(regs.add(15)) as i64,
        })
    }
}

/// Whether a syscall moves data through a socket fd of ours: the fd and buffer shape.
#[inline(always)]
pub fn io_args(s: &Syscall, outbound: bool) -> Option<SyscallArgs> {
    let (k, fd, ptr) = match (s.nr, outbound) {
        (nr::READ | nr::RECVFROM, false) => (kind::READ, s.di, s.si),
        (nr::READV, false) => (kind::READV, s.di, s.si),
        // recvmmsg/sendmmsg: an array of mmsghdr, each starting with a msghdr; the first
        // message's buffer stands for all.
        (nr::RECVMSG | nr::RECVMMSG, false) => (kind::RECVMSG, s.di, s.si),
        (nr::WRITE | nr::SENDTO, true) => (kind::WRITE, s.di, s.si),
        (nr::WRITEV, true) => (kind::WRITEV, s.di, s.si),
        (nr::SENDMSG | nr::SENDMMSG, true) => (kind::SENDMSG, s.di, s.si),
        (nr::SENDFILE, true) => (kind::SENDFILE, s.di, 0),
        // splice(fd_in, off_in, fd_out, ...): the socket is fd_out.
        (nr::SPLICE, true) => (kind::SENDFILE, s.dx, 0),
        _ => return None,
    };
    Some(SyscallArgs {
        kind: k,
        _pad: [0; 3],
        fd: fd as i32,
        ptr,
    })
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv(ctx: RawTracePointContext) -> i32 {
    on_transfer(&ctx, false);
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send(ctx: RawTracePointContext) -> i32 {
    on_transfer(&ctx, true);
    0
}

/// TP_PROTO(struct sock *sk, int ret, int flags).
#[inline(always)]
fn on_transfer(ctx: &RawTracePointContext, outbound: bool) {
    // Cheapest tests first: most calls of a busy server are EAGAIN reads.
    let ret = i64::from(ctx.arg::<u64>(1) as i32);
    if ret <= 0 {
        return;
    }
    if !outbound && ctx.arg::<u64>(2) as i32 & MSG_PEEK != 0 {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if !is_target(tgid) {
        return;
    }
    let sk = ctx.arg::<u64>(0);
    let Some(a) = current_syscall().and_then(|s| io_args(&s, outbound)) else {
        count(Counter::SockOtherSyscall);
        return;
    };
    let key = ConnKey {
        tgid,
        fd: a.fd as u32,
    };
    match lookup(&key, sk) {
        Sock::Served(c) => {
            let c = unsafe { &mut *c };
            if outbound {
                io::served_write(c, &a, ret);
            } else {
                io::served_read(c, &a, tid, ret);
            }
        }
        Sock::Downstream => {
            if outbound {
                downstream::wrote(&key, tid, io::data_ptr(&a), ret as u64);
            } else {
                downstream::read(&key, tid, io::data_ptr(&a), ret as u64);
            }
        }
        Sock::Skip => {}
    }
}

enum Sock {
    Served(*mut ConnState),
    Downstream,
    Skip,
}

/// The entry for (tgid, fd) if it is this socket's; a new one if the socket is new here.
#[inline(always)]
fn lookup(key: &ConnKey, sk: u64) -> Sock {
    if let Some(c) = CONNS.get_ptr_mut(key) {
        if unsafe { (*c).sk } == sk {
            return Sock::Served(c);
        }
        // The fd number now names another socket: the old connection is over.
        count(Counter::FdReused);
        let c = unsafe { &mut *c };
        let old = c.sk;
        c.close(unsafe { bpf_ktime_get_ns() }, EndReason::FdReused, emit);
        let _ = CONNS.remove(key);
        let _ = SOCKS.remove(&old);
    } else if let Some(d) = unsafe { DS_CONNS.get(key) } {
        if d.sk == sk {
            return Sock::Downstream;
        }
        let _ = DS_CONNS.remove(key);
    }
    if unsafe { IGNORED.get(&sk) }.is_some() {
        return Sock::Skip;
    }
    classify(key, sk)
}

#[inline(always)]
fn read_u16(p: u64) -> u16 {
    unsafe { bpf_probe_read_kernel(p as *const u16) }.unwrap_or(0)
}

#[inline(always)]
fn read_u64(p: u64) -> u64 {
    unsafe { bpf_probe_read_kernel(p as *const u64) }.unwrap_or(0)
}

/// The fields of a socket that classify it, read in as few helper calls as the layout allows
/// (each `bpf_probe_read_kernel` is ~50-100 ns here, a good part of a new connection's cost).
struct SockFields {
    ty: u16,
    protocol: u16,
    family: u16,
    local_port: u16,
    /// Network byte order.
    peer_port: u16,
}

#[inline(always)]
fn fields(sk: u64, o: &KernelOffsets) -> SockFields {
    // struct sock_common has started daddr(4) rcv_saddr(4) hash(4) dport(2) num(2) family(2)
    // on every 64-bit kernel for years: one read of its head then.
    let head = if o.sk_dport == 12 && o.sk_num == 14 && o.sk_family == 16 {
        unsafe { bpf_probe_read_kernel(sk as *const [u16; 9]) }.ok()
    } else {
        None
    };
    let (family, local_port, peer_port) = match head {
        Some(h) => (h[8], h[7], h[6]),
        None => (
            read_u16(sk + o.sk_family as u64),
            read_u16(sk + o.sk_num as u64),
            read_u16(sk + o.sk_dport as u64),
        ),
    };
    // sk_type and sk_protocol sit side by side in struct sock.
    let (ty, protocol) = if o.sk_protocol == o.sk_type + 2 {
        match unsafe { bpf_probe_read_kernel((sk + o.sk_type as u64) as *const [u16; 2]) } {
            Ok(v) => (v[0], v[1]),
            Err(_) => (0, 0),
        }
    } else {
        (
            read_u16(sk + o.sk_type as u64),
            read_u16(sk + o.sk_protocol as u64),
        )
    };
    SockFields {
        ty,
        protocol,
        family,
        local_port,
        peer_port,
    }
}

#[inline(always)]
fn classify(key: &ConnKey, sk: u64) -> Sock {
    let o = unsafe { core::ptr::read_volatile(&KOFFS) };
    let f = fields(sk, &o);
    let sock = if f.ty != SOCK_STREAM {
        Sock::Skip
    } else {
        match f.family {
            AF_INET | AF_INET6 if f.protocol == IPPROTO_TCP => inet(key, sk, &f, &o),
            AF_UNIX => unix(key, sk, &o),
            _ => Sock::Skip,
        }
    };
    if matches!(sock, Sock::Skip) {
        let _ = IGNORED.insert(&sk, &1, 0);
    }
    sock
}

#[inline(always)]
fn inet(key: &ConnKey, sk: u64, f: &SockFields, o: &KernelOffsets) -> Sock {
    let (family, local) = (f.family, f.local_port);
    let peer_port = u16::from_be(f.peer_port);
    let _ = SOCKS.insert(&sk, key, 0);
    if unsafe { SERVED_PORTS.get(&local) }.is_some() {
        let Some(s) = SCRATCH.get_ptr_mut(0) else {
            return Sock::Skip;
        };
        let s = unsafe { &mut *s };
        *s = ConnState::accepted(key.tgid, key.fd, -1, unsafe { bpf_ktime_get_ns() });
        s.sk = sk;
        s.rec.local_port = local;
        s.rec.peer_family = family;
        s.rec.peer_port = peer_port;
        s.rec.peer_addr = peer_addr(sk, family, o);
        served(key, s)
    } else {
        let Some(d) = new_downstream(sk, family, peer_port) else {
            return Sock::Skip;
        };
        d.addr[..16].copy_from_slice(&peer_addr(sk, family, o));
        downstream_insert(key, d)
    }
}

/// The peer's IPv4 (first 4 bytes) or IPv6 address of an inet socket.
#[inline(always)]
fn peer_addr(sk: u64, family: u16, o: &KernelOffsets) -> [u8; 16] {
    let mut out = [0u8; 16];
    let _ = if family == AF_INET {
        unsafe { bpf_probe_read_kernel_buf((sk + o.sk_daddr as u64) as *const u8, &mut out[..4]) }
    } else {
        unsafe { bpf_probe_read_kernel_buf((sk + o.sk_v6_daddr as u64) as *const u8, &mut out) }
    };
    out
}

/// Unix stream sockets: one accepted from a bound socket shares its address (served); a
/// connected one has none of its own but its peer has (downstream). Socketpairs have neither.
#[inline(always)]
fn unix(key: &ConnKey, sk: u64, o: &KernelOffsets) -> Sock {
    if read_u64(sk + o.unix_addr as u64) != 0 {
        let Some(s) = SCRATCH.get_ptr_mut(0) else {
            return Sock::Skip;
        };
        let s = unsafe { &mut *s };
        *s = ConnState::accepted(key.tgid, key.fd, -1, unsafe { bpf_ktime_get_ns() });
        s.sk = sk;
        s.rec.peer_family = AF_UNIX;
        return served(key, s);
    }
    let peer = read_u64(sk + o.unix_peer as u64);
    if peer == 0 {
        return Sock::Skip;
    }
    let addr = read_u64(peer + o.unix_addr as u64);
    if addr == 0 {
        return Sock::Skip;
    }
    let Some(d) = new_downstream(sk, AF_UNIX, 0) else {
        return Sock::Skip;
    };
    // sockaddr_un: sun_family (2 bytes), then the path.
    let _ = unsafe {
        bpf_probe_read_kernel_buf((addr + o.unix_name as u64 + 2) as *const u8, &mut d.addr)
    };
    downstream_insert(key, d)
}

#[inline(always)]
fn served(key: &ConnKey, s: &mut ConnState) -> Sock {
    if let Ok(comm) = bpf_get_current_comm() {
        s.rec.comm = comm;
    }
    if CONNS.insert(key, s, 0).is_err() {
        count(Counter::ConnMapFull);
        return Sock::Skip;
    }
    match CONNS.get_ptr_mut(key) {
        Some(c) => Sock::Served(c),
        None => Sock::Skip,
    }
}

#[inline(always)]
fn new_downstream(sk: u64, family: u16, port: u16) -> Option<&'static mut tracer_common::DsConn> {
    let d = DS_SCRATCH.get_ptr_mut(0)?;
    let d = unsafe { &mut *d };
    d.conn_id = unsafe { bpf_ktime_get_ns() };
    d.start_ns = 0;
    d.tid = 0;
    d.phase = ds_phase::IDLE;
    d.greeting_len = 0;
    d.family = family;
    d.port = port;
    d.req_len = 0;
    d.exchanges = 0;
    d.addr = [0; DS_ADDR];
    d.sk = sk;
    Some(d)
}

#[inline(always)]
fn downstream_insert(key: &ConnKey, d: &tracer_common::DsConn) -> Sock {
    if DS_CONNS.insert(key, d, 0).is_err() {
        count(Counter::DownstreamMapFull);
        return Sock::Skip;
    }
    count(Counter::DownstreamConns);
    Sock::Downstream
}

/// TCP state changes: listening ports, and closes. A raw tracepoint, TP_PROTO(const struct sock
/// *sk, const int oldstate, const int newstate): it fires several times per connection on every
/// TCP socket of the machine, and a classic tracepoint would build a 72-byte record each time.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn sock_state(ctx: RawTracePointContext) -> i32 {
    // Ten of these per short-lived connection (both ends): out after two argument reads unless
    // the socket starts listening or stops sending.
    let new = ctx.arg::<u64>(2) as i32;
    if new == tcp::LISTEN {
        let sk = ctx.arg::<u64>(0);
        let o = unsafe { core::ptr::read_volatile(&KOFFS) };
        if read_u16(sk + o.sk_protocol as u64) == IPPROTO_TCP {
            listening(read_u16(sk + o.sk_num as u64));
        }
        return 0;
    }
    if !matches!(new, tcp::FIN_WAIT1 | tcp::LAST_ACK | tcp::CLOSE) {
        return 0;
    }
    let old = ctx.arg::<u64>(1) as i32;
    if old == tcp::ESTABLISHED || old == tcp::CLOSE_WAIT {
        closing(ctx.arg::<u64>(0), new == tcp::CLOSE);
    }
    0
}

/// listen(2) runs in the listener's context: a target's port is served; a watched port makes
/// its listener a target (`--port` for servers started after slowtrace).
#[inline(always)]
fn listening(port: u16) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let watched = unsafe { WATCH_PORTS.get(&port) }.is_some();
    if watched && !is_target(tgid) && set_target(tgid, target::PORT) {
        count(Counter::PortBinds);
    }
    if watched || is_target(tgid) {
        let _ = SERVED_PORTS.insert(&port, &1, 0);
    }
}

/// The socket stops sending. A served request ends here when its own process closes the socket
/// (close, shutdown, dup2 over it), or when the peer resets it (`reset`, seen from another
/// process's context in softirq): the server's own close then changes no state. A process
/// killed mid-request closes its sockets at exit, in its own context but in no closing
/// syscall: that request is left for user space to report as ended by the process's exit,
/// with the kill.
#[inline(always)]
fn closing(sk: u64, reset: bool) {
    let Some(key) = (unsafe { SOCKS.get(&sk) }).copied() else {
        return;
    };
    // The socket sends no more: whatever happens to its entry, it is not looked up again.
    let _ = SOCKS.remove(&sk);
    if let Some(c) = CONNS.get_ptr_mut(&key) {
        let c = unsafe { &mut *c };
        if c.sk != sk {
            return;
        }
        let owner = (bpf_get_current_pid_tgid() >> 32) as u32 == key.tgid;
        let closed_by_owner = owner
            && current_syscall().is_some_and(|s| {
                matches!(
                    s.nr,
                    nr::CLOSE | nr::SHUTDOWN | nr::CLOSE_RANGE | nr::DUP2 | nr::DUP3
                )
            });
        if closed_by_owner || (reset && !owner) {
            c.close(unsafe { bpf_ktime_get_ns() }, EndReason::Close, emit);
            let _ = CONNS.remove(&key);
        }
    } else if let Some(d) = unsafe { DS_CONNS.get(&key) } {
        if d.sk == sk {
            let _ = DS_CONNS.remove(&key);
        }
    }
}
