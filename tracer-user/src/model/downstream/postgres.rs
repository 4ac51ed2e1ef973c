//! PostgreSQL frontend messages (protocol 3): a type byte and a big-endian length that counts
//! itself but not the type byte. The startup family (StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest) has no type byte: length then a magic code.
//!
//! One command per round trip: a simple query `Q` is one (several `;`-separated statements are
//! fingerprinted together); an extended-query batch (`P` Parse, `B` Bind, `D` Describe,
//! `E` Execute, `S` Sync in one write) is one per Parse, fingerprinted from its SQL; a batch with
//! Bind/Execute but no Parse reuses a prepared statement and is one `EXECUTE <name>`
//! (`EXECUTE unnamed` for the unnamed statement). Password/SASL, Sync, Flush, Close and Terminate
//! alone give nothing. After an accepted SSLRequest the stream is TLS: it parses as nothing.

use super::sql::{fingerprint, Dialect};
use super::{Command, MAX_COMMANDS};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

fn be32(b: &[u8], at: usize) -> Option<usize> {
    let w = b.get(at..at.checked_add(4)?)?;
    usize::try_from(u32::from_be_bytes([w[0], w[1], w[2], w[3]])).ok()
}

/// A message of the startup family (sent with no type byte, first on a connection).
pub fn is_startup(b: &[u8]) -> bool {
    let (Some(len), Some(code)) = (be32(b, 0), be32(b, 4)) else {
        return false;
    };
    let is_v3 = code >> 16 == 3 && code & 0xffff < 16;
    let special = matches!(
        u32::try_from(code),
        Ok(SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST)
    );
    (8..=10_000).contains(&len) && (is_v3 || special)
}

/// A query-carrying message on a connection opened before we attached: the framing is checked
/// strictly, since a length is all the first bytes say.
pub fn is_message(b: &[u8]) -> bool {
    let Some(len) = be32(b, 1) else {
        return false;
    };
    let body = &b[5..b.len().min(len.saturating_add(1)).max(5)];
    let complete = b.len() > len;
    match b.first() {
        Some(b'Q') => {
            let text_ok = if complete {
                body.iter().position(|&c| c == 0) == Some(body.len().wrapping_sub(1))
            } else {
                !body.contains(&0)
            };
            len >= 5 && text_ok && sql_ish(body)
        }
        Some(b'P') => {
            let (_, rest, named) = cstr(body);
            let (_, _, terminated) = cstr(rest);
            len >= 8 && named && (terminated || !complete) && sql_ish(rest)
        }
        _ => false,
    }
}

fn sql_ish(text: &[u8]) -> bool {
    let first = text.iter().find(|c| !c.is_ascii_whitespace());
    first.is_some_and(|c| c.is_ascii_alphabetic() || b"(/-".contains(c))
}

/// A NUL-terminated string: (string, rest after the NUL, whether the NUL was there).
fn cstr(b: &[u8]) -> (&[u8], &[u8], bool) {
    match b.iter().position(|&c| c == 0) {
        Some(p) => (&b[..p], &b[p + 1..], true),
        None => (b, &[], false),
    }
}

fn sql_command(sql: &[u8], terminated: bool) -> Command {
    let text = String::from_utf8_lossy(sql);
    Command::named(fingerprint(&text, Dialect::Postgres, !terminated))
}

