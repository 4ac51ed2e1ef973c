//! Redis: RESP arrays of bulk strings (`*N\r\n$len\r\narg\r\n…`, what every client library sends,
//! several back to back when pipelined) and inline commands (`GET foo\r\n`, telnet style).
//!
//! Fingerprint: the uppercase command name and its normalized key(s); only the argument positions
//! that hold keys are read, so values never reach a fingerprint. Commands not in the key table
//! below (AUTH, HELLO, CONFIG, EVAL, module commands, …) show their name only: their arguments may
//! be secrets or scripts.

use super::keys::CacheCommand;
use super::{Command, MAX_COMMANDS};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Keys {
    None,
    First,
    All,
    /// MSET: key, value, key, value…
    Pairs,
}

impl Keys {
    fn holds_key(self, arg: usize) -> bool {
        match self {
            Keys::None => false,
            Keys::First => arg == 1,
            Keys::All => arg >= 1,
            Keys::Pairs => arg % 2 == 1,
        }
    }
}

/// (where the keys are, whether it is a read).
fn spec(name: &str) -> (Keys, bool) {
    match name {
        "GET" | "GETEX" | "GETRANGE" | "STRLEN" | "TTL" | "PTTL" | "TYPE" | "HGET" | "HMGET"
        | "HGETALL" | "HKEYS" | "HVALS" | "HLEN" | "HEXISTS" | "HSTRLEN" | "LRANGE" | "LINDEX"
        | "LLEN" | "LPOS" | "SMEMBERS" | "SISMEMBER" | "SMISMEMBER" | "SCARD" | "SRANDMEMBER"
        | "ZRANGE" | "ZREVRANGE" | "ZRANGEBYSCORE" | "ZREVRANGEBYSCORE" | "ZSCORE" | "ZMSCORE"
        | "ZCARD" | "ZCOUNT" | "ZRANK" | "ZREVRANK" | "XRANGE" | "XREVRANGE" | "XLEN"
        | "GETBIT" | "BITCOUNT" | "DUMP" | "HSCAN" | "SSCAN" | "ZSCAN" | "JSON.GET" => {
            (Keys::First, true)
        }
        "MGET" | "EXISTS" | "SUNION" | "SINTER" | "SDIFF" | "PFCOUNT" => (Keys::All, true),
        "SET" | "SETEX" | "PSETEX" | "SETNX" | "GETSET" | "GETDEL" | "APPEND" | "SETRANGE"
        | "INCR" | "INCRBY" | "INCRBYFLOAT" | "DECR" | "DECRBY" | "EXPIRE" | "PEXPIRE"
        | "EXPIREAT" | "PEXPIREAT" | "PERSIST" | "HSET" | "HSETNX" | "HMSET" | "HDEL"
        | "HINCRBY" | "HINCRBYFLOAT" | "LPUSH" | "RPUSH" | "LPUSHX" | "RPUSHX" | "LPOP"
        | "RPOP" | "LREM" | "LSET" | "LTRIM" | "LINSERT" | "SADD" | "SREM" | "SPOP" | "ZADD"
        | "ZREM" | "ZINCRBY" | "ZPOPMIN" | "ZPOPMAX" | "ZREMRANGEBYSCORE" | "ZREMRANGEBYRANK"
        | "XADD" | "XTRIM" | "XDEL" | "PFADD" | "SETBIT" | "RESTORE" | "KEYS" | "PUBLISH"
        | "JSON.SET" => (Keys::First, false),
        "DEL" | "UNLINK" | "TOUCH" | "WATCH" | "RENAME" | "BLPOP" | "BRPOP" | "SUBSCRIBE"
        | "UNSUBSCRIBE" | "PSUBSCRIBE" | "PUNSUBSCRIBE" => (Keys::All, false),
        "MSET" | "MSETNX" => (Keys::Pairs, false),
        _ => (Keys::None, false),
    }
}

/// A command name: letters, digits and the few punctuation marks module commands use.
fn valid_name(n: &[u8]) -> bool {
    (1..=32).contains(&n.len())
        && n.first().is_some_and(u8::is_ascii_alphabetic)
        && n.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-|".contains(c))
}

fn upper(n: &[u8]) -> String {
    String::from_utf8_lossy(n).to_ascii_uppercase()
}

