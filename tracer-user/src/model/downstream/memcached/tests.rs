use super::super::keys::{fnv1a, KeyHasher};
use super::*;

fn fps(b: &[u8]) -> Vec<String> {
    commands(b).into_iter().map(|c| c.fingerprint).collect()
}

/// A binary request: header, extras, key, value.
fn bin(op: u8, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = u32::try_from(extras.len() + key.len() + value.len()).unwrap_or(0);
    let key_len = u16::try_from(key.len()).unwrap_or(0).to_be_bytes();
    let extras_len = u8::try_from(extras.len()).unwrap_or(0);
    let mut v = vec![0x80, op, key_len[0], key_len[1], extras_len, 0, 0, 0];
    v.extend_from_slice(&body.to_be_bytes());
    v.extend_from_slice(&[0; 12]);
    v.extend_from_slice(extras);
    v.extend_from_slice(key);
    v.extend_from_slice(value);
    v
}

#[test]
fn pymemcache_get_and_get_many() {
    assert!(is_text(b"get user:42\r\n"));
    let c = commands(b"get user:42\r\n");
    assert_eq!(c[0].fingerprint, "get user:?");
    assert_eq!(c[0].key_hash, Some(fnv1a(b"user:42")));
    assert!(c[0].is_read);
    let many = commands(b"get user:1 user:2 post:3\r\n");
    assert_eq!(many.len(), 1);
    assert_eq!(many[0].fingerprint, "get user:? post:?");
    let mut h = KeyHasher::default();
    for k in [&b"user:1"[..], b"user:2", b"post:3"] {
        h.add(k);
    }
    assert_eq!(many[0].key_hash, h.finish());
    assert_eq!(fps(b"gets a:1\r\n"), ["gets a:?"]);
    assert_eq!(fps(b"gat 300 a:1\r\n"), ["gat a:?"]);
}

#[test]
fn pymemcache_set_skips_data() {
    // pymemcache's default is noreply; the data block must be skipped, never fingerprinted.
    let b = b"set user:42 0 300 11 noreply\r\nsecret data\r\nget user:43\r\n";
    let c = commands(b);
    assert_eq!(fps(b), ["set user:?", "get user:?"]);
    assert!(!c[0].is_read);
    // A data block that itself looks like a command is still skipped.
    assert_eq!(
        fps(b"set k:1 0 0 9\r\nget k:2\r\n\r\ndelete k:3\r\n"),
        ["set k:?", "delete k:?"]
    );
    assert_eq!(
        fps(b"ms k:1 2 T60\r\nhi\r\nmg k:1 v\r\nmn\r\n"),
        ["ms k:?", "mg k:?"]
    );
}

#[test]
fn other_text_commands() {
    assert_eq!(fps(b"delete user:42\r\n"), ["delete user:?"]);
    assert_eq!(fps(b"incr hits:2024 1\r\n"), ["incr hits:?"]);
    assert_eq!(fps(b"touch s:abc 60\r\n"), ["touch s:abc"]);
    assert_eq!(fps(b"version\r\n"), ["version"]);
    assert!(commands(b"quit\r\n").is_empty());
    assert!(!is_text(b"GET / HTTP/1.1\r\n") && !is_text(b"hello\r\n"));
}

#[test]
fn truncated_text() {
    assert_eq!(fps(b"get user:1 user:2 us"), ["get user:?…"]);
    assert_eq!(fps(b"set user:42 0 300 100\r\npartial"), ["set user:?"]);
    assert_eq!(fps(b"set user:42 0 300"), ["set user:?"]);
    assert_eq!(fps(b"set user:4"), ["set…"]);
    assert!(commands(b"").is_empty());
}

#[test]
fn binary_protocol() {
    let get = bin(0x00, &[], b"user:42", &[]);
    assert!(is_binary(&get));
    let c = commands(&get);
    assert_eq!(c[0].fingerprint, "get user:?");
    assert_eq!(c[0].key_hash, Some(fnv1a(b"user:42")));
    assert!(c[0].is_read);
    let set = bin(0x01, &[0, 0, 0, 0, 0, 0, 1, 44], b"user:42", b"secret");
    assert_eq!(fps(&set), ["set user:?"]);
    // Multi-get: GETKQ × 3 then NOOP is one round trip.
    let mut m = bin(0x0d, &[], b"user:1", &[]);
    m.extend(bin(0x0d, &[], b"user:2", &[]));
    m.extend(bin(0x0d, &[], b"post:3", &[]));
    m.extend(bin(0x0a, &[], &[], &[]));
    m.extend(bin(0x04, &[], b"user:9", &[]));
    assert_eq!(fps(&m), ["getkq user:? post:?", "delete user:?"]);
    // SASL auth: nothing; a cut key: marked, not hashed.
    assert!(commands(&bin(0x21, &[], b"PLAIN", b"\0u\0p")).is_empty());
    let cut = commands(&get[..27]);
    assert_eq!(
        (cut[0].fingerprint.as_str(), cut[0].key_hash),
        ("get…", None)
    );
    assert!(!is_binary(&get[..20]));
}
