//! HTTP/1.x client requests to a downstream service: the request line gives `METHOD /path` with
//! the query string dropped (it often carries tokens) and the path normalized like a cache key
//! (`/users/42/orders` → `/users/?/orders`). Only the first request line of a message is read;
//! headers and bodies never are. An absolute-form target (`GET http://host/path`, as sent to a
//! proxy) keeps only its path: the peer already names the host.

use super::keys::normalize_into;
use super::{bound, mark_truncated, Command};

const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT",
];

/// (method, target, whether the request line was complete).
fn request_line(b: &[u8]) -> Option<(&str, &[u8], bool)> {
    let sp = b.iter().position(|&c| c == b' ')?;
    let method = METHODS.into_iter().find(|m| m.as_bytes() == &b[..sp])?;
    let rest = &b[sp + 1..];
    let line_end = rest.iter().position(|&c| c == b'\r' || c == b'\n');
    let line = &rest[..line_end.unwrap_or(rest.len())];
    let (target, complete) = match line.iter().position(|&c| c == b' ') {
        Some(p) if line[p + 1..].starts_with(b"HTTP/1.") => (&line[..p], true),
        Some(_) => return None,
        // No version yet: only a capture cut inside the target explains that.
        None if line_end.is_none() => (line, false),
        None => return None,
    };
    let plausible = target.first().is_some_and(|&c| c == b'/' || c == b'*')
        || target.starts_with(b"http://")
        || target.starts_with(b"https://");
    plausible.then_some((method, target, complete))
}

pub fn is_request(b: &[u8]) -> bool {
    b.starts_with(b"PRI * HTTP/2.0\r\n") || request_line(b).is_some()
}

pub fn commands(b: &[u8]) -> Vec<Command> {
    let Some((method, target, complete)) = request_line(b) else {
        return Vec::new();
    };
    let mut path = target;
    for scheme in [&b"http://"[..], b"https://"] {
        if let Some(rest) = path.strip_prefix(scheme) {
            path = rest
                .iter()
                .position(|&c| c == b'/')
                .map_or(&b"/"[..], |p| &rest[p..]);
        }
    }
    let query = path.iter().position(|&c| c == b'?' || c == b'#');
    let cut = !complete && query.is_none();
    let mut path = &path[..query.unwrap_or(path.len())];
    if cut {
        // The last segment may be partial: drop it so every cut of it gives one fingerprint.
        let last = path.iter().rposition(|&c| c == b'/').map_or(0, |p| p + 1);
        path = &path[..last];
    }
    let mut fp = format!("{method} ");
    normalize_into(path, &mut fp);
    if cut {
        mark_truncated(&mut fp);
    } else {
        bound(&mut fp);
    }
    vec![Command::named(fp)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: &[u8]) -> String {
        commands(b).pop().map(|c| c.fingerprint).unwrap_or_default()
    }

    #[test]
    fn requests_as_clients_send_them() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"GET /users/42?expand=1 HTTP/1.1\r\nHost: api\r\n\r\n",
                "GET /users/?",
            ),
            (
                b"POST /v1/orders/123e4567-e89b-12d3-a456-426614174000/items HTTP/1.1\r\n",
                "POST /v1/orders/?/items",
            ),
            (
                b"DELETE /blobs/5f2b1c9e8d7a HTTP/1.0\r\n",
                "DELETE /blobs/?",
            ),
            (b"GET http://proxy.local:8080/a/7 HTTP/1.1\r\n", "GET /a/?"),
            (b"GET https://h HTTP/1.1\r\n", "GET /"),
            (b"OPTIONS * HTTP/1.1\r\n", "OPTIONS *"),
            (
                b"GET /static/app.v2.css HTTP/1.1\r\n",
                "GET /static/app.v2.css",
            ),
        ];
        for (req, want) in cases {
            assert!(is_request(req));
            assert_eq!(fp(req), *want, "{}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn cut_request_line() {
        assert!(is_request(b"GET /users/42/prof"));
        assert_eq!(fp(b"GET /users/42/prof"), "GET /users/?/…");
        assert_eq!(fp(b"GET /users/42/profile?tok"), "GET /users/?/profile");
        let long = format!("GET /{} HTTP/1.1\r\n", "segment/".repeat(40));
        let f = fp(long.as_bytes());
        assert!(f.len() <= super::super::FINGERPRINT_MAX && f.ends_with('…'));
    }

    #[test]
    fn not_http() {
        for b in [
            &b"GET foo\r\n"[..],
            b"GET user:1\r\n",
            b"get /x HTTP/1.1\r\n",
            b"GET /x SPDY/3\r\n",
            b"GET",
            b"",
        ] {
            assert!(!is_request(b), "{}", String::from_utf8_lossy(b));
            assert!(commands(b).is_empty());
        }
        assert!(is_request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(commands(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_empty());
    }
}
