//! Cross-protocol tests: recognition of first messages as real clients send them, and no panic on
//! any input (cut captures, garbage, pseudo-random bytes) through every parser.

use super::*;

fn mysql_greeting() -> Vec<u8> {
    let mut p = b"\x0a8.0.36\0\x0b\0\0\0abcdefgh\0\xff\xf7\xff\x02\0\xff\xdf".to_vec();
    p.extend_from_slice(&[0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    p.extend_from_slice(b"ijklmnopqrst\0caching_sha2_password\0");
    let len = u32::try_from(p.len()).unwrap_or(0).to_le_bytes();
    let mut v = vec![len[0], len[1], len[2], 0];
    v.extend(p);
    v
}

#[test]
fn recognizes_first_messages() {
    let cases: &[(&[u8], Protocol)] = &[
        // psycopg: SSLRequest, then StartupMessage.
        (&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], Protocol::Postgres),
        (
            b"\0\0\0\x25\0\x03\0\0user\0app\0database\0app\0\0",
            Protocol::Postgres,
        ),
        // A pooled Postgres connection opened before attach.
        (b"Q\0\0\0\x0dSELECT 1\0", Protocol::Postgres),
        (b"*2\r\n$3\r\nGET\r\n$7\r\nuser:42\r\n", Protocol::Redis),
        (b"*1\r\n$4\r\nPING\r\n", Protocol::Redis),
        (b"PING\r\n", Protocol::Redis),
        (b"get user:42\r\n", Protocol::Memcached),
        (b"set k 0 0 5 noreply\r\nhello\r\n", Protocol::Memcached),
        (b"version\r\n", Protocol::Memcached),
        (
            b"GET /users/42 HTTP/1.1\r\nHost: api\r\n\r\n",
            Protocol::Http,
        ),
        (b"POST /v1/charge HTTP/1.1\r\n", Protocol::Http),
        // A pooled MySQL connection: COM_QUERY with sequence 0.
        (b"\x09\0\0\0\x03SELECT 1", Protocol::Mysql),
        (b"\x01\0\0\0\x0e", Protocol::Mysql),
        (b"", Protocol::Unknown),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            Protocol::Unknown,
        ),
        (b"hello world\r\n", Protocol::Unknown),
    ];
    for (client, want) in cases {
        assert_eq!(
            recognize(client, None),
            *want,
            "{}",
            String::from_utf8_lossy(client)
        );
    }
    let mut get = vec![0x80, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3];
    get.extend_from_slice(&[0; 12]);
    get.extend_from_slice(b"k:1");
    assert_eq!(recognize(&get, None), Protocol::Memcached);
}

#[test]
fn mysql_by_its_server_greeting() {
    let greeting = mysql_greeting();
    // The handshake response (sequence 1) alone says nothing; the greeting does.
    let response = b"\x55\0\0\x01\x8d\xa6\x0f\0\0\0\0\x01\x2d";
    assert_eq!(recognize(response, None), Protocol::Unknown);
    assert_eq!(
        recognize(response, Some(greeting.as_slice())),
        Protocol::Mysql
    );
    assert!(commands(Protocol::Mysql, response).is_empty());
    assert_eq!(
        recognize(b"PING\r\n", Some(&b"+PONG\r\n"[..])),
        Protocol::Redis
    );
}

#[test]
fn commands_dispatch() {
    let c = commands(Protocol::Redis, b"*2\r\n$3\r\nGET\r\n$7\r\nuser:42\r\n");
    assert_eq!(c[0].fingerprint, "GET user:?");
    assert!(commands(Protocol::Unknown, b"GET /x HTTP/1.1\r\n").is_empty());
    let long = "x".repeat(500);
    assert!(Command::named(long).fingerprint.len() <= FINGERPRINT_MAX);
}

/// xorshift64*: deterministic, no crate needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

const ALL: [Protocol; 6] = [
    Protocol::Postgres,
    Protocol::Mysql,
    Protocol::Redis,
    Protocol::Memcached,
    Protocol::Http,
    Protocol::Unknown,
];

fn check(b: &[u8]) {
    let _ = recognize(b, Some(b));
    for p in ALL {
        for c in commands(p, b) {
            assert!(c.fingerprint.len() <= FINGERPRINT_MAX, "{p:?} {b:?}");
        }
    }
}

#[test]
fn every_prefix_of_real_messages_is_safe() {
    let mut ext = b"P\0\0\0\x2b\0SELECT * FROM t WHERE id = $1\0\0\x01\0\0\0\x17".to_vec();
    ext.extend_from_slice(b"B\0\0\0\x0c\0\0\0\0\0\0\0\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04");
    let samples: Vec<Vec<u8>> = vec![
        ext,
        b"\x2a\0\0\0\x03SELECT `a` FROM `t` WHERE `b` = 'x\\'y' AND c IN (1,2)".to_vec(),
        b"*3\r\n$3\r\nSET\r\n$6\r\nuser:1\r\n$5\r\nhello\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
            .to_vec(),
        b"set k:1 0 0 5\r\nhello\r\nget k:1 k:2\r\n".to_vec(),
        b"GET /a/1?x=2 HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
        mysql_greeting(),
    ];
    for s in &samples {
        for end in 0..=s.len() {
            check(&s[..end]);
            check(&s[end..]);
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Bytes biased towards the ones that drive the parsers, so deep paths are reached.
    let alphabet = b"*$:\r\n 0123456789QPBESX'\"`$()?,-/#\x00\x03\x16\x17\x80\xffgetsGETabc";
    for i in 0..20_000 {
        let len = usize::from(rng.byte() % 64) + usize::from(i % 4 == 0) * 200;
        let biased = i % 2 == 0;
        let b: Vec<u8> = (0..len)
            .map(|_| {
                let r = rng.byte();
                if biased {
                    alphabet[usize::from(r) % alphabet.len()]
                } else {
                    r
                }
            })
            .collect();
        check(&b);
    }
}