pub fn commands(b: &[u8]) -> Vec<Command> {
    let mut out = Vec::new();
    if is_startup(b) {
        return out;
    }
    let mut parsed = false;
    let mut executed: Option<&[u8]> = None;
    let mut pos = 0;
    while pos < b.len() && out.len() < MAX_COMMANDS {
        let Some(len) = be32(b, pos + 1).filter(|&l| l >= 4) else {
            break;
        };
        let end = pos.saturating_add(1).saturating_add(len);
        let body = &b[(pos + 5).min(b.len())..end.min(b.len())];
        match b[pos] {
            b'Q' => {
                let (sql, _, terminated) = cstr(body);
                out.push(sql_command(sql, terminated));
            }
            b'P' => {
                let (_, rest, _) = cstr(body);
                let (sql, _, terminated) = cstr(rest);
                out.push(sql_command(sql, terminated));
                parsed = true;
            }
            b'B' => {
                let (_, rest, _) = cstr(body);
                executed = executed.or(Some(cstr(rest).0));
            }
            b'E' => executed = executed.or(Some(&[][..])),
            // Describe, Sync, Flush, Close, copy data/done/fail, password/SASL, Terminate.
            b'D' | b'S' | b'H' | b'C' | b'd' | b'c' | b'f' | b'p' | b'X' => {}
            _ => break,
        }
        pos = end;
    }
    if let (false, Some(name)) = (parsed, executed) {
        let name = String::from_utf8_lossy(name);
        let name = if name.is_empty() {
            "unnamed".into()
        } else {
            name
        };
        out.push(Command::named(format!("EXECUTE {name}")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One frontend message: type byte, length, body.
    fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
        let mut v = vec![ty];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn fps(b: &[u8]) -> Vec<String> {
        commands(b).into_iter().map(|c| c.fingerprint).collect()
    }

    #[test]
    fn startup_and_ssl_request() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert!(is_startup(&ssl));
        let mut startup = vec![0, 0, 0, 41, 0, 3, 0, 0];
        startup.extend_from_slice(b"user\0app\0database\0app\0client_encoding\0UTF8\0\0");
        assert!(is_startup(&startup));
        assert!(commands(&ssl).is_empty() && commands(&startup).is_empty());
        assert!(!is_startup(b"Q\0\0\0\x0dSELECT 1\0"));
    }

    #[test]
    fn psycopg_simple_query() {
        let q = msg(
            b'Q',
            b"SELECT \"app_author\".\"id\" FROM \"app_author\" WHERE \"app_author\".\"id\" = 42\0",
        );
        assert!(is_message(&q));
        assert_eq!(
            fps(&q),
            ["SELECT \"app_author\".\"id\" FROM \"app_author\" WHERE \"app_author\".\"id\" = ?"]
        );
        assert_eq!(fps(&msg(b'Q', b"BEGIN\0")), ["BEGIN"]);
        assert!(commands(&msg(b'X', b"")).is_empty());
    }

    #[test]
    fn psycopg3_extended_query_is_one_command() {
        let mut b = msg(
            b'P',
            b"\0SELECT * FROM app_author WHERE id = $1\0\0\x01\0\0\0\x17",
        );
        b.extend(msg(b'B', b"\0\0\0\x01\0\x01\0\x01\0\0\0\x0242\0\x01\0\x01"));
        b.extend(msg(b'D', b"P\0"));
        b.extend(msg(b'E', b"\0\0\0\0\0"));
        b.extend(msg(b'S', b""));
        assert!(is_message(&b));
        assert_eq!(fps(&b), ["SELECT * FROM app_author WHERE id = ?"]);
    }

    #[test]
    fn prepared_statement_reuse() {
        let mut b = msg(b'B', b"\0_pg3_0\0\0\0\0\0\0\0");
        b.extend(msg(b'E', b"\0\0\0\0\0"));
        b.extend(msg(b'S', b""));
        assert_eq!(fps(&b), ["EXECUTE _pg3_0"]);
        let mut u = msg(b'B', b"\0\0\0\0\0\0\0\0");
        u.extend(msg(b'E', b"\0\0\0\0\0"));
        assert_eq!(fps(&u), ["EXECUTE unnamed"]);
        assert!(commands(&msg(b'S', b"")).is_empty());
    }

    #[test]
    fn truncated_capture() {
        let q = msg(
            b'Q',
            b"SELECT a FROM app_author WHERE name = 'bob' AND other_column = 1\0",
        );
        let cut = &q[..40];
        assert!(is_message(cut));
        assert_eq!(fps(cut), ["SELECT a FROM app_author WHERE…"]);
        assert!(commands(&q[..3]).is_empty());
    }

    #[test]
    fn not_postgres() {
        assert!(!is_message(b"Q\0\0\0\x03"));
        assert!(!is_message(b"GET / HTTP/1.1\r\n"));
        // A MySQL COM_STMT_PREPARE whose length byte reads 'P'.
        assert!(!is_message(
            b"P\0\0\0\x16SELECT * FROM t WHERE id = ? AND x = 1 AND y = 2 AND z = 3 AND w = 4"
        ));
    }
}