/// A RESP array header followed by a bulk string: `*<digits>\r\n$`.
pub fn is_resp(b: &[u8]) -> bool {
    match line(b, 1) {
        Some((n, next)) => {
            b[0] == b'*' && int(n).is_some() && b.get(next).is_none_or(|&c| c == b'$')
        }
        None => false,
    }
}

/// An inline command: a known command name in uppercase letters (lowercase text is memcached's),
/// alone or followed by a space, on a terminated line.
pub fn is_inline(b: &[u8]) -> bool {
    let Some((l, _)) = line(b, 0) else {
        return false;
    };
    let name = l.split(|&c| c == b' ').next().unwrap_or_default();
    let known = [
        "PING", "QUIT", "INFO", "MULTI", "EXEC", "DBSIZE", "AUTH", "SELECT",
    ];
    valid_name(name)
        && name.iter().all(|c| !c.is_ascii_lowercase())
        && (known.contains(&upper(name).as_str()) || spec(&upper(name)).0 != Keys::None)
}

/// The line starting at `from` without its `\r\n` (or bare `\n`), and where the next one starts.
fn line(b: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let rest = b.get(from..)?;
    let nl = rest.iter().position(|&c| c == b'\n')?;
    let l = &rest[..nl];
    Some((l.strip_suffix(b"\r").unwrap_or(l), from + nl + 1))
}

fn int(s: &[u8]) -> Option<usize> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

pub fn commands(b: &[u8]) -> Vec<Command> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() && out.len() < MAX_COMMANDS {
        let (cmd, next) = if b[pos] == b'*' {
            array(b, pos)
        } else {
            inline(b, pos)
        };
        out.extend(cmd);
        match next {
            Some(n) if n > pos => pos = n,
            _ => break,
        }
    }
    out
}

/// One RESP array at `pos`: the command, and where the next one starts (None when cut/garbage).
fn array(b: &[u8], pos: usize) -> (Option<Command>, Option<usize>) {
    let Some((n, mut at)) = line(b, pos + 1) else {
        return (None, None);
    };
    let Some(argc) = int(n).filter(|&n| n > 0) else {
        return (None, None);
    };
    let mut cmd: Option<(CacheCommand, Keys)> = None;
    for arg in 0..argc {
        let bulk = line(b, at)
            .filter(|(h, _)| h.first() == Some(&b'$'))
            .and_then(|(h, start)| Some((int(&h[1..])?, start)));
        let Some((len, start)) = bulk else {
            // Cut (or garbage) before this argument's header.
            return (cut(cmd, arg), None);
        };
        let end = start.saturating_add(len);
        let data = b.get(start..end);
        match (&mut cmd, data) {
            (None, Some(name)) if valid_name(name) => {
                let name = upper(name);
                let (keys, read) = spec(&name);
                cmd = Some((CacheCommand::new(&name, read), keys));
            }
            (None, _) => return (None, None),
            (Some((c, keys)), Some(key)) if keys.holds_key(arg) => c.key(key),
            (Some(_), Some(_)) => {}
            (Some(_), None) => return (cut(cmd, arg), None),
        }
        at = end.saturating_add(2);
    }
    (cmd.map(|(c, _)| c.finish()), Some(at))
}

/// Finish a command whose argument `arg` was cut off: marked cut only if that was a key.
fn cut(cmd: Option<(CacheCommand, Keys)>, arg: usize) -> Option<Command> {
    let (mut c, keys) = cmd?;
    if keys.holds_key(arg) {
        c.cut();
    }
    Some(c.finish())
}

fn inline(b: &[u8], pos: usize) -> (Option<Command>, Option<usize>) {
    let (l, next) = match line(b, pos) {
        Some((l, next)) => (l, Some(next)),
        None => (&b[pos..], None),
    };
    let mut words = l.split(|&c| c == b' ').filter(|w| !w.is_empty());
    let Some(name) = words.next().filter(|n| valid_name(n)) else {
        return (None, None);
    };
    let name = upper(name);
    let (keys, read) = spec(&name);
    let mut c = CacheCommand::new(&name, read);
    let args: Vec<&[u8]> = words.collect();
    for (i, w) in args.iter().enumerate() {
        if !keys.holds_key(i + 1) {
            continue;
        }
        // On an unterminated line the last word may be cut.
        if next.is_none() && i + 1 == args.len() {
            c.cut();
        } else {
            c.key(w);
        }
    }
    (Some(c.finish()), next)
}

#[cfg(test)]
mod tests;
