//! memcached, text protocol (`get <key>*\r\n`, `set <key> <flags> <exptime> <bytes>\r\n<data>\r\n`,
//! meta commands `mg`/`ms`/…) and binary protocol (24-byte header, magic 0x80).
//!
//! One command per request line, however many keys it names: `get a b c` is one round trip, so it
//! is one `Command` whose fingerprint lists each distinct normalized key once and whose key hash
//! covers all keys. Binary multi-gets (GETQ/GETKQ… then NOOP) are grouped the same way. Storage
//! data blocks are skipped by their declared length, never read.

use super::keys::CacheCommand;
use super::{Command, MAX_COMMANDS};

/// Where the keys of a text command are: none, the first argument, or all arguments from `n`.
enum TextKeys {
    None,
    First,
    From(usize),
}

/// (keys, is read, index of the data-length argument for storage commands).
fn text_spec(name: &[u8]) -> Option<(TextKeys, bool, Option<usize>)> {
    Some(match name {
        b"get" | b"gets" => (TextKeys::From(1), true, None),
        b"gat" | b"gats" => (TextKeys::From(2), true, None),
        b"mg" => (TextKeys::First, true, None),
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
            (TextKeys::First, false, Some(4))
        }
        b"ms" => (TextKeys::First, false, Some(2)),
        b"delete" | b"incr" | b"decr" | b"touch" | b"md" | b"ma" => (TextKeys::First, false, None),
        b"version" | b"stats" | b"flush_all" | b"verbosity" | b"mn" | b"quit" | b"me" => {
            (TextKeys::None, false, None)
        }
        _ => return None,
    })
}

pub fn is_text(b: &[u8]) -> bool {
    let end = b
        .iter()
        .position(|&c| c == b' ' || c == b'\r' || c == b'\n');
    end.is_some_and(|e| text_spec(&b[..e]).is_some())
}

pub fn is_binary(b: &[u8]) -> bool {
    match header(b, 0) {
        Some(h) => {
            (bin_name(h.op).is_some() || unreported_op(h.op)) && h.extras + h.key_len <= h.body
        }
        None => false,
    }
}

pub fn commands(b: &[u8]) -> Vec<Command> {
    if b.first() == Some(&0x80) {
        binary(b)
    } else {
        text(b)
    }
}

fn text(b: &[u8]) -> Vec<Command> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() && out.len() < MAX_COMMANDS {
        let rest = &b[pos..];
        let (line, next) = match rest.iter().position(|&c| c == b'\n') {
            Some(nl) => (&rest[..nl], Some(pos + nl + 1)),
            None => (rest, None),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let words: Vec<&[u8]> = line
            .split(|&c| c == b' ')
            .filter(|w| !w.is_empty())
            .collect();
        let Some((keys, read, data_len)) = words.first().and_then(|n| text_spec(n)) else {
            break;
        };
        let name = String::from_utf8_lossy(words[0]);
        // `mn` (pipeline end marker) and `quit` get no reply: not a round trip.
        if name != "mn" && name != "quit" {
            let mut c = CacheCommand::new(&name, read);
            let key_args = match keys {
                TextKeys::None => 0..0,
                TextKeys::First => 1..2,
                TextKeys::From(n) => n..words.len(),
            };
            for i in key_args.filter(|&i| i < words.len()) {
                // On an unterminated line the last word may be cut.
                if next.is_none() && i + 1 == words.len() {
                    c.cut();
                } else {
                    c.key(words[i]);
                }
            }
            out.push(c.finish());
        }
        let data = data_len.and_then(|i| std::str::from_utf8(words.get(i)?).ok()?.parse().ok());
        match (next, data) {
            (Some(n), Some(len)) => pos = n.saturating_add(len).saturating_add(2),
            (Some(n), None) if data_len.is_none() => pos = n,
            _ => break,
        }
    }
    out
}

struct Header {
    op: u8,
    key_len: usize,
    extras: usize,
    body: usize,
}

fn header(b: &[u8], at: usize) -> Option<Header> {
    let h = b.get(at..at.checked_add(24)?)?;
    (h[0] == 0x80).then(|| Header {
        op: h[1],
        key_len: usize::from(u16::from_be_bytes([h[2], h[3]])),
        extras: usize::from(h[4]),
        body: usize::try_from(u32::from_be_bytes([h[8], h[9], h[10], h[11]])).unwrap_or(usize::MAX),
    })
}

/// Opcode name and whether it is a read; SASL (auth), quit and noop have no name here.
fn bin_name(op: u8) -> Option<(&'static str, bool)> {
    const NAMES: [&str; 31] = [
        "get", "set", "add", "replace", "delete", "incr", "decr", "", "flush", "getq", "",
        "version", "getk", "getkq", "append", "prepend", "stat", "setq", "addq", "replaceq",
        "deleteq", "incrq", "decrq", "", "flushq", "appendq", "prependq", "", "touch", "gat",
        "gatq",
    ];
    let name = *NAMES.get(usize::from(op))?;
    let read = matches!(op, 0x00 | 0x09 | 0x0c | 0x0d | 0x1d | 0x1e);
    (!name.is_empty()).then_some((name, read))
}

/// Quit, noop (ends a multi-get) and SASL auth: known, but not a command to report.
fn unreported_op(op: u8) -> bool {
    matches!(op, 0x07 | 0x0a | 0x17 | 0x20..=0x22)
}

fn binary(b: &[u8]) -> Vec<Command> {
    let mut out = Vec::new();
    // Quiet gets (GETQ, GETKQ) of one multi-get, until the NOOP or another opcode ends it.
    let mut multi: Option<CacheCommand> = None;
    let mut pos = 0;
    while let Some(h) = header(b, pos) {
        if out.len() >= MAX_COMMANDS {
            break;
        }
        let quiet_get = matches!(h.op, 0x09 | 0x0d);
        if !quiet_get {
            out.extend(multi.take().map(CacheCommand::finish));
        }
        let key_start = pos + 24 + h.extras;
        let key = b.get(key_start..key_start + h.key_len);
        if let Some((name, read)) = bin_name(h.op) {
            let c = multi.get_or_insert_with(|| CacheCommand::new(name, read));
            match key {
                Some([]) => {}
                Some(k) => c.key(k),
                None => c.cut(),
            }
            if !quiet_get {
                out.extend(multi.take().map(CacheCommand::finish));
            }
        } else if !unreported_op(h.op) {
            break;
        }
        pos = match (pos + 24).checked_add(h.body) {
            Some(n) => n,
            None => break,
        };
    }
    out.extend(multi.map(CacheCommand::finish));
    out
}

#[cfg(test)]
mod tests;
