//! Downstream calls (issue 8): what a traced server asks its databases and caches while it serves a
//! request. Pure functions over captured byte prefixes — protocol recognition, one `Command` per
//! round trip, fingerprints that group calls differing only in their values — and the per-request
//! findings built from them. Only std and serde, so this module compiles on its own.
//!
//! Privacy: a fingerprint never carries a literal, a value or an exact cache key (keys are
//! normalized, see `keys`; the exact key only survives as a 64-bit hash, to spot repeats).

pub mod calls;
pub mod findings;
pub mod http;
pub mod keys;
pub mod memcached;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;
pub mod timeline;

/// Longest fingerprint in bytes; longer ones are cut on a char boundary and end with `…`.
pub const FINGERPRINT_MAX: usize = 160;

/// Marks a fingerprint whose input was cut (capture limit or `FINGERPRINT_MAX`).
pub const ELLIPSIS: &str = "…";

/// Most commands taken from one message: the kernel captures a few hundred bytes, so this only
/// bounds the work on unexpected input, it never drops real calls.
pub const MAX_COMMANDS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
    Mysql,
    Redis,
    Memcached,
    Http,
    Unknown,
}

/// One command/statement found in one client→server message: one round trip to the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Normalized text, at most `FINGERPRINT_MAX` bytes; ends with `…` when the input was cut.
    pub fingerprint: String,
    /// Cache protocols: FNV-1a 64 of the exact key(s) (`keys::KeyHasher`), never the key itself.
    pub key_hash: Option<u64>,
    /// A cache read (get-type command): what the repeated-key finding counts.
    pub is_read: bool,
}

impl Command {
    /// A command with no key, its fingerprint bounded.
    pub fn named(mut fingerprint: String) -> Self {
        bound(&mut fingerprint);
        Self {
            fingerprint,
            key_hash: None,
            is_read: false,
        }
    }
}

/// Recognize the protocol of a downstream (client-side) connection from the first bytes the
/// client sent and, when available, the first bytes the server sent (MySQL's server speaks first:
/// handshake v10).
///
/// Order matters: unambiguous openings (MySQL greeting, Postgres startup, HTTP request line, RESP
/// array, memcached binary magic) come first. Lowercase text commands are memcached (its commands
/// are case-sensitive lowercase, and Redis clients send RESP, not inline commands). Last come the
/// checks for connections opened before we attached (a Postgres or MySQL command mid-stream);
/// they verify the framing strictly because their first bytes are only a length.
pub fn recognize(client_first: &[u8], server_first: Option<&[u8]>) -> Protocol {
    let c = client_first;
    if server_first.is_some_and(mysql::is_server_greeting) {
        Protocol::Mysql
    } else if postgres::is_startup(c) {
        Protocol::Postgres
    } else if http::is_request(c) {
        Protocol::Http
    } else if redis::is_resp(c) {
        Protocol::Redis
    } else if memcached::is_binary(c) || memcached::is_text(c) {
        Protocol::Memcached
    } else if redis::is_inline(c) {
        Protocol::Redis
    } else if postgres::is_message(c) {
        Protocol::Postgres
    } else if mysql::is_command(c) {
        Protocol::Mysql
    } else {
        Protocol::Unknown
    }
}

/// Parse the start of one client→server message (the prefix the kernel captured; may be cut
/// mid-message) into the commands it carries. Garbage or truncated input gives what can be
/// recognized and never panics; handshake, auth and startup messages give no command.
pub fn commands(proto: Protocol, msg: &[u8]) -> Vec<Command> {
    match proto {
        Protocol::Postgres => postgres::commands(msg),
        Protocol::Mysql => mysql::commands(msg),
        Protocol::Redis => redis::commands(msg),
        Protocol::Memcached => memcached::commands(msg),
        Protocol::Http => http::commands(msg),
        Protocol::Unknown => Vec::new(),
    }
}

/// Cut `s` to `FINGERPRINT_MAX` bytes on a char boundary, ending it with `…` when cut.
pub fn bound(s: &mut String) {
    if s.len() <= FINGERPRINT_MAX {
        return;
    }
    let mut cut = FINGERPRINT_MAX - ELLIPSIS.len();
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(ELLIPSIS);
}

/// Mark `s` as made from cut input, then bound it.
pub fn mark_truncated(s: &mut String) {
    if !s.ends_with(ELLIPSIS) {
        s.push_str(ELLIPSIS);
    }
    bound(s);
}

#[cfg(test)]
mod tests;
