//! What we learn from the captured prefixes: request line, Host, status. Never bodies.

/// The parsed start of an HTTP/1.x request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Raw target as sent (path and query).
    pub target: String,
    pub version: u8,
    pub host: Option<String>,
}

/// Result of looking at the first bytes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Http(RequestHead),
    /// Looks like HTTP but the request line did not fit in the captured prefix.
    HttpTruncated {
        method: String,
    },
    /// Not HTTP/1.x (TLS, a binary protocol, garbage).
    Other,
}

const MAX_HEADERS: usize = 32;

/// Parse the `index`-th request found in `buf` (pipelined requests share one captured read).
pub fn parse_request(buf: &[u8], index: usize) -> Parsed {
    let mut rest = buf;
    for _ in 0..index {
        match request_len(rest) {
            Some(n) => rest = &rest[n..],
            None => return truncated_or_other(buf),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(rest) {
        Ok(_) => {}
        // Too many headers for our array, or a header line cut by the capture: the request line
        // already parsed is still worth keeping.
        Err(_) if req.method.is_some() && req.path.is_some() => {}
        Err(_) => return truncated_or_other(rest),
    }
    match (req.method, req.path, req.version) {
        (Some(m), Some(p), Some(v)) => Parsed::Http(RequestHead {
            method: m.to_owned(),
            target: p.to_owned(),
            version: v,
            host: req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::to_owned),
        }),
        _ => truncated_or_other(rest),
    }
}

/// Bytes taken by one complete request head plus its Content-Length body, if all of it is there.
fn request_len(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = req.parse(buf).ok()? else {
        return None;
    };
    let body = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    let n = head.checked_add(body)?;
    (n <= buf.len()).then_some(n)
}

fn truncated_or_other(buf: &[u8]) -> Parsed {
    let token: &[u8] = buf.split(|b| *b == b' ').next().unwrap_or_default();
    let is_method = !token.is_empty()
        && token.len() <= 16
        && token.len() < buf.len()
        && token.iter().all(|b| b.is_ascii_uppercase());
    match std::str::from_utf8(token) {
        Ok(m) if is_method => Parsed::HttpTruncated {
            method: m.to_owned(),
        },
        _ => Parsed::Other,
    }
}

/// Status code from a captured response prefix (`HTTP/1.1 200 OK`).
pub fn parse_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/")?;
    let sp = rest.iter().position(|b| *b == b' ')?;
    let code = rest.get(sp + 1..sp + 4)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_and_host() {
        let p = parse_request(
            b"GET /a/b?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
            0,
        );
        let Parsed::Http(h) = p else { panic!("{p:?}") };
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/a/b?x=1"));
        assert_eq!(h.host.as_deref(), Some("example.com"));
        assert_eq!(h.version, 1);
    }

    #[test]
    fn headers_cut_by_the_capture_keep_the_request_line() {
        let p = parse_request(b"POST /submit HTTP/1.0\r\nUser-Agent: curl/8\r\nCooki", 0);
        let Parsed::Http(h) = p else { panic!("{p:?}") };
        assert_eq!(h.method, "POST");
        assert_eq!(h.host, None);
    }

    #[test]
    fn request_line_cut_is_truncated_http() {
        assert_eq!(
            parse_request(b"GET /a-very-long-path-that-never-ends", 0),
            Parsed::HttpTruncated {
                method: "GET".into()
            }
        );
    }

    #[test]
    fn pipelined_requests_by_index() {
        let buf = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\n\r\n";
        let targets: Vec<String> = (0..3)
            .map(|i| match parse_request(buf, i) {
                Parsed::Http(h) => format!("{} {}", h.method, h.target),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(targets, ["GET /1", "POST /2", "GET /3"]);
        assert_eq!(parse_request(buf, 3), Parsed::Other, "beyond the capture");
    }

    #[test]
    fn garbage_is_other_and_never_panics() {
        assert_eq!(
            parse_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 0),
            Parsed::Other
        );
        assert_eq!(parse_request(b"", 0), Parsed::Other);
        assert_eq!(parse_request(b"SSH-2.0-OpenSSH_9.2\r\n", 0), Parsed::Other);
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse_request(&bytes, 0);
            let _ = parse_request(&bytes, 2);
            let _ = parse_status(&bytes);
        }
    }

    #[test]
    fn status_codes() {
        assert_eq!(parse_status(b"HTTP/1.1 404 Not Found\r\n"), Some(404));
        assert_eq!(parse_status(b"HTTP/1.0 200 OK"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status(b"<html>"), None);
    }
}
