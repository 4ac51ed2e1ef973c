//! Calls of `--handler` functions, one line each in handlers.jsonl.

use serde::Serialize;
use tracer_common::HandlerRecord;

use super::{
    http::{self, Parsed},
    route,
    slow::Capture,
    Context,
};

/// The HTTP request a handler call ran inside.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Enclosing {
    /// Request index on its connection.
    pub seq: u32,
    /// `GET /users/:int`, when the request line was captured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HandlerCall {
    pub start_us: u64,
    pub start: String,
    pub pid: u32,
    pub tid: u32,
    /// Demangled function name.
    pub handler: String,
    pub binary: String,
    /// Nesting depth on the thread (0 = outermost handler call).
    pub depth: u32,
    pub duration_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Enclosing>,
    /// Stack captures, for a call that ran past the threshold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub captures: Vec<Capture>,
}

impl HandlerCall {
    /// `req_prefix`: the enclosing request's captured bytes, when its connection is still there.
    pub fn from_record(
        r: &HandlerRecord,
        handler: &crate::handlers::Handler,
        req_prefix: Option<&[u8]>,
        ctx: &Context,
    ) -> Self {
        let (start_us, start) = ctx.unix_time(r.start_ns);
        let request = (r.conn_id != 0).then(|| Enclosing {
            seq: r.seq,
            endpoint: req_prefix.and_then(|b| match http::parse_request(b, 0) {
                Parsed::Http(h) => Some(format!("{} {}", h.method, route::normalize(&h.target))),
                _ => None,
            }),
        });
        Self {
            start_us,
            start,
            pid: r.tgid,
            tid: r.tid,
            handler: handler.name.clone(),
            binary: handler.path.display().to_string(),
            depth: r.depth,
            duration_us: r.end_ns.saturating_sub(r.start_ns) / 1000,
            request,
            captures: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_call_with_its_request() {
        let h = crate::handlers::Handler {
            path: "/srv/app".into(),
            symbol: "handle_request".into(),
            name: "handle_request".into(),
        };
        let r = HandlerRecord {
            tgid: 5,
            tid: 6,
            handler: 0,
            depth: 0,
            start_ns: 1_000_000,
            end_ns: 301_000_000,
            conn_id: 9,
            seq: 2,
            fd: 4,
            req_len: 0,
            _pad: 0,
            req: [0; tracer_common::HANDLER_REQ_PREFIX],
        };
        let ctx = Context {
            keep_query: false,
            mono_to_unix_ns: 0,
        };
        let c = HandlerCall::from_record(&r, &h, Some(b"GET /users/7 HTTP/1.1\r\n\r\n"), &ctx);
        assert_eq!(c.duration_us, 300_000);
        assert_eq!(
            c.request.unwrap().endpoint.as_deref(),
            Some("GET /users/:int")
        );
        let none = HandlerRecord { conn_id: 0, ..r };
        assert!(HandlerCall::from_record(&none, &h, None, &ctx)
            .request
            .is_none());
    }
}
