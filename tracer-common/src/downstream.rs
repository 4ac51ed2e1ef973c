//! Downstream calls: sockets the targets connect to (databases, caches, services), and one
//! record per request→response exchange on them.

/// Bytes of a downstream request kept (the statement or command; user space fingerprints it).
pub const DS_PREFIX: usize = 160;
/// Bytes of the server's first message kept (MySQL speaks first).
pub const DS_GREETING: usize = 16;
/// Bytes of a connect(2) address kept: IPv4/IPv6 or the start of a Unix socket path.
pub const DS_ADDR: usize = 64;

/// `DsConn::phase`.
pub mod ds_phase {
    pub const IDLE: u8 = 0;
    /// A request was written, no answer read yet.
    pub const SENT: u8 = 1;
    /// The answer started.
    pub const ANSWERED: u8 = 2;
}

/// A connected (client-side) socket of a target.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DsConn {
    /// connect(2) time: with (tgid, fd) it names the connection.
    pub conn_id: u64,
    pub start_ns: u64,
    pub tid: u32,
    pub phase: u8,
    pub greeting_len: u8,
    /// AF_INET, AF_INET6, AF_UNIX.
    pub family: u16,
    /// Host byte order (0 for Unix sockets).
    pub port: u16,
    pub req_len: u16,
    /// Exchanges so far on this connection.
    pub exchanges: u32,
    pub addr: [u8; DS_ADDR],
    pub greeting: [u8; DS_GREETING],
    pub req: [u8; DS_PREFIX],
    /// The kernel `struct sock` (0 when unknown): a different socket under the same fd number
    /// means the fd was reused.
    pub sk: u64,
}

/// One exchange: written `start_ns`, first answer byte read `resp_ns` (ring `DS_EVENTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DownstreamRecord {
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// Index of this exchange on its connection, from 0 (0 is usually a handshake).
    pub index: u32,
    pub ds_conn_id: u64,
    pub start_ns: u64,
    pub resp_ns: u64,
    /// The served request the thread was in when it wrote (0: none).
    pub req_conn_id: u64,
    pub req_seq: u32,
    pub req_fd: u32,
    pub family: u16,
    pub port: u16,
    pub req_len: u16,
    pub greeting_len: u8,
    pub _pad: u8,
    pub addr: [u8; DS_ADDR],
    pub greeting: [u8; DS_GREETING],
    pub req: [u8; DS_PREFIX],
}
