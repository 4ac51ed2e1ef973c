//! MySQL client/server protocol: packets are a 3-byte little-endian payload length, a sequence
//! id and the payload. The server speaks first (handshake v10); every client command starts a new
//! sequence at 0, while the handshake response and auth exchange continue the server's sequence
//! (1, 3, …) — that is how auth packets are told apart and skipped.

use super::sql::{fingerprint, Dialect};
use super::{Command, MAX_COMMANDS};

const COM_QUERY: u8 = 0x03;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_FETCH: u8 = 0x1c;

/// (header: payload length, sequence id) of the packet at `at`.
fn header(b: &[u8], at: usize) -> Option<(usize, u8)> {
    let h = b.get(at..at.checked_add(4)?)?;
    let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
    Some((len, h[3]))
}

/// The server's first packet: protocol 10 then a NUL-terminated printable version string.
pub fn is_server_greeting(b: &[u8]) -> bool {
    let Some((len, 0)) = header(b, 0) else {
        return false;
    };
    let payload = &b[4..b.len().min(4 + len)];
    let Some((&10, rest)) = payload.split_first() else {
        return false;
    };
    match rest.iter().position(|&c| c == 0) {
        Some(n) => n > 0 && rest[..n].iter().all(|c| (0x20..0x7f).contains(c)),
        None => false,
    }
}

/// A command on a connection opened before we attached: sequence 0, a known command byte with a
/// plausible payload, and a length that fits the buffer (exactly, or cut by the capture limit).
pub fn is_command(b: &[u8]) -> bool {
    let Some((len, 0)) = header(b, 0) else {
        return false;
    };
    let fits = 4 + len >= b.len() || header(b, 4 + len).is_some_and(|(_, seq)| seq == 0);
    let payload = &b[4..b.len().min(4 + len)];
    let ok = match payload.first() {
        Some(&(COM_QUERY | COM_STMT_PREPARE)) => {
            let text = query_text(payload);
            let first = text.iter().find(|c| !c.is_ascii_whitespace());
            first.is_some_and(|c| c.is_ascii_alphabetic() || b"(/".contains(c))
        }
        Some(&(0x01 | 0x0e | 0x1f)) => len == 1,
        Some(&COM_STMT_EXECUTE) => len >= 10,
        _ => false,
    };
    fits && ok
}

/// The SQL of a COM_QUERY/COM_STMT_PREPARE payload. With CLIENT_QUERY_ATTRIBUTES negotiated a
/// COM_QUERY carries a parameter count and set count first; with no attributes that is `00 01`,
/// which no SQL text starts with, so it is skipped whatever was negotiated.
fn query_text(payload: &[u8]) -> &[u8] {
    let text = payload.get(1..).unwrap_or_default();
    match text {
        [0, 1, rest @ ..] if payload[0] == COM_QUERY => rest,
        _ => text,
    }
}

fn stmt_id(payload: &[u8]) -> String {
    match payload.get(1..5) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]).to_string(),
        _ => "?".to_owned(),
    }
}

fn sql(payload: &[u8], cut: bool) -> String {
    fingerprint(
        &String::from_utf8_lossy(query_text(payload)),
        Dialect::Mysql,
        cut,
    )
}

pub fn commands(b: &[u8]) -> Vec<Command> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((len, seq)) = header(b, pos) {
        let end = pos + 4 + len;
        let payload = &b[pos + 4..end.min(b.len())];
        let cut = end > b.len();
        if out.len() >= MAX_COMMANDS || payload.is_empty() {
            break;
        }
        let fp = match (seq, payload[0]) {
            // Handshake response, auth switch/more data: not commands.
            (1.., _) => None,
            (_, COM_QUERY) => Some(sql(payload, cut)),
            (_, COM_STMT_PREPARE) => Some(format!("PREPARE {}", sql(payload, cut))),
            (_, COM_STMT_EXECUTE) => Some(format!("EXECUTE stmt#{}", stmt_id(payload))),
            (_, COM_STMT_FETCH) => Some(format!("FETCH stmt#{}", stmt_id(payload))),
            // Quit, change user (auth), and the commands the server does not answer (close
            // statement, send long data): no round trip to time.
            (_, 0x01 | 0x11 | 0x18 | 0x19) => None,
            (_, op) => match name(op) {
                Some(n) => Some(n.to_owned()),
                None => break,
            },
        };
        out.extend(fp.map(Command::named));
        pos = end;
    }
    out
}

