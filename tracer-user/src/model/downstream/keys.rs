//! Cache keys and URL paths: normalization (so `user:17:profile` and `user:42:profile` group
//! together) and a stable hash of the exact key (so reading the same key twice is still visible).
//!
//! Normalization rule: the key is split into segments, maximal runs of ASCII letters/digits and
//! non-ASCII bytes; everything else (`:` `/` `.` `-` `_` and any other ASCII punctuation or
//! space) is a separator and kept as is. A segment becomes `?` when it is all digits, hex of 8+
//! characters with at least one digit (hashes, object ids; digit-free words like `deadbeef` stay),
//! or high-entropy looking (12+ characters with 2+ digits and a letter: tokens, session ids). A
//! UUID (8-4-4-4-12 hex across its dashes) becomes one `?`. Letters followed by 2+ digits keep the
//! letters (`user42` → `user?`), so per-object key names still group.

use super::{bound, mark_truncated, Command, FINGERPRINT_MAX};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv_fold(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// FNV-1a 64: std's hasher is randomly seeded per process; this one is stable across runs, so
/// tests and reports are deterministic.
#[cfg(test)]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv_fold(FNV_OFFSET, bytes)
}

/// Hash of the exact key(s) of one command: FNV-1a over the keys joined by a NUL byte, so a
/// one-key command hashes to `fnv1a(key)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyHasher(Option<u64>);

impl KeyHasher {
    pub fn add(&mut self, key: &[u8]) {
        let start = match self.0 {
            None => FNV_OFFSET,
            Some(h) => fnv_fold(h, &[0]),
        };
        self.0 = Some(fnv_fold(start, key));
    }

    pub fn finish(self) -> Option<u64> {
        self.0
    }
}

/// Append the normalized form of `key` to `out` (stops early once `out` is past the bound).
pub fn normalize_into(key: &[u8], out: &mut String) {
    let key = String::from_utf8_lossy(key);
    let b = key.as_bytes();
    let mut i = 0;
    while i < b.len() && out.len() <= FINGERPRINT_MAX {
        if !is_word(b[i]) {
            // Separators are ASCII, so `i` stays on a char boundary.
            out.push(char::from(b[i]));
            i += 1;
        } else if is_uuid(&b[i..]) {
            out.push('?');
            i += 36;
        } else {
            let start = i;
            while i < b.len() && is_word(b[i]) {
                i += 1;
            }
            push_segment(&key[start..i], out);
        }
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || !b.is_ascii()
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() >= 36
        && b.get(36).is_none_or(|&c| !is_word(c))
        && b[..36].iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn push_segment(seg: &str, out: &mut String) {
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    let letters = seg.bytes().filter(u8::is_ascii_alphabetic).count();
    let all_digits = digits == seg.len();
    let hex_id = seg.len() >= 8 && digits > 0 && seg.bytes().all(|c| c.is_ascii_hexdigit());
    let token = seg.len() >= 12 && digits >= 2 && letters > 0;
    if all_digits || hex_id || token {
        out.push('?');
        return;
    }
    let head = seg.trim_end_matches(|c: char| c.is_ascii_digit());
    if seg.len() - head.len() >= 2 && head.bytes().all(|c| c.is_ascii_alphabetic()) {
        out.push_str(head);
        out.push('?');
    } else {
        out.push_str(seg);
    }
}

/// The normalized form of `key`, bounded.
#[cfg(test)]
pub fn normalize(key: &[u8]) -> String {
    let mut s = String::with_capacity(key.len().min(FINGERPRINT_MAX));
    normalize_into(key, &mut s);
    bound(&mut s);
    s
}

/// Builds one cache command: `NAME key1 key2`, each distinct normalized key listed once (so an
/// MGET of 3 or of 30 user keys has the same fingerprint), every exact key hashed.
pub struct CacheCommand {
    fingerprint: String,
    hasher: KeyHasher,
    is_read: bool,
    truncated: bool,
}

impl CacheCommand {
    pub fn new(name: &str, is_read: bool) -> Self {
        Self {
            fingerprint: name.to_owned(),
            hasher: KeyHasher::default(),
            is_read,
            truncated: false,
        }
    }

    /// Add one complete key.
    pub fn key(&mut self, raw: &[u8]) {
        self.hasher.add(raw);
        if self.fingerprint.len() > FINGERPRINT_MAX {
            return;
        }
        let mark = self.fingerprint.len();
        self.fingerprint.push(' ');
        normalize_into(raw, &mut self.fingerprint);
        let new = &self.fingerprint[mark + 1..];
        let seen = self.fingerprint[..mark]
            .split(' ')
            .skip(1)
            .any(|k| k == new);
        if seen {
            self.fingerprint.truncate(mark);
        }
    }

    /// A key was cut by the capture limit: it is neither hashed nor shown, the fingerprint says so.
    pub fn cut(&mut self) {
        self.truncated = true;
    }

    pub fn finish(mut self) -> Command {
        if self.truncated {
            mark_truncated(&mut self.fingerprint);
        } else {
            bound(&mut self.fingerprint);
        }
        Command {
            fingerprint: self.fingerprint,
            key_hash: self.hasher.finish(),
            is_read: self.is_read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_table() {
        let cases: &[(&str, &str)] = &[
            ("user:42:profile", "user:?:profile"),
            ("user:42", "user:?"),
            ("session:a8Fk2LmQ9xZ7", "session:?"),
            ("obj/5f2b1c9e/meta", "obj/?/meta"),
            ("o.123e4567-e89b-12d3-a456-426614174000.x", "o.?.x"),
            ("123e4567-e89b-12d3-a456-426614174000-v2", "?-v2"),
            ("views.decorators.cache", "views.decorators.cache"),
            ("deadbeef:cafe", "deadbeef:cafe"),
            ("user42:v2", "user?:v2"),
            ("a_1-2.3/4", "a_?-?.?/?"),
            ("ünïcode:7", "ünïcode:?"),
            ("", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw.as_bytes()), *want, "{raw}");
        }
    }

    #[test]
    fn invalid_utf8_and_long_keys_are_safe() {
        assert_eq!(normalize(b"k:\xff\xfe:1"), "k:\u{fffd}\u{fffd}:?");
        let long = "é".repeat(200);
        let n = normalize(long.as_bytes());
        assert!(n.len() <= FINGERPRINT_MAX && n.ends_with('…'));
    }

    #[test]
    fn hash_is_fnv1a() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut h = KeyHasher::default();
        h.add(b"user:1");
        assert_eq!(h.finish(), Some(fnv1a(b"user:1")));
        h.add(b"user:2");
        assert_ne!(h.finish(), Some(fnv1a(b"user:1user:2")));
    }

    #[test]
    fn cache_command_dedupes_normalized_keys() {
        let mut c = CacheCommand::new("MGET", true);
        for k in [&b"user:1"[..], b"user:2", b"post:3", b"user:4"] {
            c.key(k);
        }
        let c = c.finish();
        assert_eq!(c.fingerprint, "MGET user:? post:?");
        assert!(c.is_read && c.key_hash.is_some());
    }
}
