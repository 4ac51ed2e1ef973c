use super::super::keys::{fnv1a, KeyHasher};
use super::*;

/// A command as redis-py encodes it.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    v
}

fn fps(b: &[u8]) -> Vec<String> {
    commands(b).into_iter().map(|c| c.fingerprint).collect()
}

#[test]
fn get_and_set_never_show_values() {
    let get = resp(&["GET", "user:42:profile"]);
    assert!(is_resp(&get));
    let c = commands(&get);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].fingerprint, "GET user:?:profile");
    assert_eq!(c[0].key_hash, Some(fnv1a(b"user:42:profile")));
    assert!(c[0].is_read);
    let set = commands(&resp(&["SET", "user:42", "secret-value", "EX", "60"]));
    assert_eq!(set[0].fingerprint, "SET user:?");
    assert!(!set[0].is_read);
    let mset = fps(&resp(&["MSET", "a:1", "v1", "b:2", "v2"]));
    assert_eq!(mset, ["MSET a:? b:?"]);
}

#[test]
fn redis_py_pipeline() {
    // pipeline().get(...).hgetall(...).incr(...).execute(), in transaction: MULTI … EXEC.
    let mut b = resp(&["MULTI"]);
    b.extend(resp(&["GET", "session:a8Fk2LmQ9xZ7"]));
    b.extend(resp(&["HGETALL", "cart:1234"]));
    b.extend(resp(&["INCR", "counter:views:2024-05-01"]));
    b.extend(resp(&["EXEC"]));
    assert_eq!(
        fps(&b),
        [
            "MULTI",
            "GET session:?",
            "HGETALL cart:?",
            "INCR counter:views:?-?-?",
            "EXEC"
        ]
    );
}

#[test]
fn multi_key_commands_hash_every_key() {
    let c = commands(&resp(&["MGET", "user:1", "user:2", "user:3"]));
    assert_eq!(c[0].fingerprint, "MGET user:?");
    let mut h = KeyHasher::default();
    for k in ["user:1", "user:2", "user:3"] {
        h.add(k.as_bytes());
    }
    assert_eq!(c[0].key_hash, h.finish());
    // Unknown and auth commands: the name only.
    assert_eq!(fps(&resp(&["AUTH", "default", "hunter2"])), ["AUTH"]);
    assert_eq!(commands(&resp(&["AUTH", "hunter2"]))[0].key_hash, None);
    assert_eq!(fps(&resp(&["EVALSHA", "abc", "1", "k"])), ["EVALSHA"]);
}

#[test]
fn inline_commands() {
    assert!(is_inline(b"PING\r\n") && is_inline(b"GET foo\r\n"));
    assert!(!is_inline(b"get foo\r\n") && !is_inline(b"GET foo"));
    assert_eq!(fps(b"PING\r\n"), ["PING"]);
    assert_eq!(
        fps(b"GET user:7\r\nSET user:8 x\r\n"),
        ["GET user:?", "SET user:?"]
    );
    assert_eq!(fps(b"GET user:7"), ["GET…"]);
}

#[test]
fn truncated_pipeline() {
    let mut b = resp(&["GET", "user:1"]);
    b.extend(resp(&[
        "SET",
        "user:2",
        "a long value that the capture cuts",
    ]));
    b.extend(resp(&["GET", "user:3"]));
    // Cut inside SET's value: the SET is complete as far as the fingerprint goes.
    let cut_value = &b[..b.len() - 30];
    let c = commands(cut_value);
    assert_eq!(c.len(), 2);
    assert_eq!(c[1].fingerprint, "SET user:?");
    // Cut inside the key: no hash, marked cut.
    let first = resp(&["GET", "user:12345"]);
    let c = commands(&first[..first.len() - 5]);
    assert_eq!(c[0].fingerprint, "GET…");
    assert_eq!(c[0].key_hash, None);
    // Cut inside the name: nothing.
    assert!(commands(&first[..6]).is_empty());
}

#[test]
fn garbage() {
    for b in [
        &b"*"[..],
        b"*x\r\n",
        b"*2\r\n$3\r\nGE",
        b"*1\r\n:3\r\n",
        b"*-1\r\n",
        b"\r\n",
    ] {
        let _ = commands(b);
    }
    assert!(!is_resp(b"*x\r\n") && !is_resp(b"") && !is_resp(b"+OK\r\n"));
}