fn name(op: u8) -> Option<&'static str> {
    Some(match op {
        0x02 => "INIT_DB",
        0x04 => "FIELD_LIST",
        0x07 => "REFRESH",
        0x09 => "STATISTICS",
        0x0c => "PROCESS_KILL",
        0x0d => "DEBUG",
        0x0e => "PING",
        0x1a => "STMT_RESET",
        0x1b => "SET_OPTION",
        0x1f => "RESET_CONNECTION",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap_or(0).to_le_bytes();
        let mut v = vec![len[0], len[1], len[2], seq];
        v.extend_from_slice(payload);
        v
    }

    fn fps(b: &[u8]) -> Vec<String> {
        commands(b).into_iter().map(|c| c.fingerprint).collect()
    }

    #[test]
    fn server_greeting_v10() {
        let mut p = vec![10];
        p.extend_from_slice(b"8.0.36\0\x0b\0\0\0abcdefgh\0\xff\xf7");
        assert!(is_server_greeting(&packet(0, &p)));
        assert!(!is_server_greeting(&packet(0, b"\x0a\0")));
        assert!(!is_server_greeting(&packet(1, &p)));
        assert!(!is_server_greeting(b"+OK\r\n"));
    }

    #[test]
    fn com_query_as_pymysql_sends_it() {
        let q = packet(
            0,
            b"\x03SELECT `app_author`.`id` FROM `app_author` WHERE `app_author`.`id` = 42",
        );
        assert!(is_command(&q));
        assert_eq!(
            fps(&q),
            ["SELECT `app_author`.`id` FROM `app_author` WHERE `app_author`.`id` = ?"]
        );
        // With query attributes negotiated (mysql-connector 8.x): `00 01` before the text.
        assert_eq!(fps(&packet(0, b"\x03\x00\x01SELECT 1")), ["SELECT ?"]);
    }

    #[test]
    fn prepared_statements_and_short_commands() {
        let p = packet(0, b"\x16SELECT * FROM t WHERE id = ?");
        assert_eq!(fps(&p), ["PREPARE SELECT * FROM t WHERE id = ?"]);
        let e = packet(0, &[0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert!(is_command(&e));
        assert_eq!(fps(&e), ["EXECUTE stmt#7"]);
        assert_eq!(fps(&packet(0, &[0x17])), ["EXECUTE stmt#?"]);
        assert_eq!(fps(&packet(0, &[0x0e])), ["PING"]);
        assert!(commands(&packet(0, &[0x01])).is_empty());
        assert!(commands(&packet(0, &[0x19, 7, 0, 0, 0])).is_empty());
    }

    #[test]
    fn handshake_response_gives_nothing() {
        let mut p = vec![0x8d, 0xa6, 0x0f, 0, 0, 0, 0, 1, 0x2d];
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(b"app\0\x14");
        assert!(commands(&packet(1, &p)).is_empty());
        assert!(!is_command(&packet(1, &p)));
    }

    #[test]
    fn pipelined_and_truncated() {
        let mut b = packet(0, b"\x03SET autocommit=0");
        b.extend(packet(0, b"\x03SELECT name FROM app_author WHERE id = 3"));
        assert_eq!(
            fps(&b),
            [
                "SET autocommit=?",
                "SELECT name FROM app_author WHERE id = ?"
            ]
        );
        let long = packet(
            0,
            b"\x03SELECT name FROM app_author WHERE id = 3 AND other = 4",
        );
        assert_eq!(fps(&long[..33]), ["SELECT name FROM app_author…"]);
        assert!(fps(&long[..3]).is_empty());
    }

    #[test]
    fn not_mysql() {
        assert!(!is_command(b"GET / HTTP/1.1\r\n"));
        assert!(!is_command(b"Q\0\0\0\x0dSELECT 1\0"));
        assert!(!is_command(&packet(0, &[0x0e, 0])));
    }
}
