//! A request as slowtrace reports it: the kernel record plus what user space makes of it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use tracer_common::{conn::FLAG_PIPELINED, EndReason, RequestRecord};

use super::{
    http::{self, Parsed},
    route,
};

/// 9999-12-31T23:59:59.999999Z, the last time RFC 3339 can write, in µs since the epoch.
const MAX_RFC3339_US: u64 = 253_402_300_799_999_999;

/// How records become requests.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub keep_query: bool,
    /// Add to a kernel monotonic timestamp to get Unix time in ns.
    pub mono_to_unix_ns: i128,
}

impl Context {
    /// A kernel (monotonic) timestamp as Unix µs and RFC 3339.
    pub fn unix_time(&self, mono_ns: u64) -> (u64, String) {
        let us = u64::try_from((i128::from(mono_ns) + self.mono_to_unix_ns) / 1000).unwrap_or(0);
        // humantime's Display fails (and `to_string` panics) past the year 9999.
        let text = humantime::format_rfc3339_micros(
            std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.min(MAX_RFC3339_US)),
        )
        .to_string();
        (us, text)
    }
}

/// One line of requests.jsonl (docs/output-formats.md).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Request {
    /// Unix time of the first request byte, in microseconds.
    pub start_us: u64,
    /// The same, RFC 3339 (UTC).
    pub start: String,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// The process's cgroup v2 path (/proc/PID/cgroup), absent for the root cgroup: which
    /// container or service served it. Set by the agent, not from the kernel record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The container id in `cgroup` (its 64 hex digits: docker, podman, containerd, CRI-O).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub fd: u32,
    pub local_port: Option<u16>,
    pub peer: Option<String>,
    /// `http/1.1`, `http/1.0` or `other`.
    pub protocol: &'static str,
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    /// Method and normalized route, the aggregation key.
    pub endpoint: String,
    pub status: Option<u16>,
    pub duration_us: u64,
    pub ttfb_us: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Why the request was considered finished (see `end_reason_name`).
    pub end: &'static str,
    /// Request index on its connection (keep-alive), from 0.
    pub seq: u32,
    /// The kernel's id of the served connection: with `pid` and `seq` it names the request to the
    /// profiler and the downstream tracker (`ids::ReqKey`), and seeds the exported span ids.
    #[serde(skip)]
    pub conn_id: u64,
    /// Position in a pipeline when several requests came in one read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline_index: Option<u16>,
    /// Signals slowtrace sent to the serving thread during this request (`--interrupt-after`,
    /// `--dump-signal`); empty, and absent from the JSON, unless asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<crate::act::Sent>,
    /// Where the time went (scheduler view of the serving thread); absent for requests still
    /// running at exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<super::breakdown::Breakdown>,
    /// Calls to databases, caches and services made while serving it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downstream: Option<super::downstream::calls::Summary>,
    /// N+1 queries, repeated cache keys, CPU-, lock- or peer-bound (findings.jsonl has them too).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<super::downstream::findings::Finding>,
    /// Its downstream round trips in time order (capped, the rest folded), kept only when an
    /// output draws them (`AgentConfig::keep_round_trips`: the OTLP client spans).
    #[serde(skip)]
    pub round_trips: Vec<super::downstream::timeline::RoundTrip>,
    /// A `SlowRequest` report of it follows (`Consumer::on_slow`, right after this request):
    /// outputs that want the report rather than the bare request wait for it.
    #[serde(skip)]
    pub reported_slow: bool,
}

impl Request {
    /// `now_ns` (kernel clock) ends requests that have no end yet (in flight).
    pub fn from_record(
        r: &RequestRecord,
        end: EndReason,
        now_ns: u64,
        local_port: Option<u16>,
        ctx: &Context,
    ) -> Self {
        let req_bytes = &r.req[..usize::from(r.req_len).min(r.req.len())];
        let resp_bytes = &r.resp[..usize::from(r.resp_len).min(r.resp.len())];
        let (protocol, method, path, host, endpoint) =
            match http::parse_request(req_bytes, usize::from(r.pipeline_index)) {
                Parsed::Http(h) => {
                    let endpoint = format!("{} {}", h.method, route::normalize(&h.target));
                    let path = if ctx.keep_query {
                        h.target
                    } else {
                        route::redact_query(&h.target)
                    };
                    let proto = if h.version == 0 {
                        "http/1.0"
                    } else {
                        "http/1.1"
                    };
                    (proto, Some(h.method), Some(path), h.host, endpoint)
                }
                Parsed::HttpTruncated { method } => {
                    let endpoint = format!("{method} (not captured)");
                    ("http/1.1", Some(method), None, None, endpoint)
                }
                Parsed::Other if r.req_len == 0 => {
                    ("other", None, None, None, "(not captured)".to_owned())
                }
                Parsed::Other => ("other", None, None, None, "(non-http)".to_owned()),
            };
        let end_ns = match end {
            EndReason::InFlight => now_ns,
            EndReason::ProcessExit if r.end_ns == 0 => now_ns,
            _ => r.end_ns.max(r.start_ns),
        };
        let (start_us, start) = ctx.unix_time(r.start_ns);
        Self {
            start_us,
            start,
            pid: r.tgid,
            tid: r.tid,
            comm: cstr(&r.comm),
            cgroup: None,
            container: None,
            fd: r.fd,
            local_port,
            peer: peer(r),
            protocol,
            method,
            path,
            host,
            endpoint,
            status: http::parse_status(resp_bytes),
            duration_us: end_ns.saturating_sub(r.start_ns) / 1000,
            ttfb_us: (r.resp_ns != 0).then(|| r.resp_ns.saturating_sub(r.start_ns) / 1000),
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            end: end_reason_name(end),
            seq: r.seq,
            conn_id: r.conn_id,
            pipeline_index: (r.flags & FLAG_PIPELINED != 0).then_some(r.pipeline_index),
            signals: Vec::new(),
            breakdown: None,
            downstream: None,
            findings: Vec::new(),
            round_trips: Vec::new(),
            reported_slow: false,
        }
    }

    pub fn is_5xx(&self) -> bool {
        matches!(self.status, Some(500..=599))
    }
}

/// The endpoint (aggregation key) of a request from its first bytes, as `Request` names it.
pub fn endpoint_of(prefix: &[u8]) -> String {
    match http::parse_request(prefix, 0) {
        Parsed::Http(h) => format!("{} {}", h.method, route::normalize(&h.target)),
        Parsed::HttpTruncated { method } => format!("{method} (not captured)"),
        Parsed::Other if prefix.is_empty() => "(not captured)".to_owned(),
        Parsed::Other => "(non-http)".to_owned(),
    }
}

/// `GET /users/{id}` → (`GET`, `/users/{id}`); `(non-http)` → (``, `(non-http)`).
pub fn split_endpoint(endpoint: &str) -> (&str, &str) {
    match endpoint.split_once(' ') {
        Some((m, r)) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') => {
            (m, r)
        }
        _ => ("", endpoint),
    }
}

pub fn end_reason_name(e: EndReason) -> &'static str {
    match e {
        EndReason::None => "open",
        EndReason::Close => "close",
        EndReason::NextRequest => "next_request",
        EndReason::Pipelined => "pipelined",
        EndReason::FdReused => "fd_reused",
        EndReason::Idle => "idle",
        EndReason::InFlight => "in_flight",
        EndReason::ProcessExit => "process_exit",
    }
}

fn cstr(b: &[u8]) -> String {
    let n = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..n]).into_owned()
}

fn peer(r: &RequestRecord) -> Option<String> {
    let ip = match r.peer_family {
        2 => IpAddr::V4(Ipv4Addr::new(
            r.peer_addr[0],
            r.peer_addr[1],
            r.peer_addr[2],
            r.peer_addr[3],
        )),
        10 => {
            let v6 = Ipv6Addr::from(r.peer_addr);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        1 => return Some("unix".to_owned()),
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, r.peer_port).to_string())
}

/// A plain finished request for unit tests of the outputs.
#[cfg(test)]
pub fn test_request() -> Request {
    Request {
        start_us: 1_764_000_000_000_000,
        start: "2025-11-24T16:00:00.000000Z".into(),
        pid: 10,
        tid: 11,
        comm: "gunicorn".into(),
        cgroup: None,
        container: None,
        fd: 5,
        local_port: Some(8000),
        peer: Some("127.0.0.1:50000".into()),
        protocol: "http/1.1",
        method: Some("GET".into()),
        path: Some("/report?[redacted]".into()),
        host: Some("example".into()),
        endpoint: "GET /report".into(),
        status: Some(200),
        duration_us: 1000,
        ttfb_us: Some(900),
        bytes_in: 100,
        bytes_out: 200,
        end: "close",
        seq: 0,
        conn_id: 77,
        pipeline_index: None,
        signals: Vec::new(),
        breakdown: None,
        downstream: None,
        findings: Vec::new(),
        round_trips: Vec::new(),
        reported_slow: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (records.rs): a time past the year 9999 made `unix_time` panic.
    #[test]
    fn times_past_rfc3339_are_written_as_its_last_moment() {
        let ctx = Context {
            keep_query: false,
            mono_to_unix_ns: i128::from(i64::MAX) * 64,
        };
        let (us, text) = ctx.unix_time(u64::MAX);
        assert!(us > MAX_RFC3339_US);
        assert_eq!(text, "9999-12-31T23:59:59.999999Z");
    }

    pub(crate) fn record(req: &[u8], resp: &[u8], start: u64, end: u64) -> RequestRecord {
        let mut r = RequestRecord::zeroed();
        r.tgid = 7;
        r.tid = 8;
        r.req[..req.len()].copy_from_slice(req);
        r.req_len = req.len() as u16;
        r.resp[..resp.len()].copy_from_slice(resp);
        r.resp_len = resp.len() as u16;
        r.start_ns = start;
        r.resp_ns = start + 1_000_000;
        r.end_ns = end;
        r.peer_family = 2;
        r.peer_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.peer_port = 5555;
        r.comm[..6].copy_from_slice(b"python");
        r
    }

    const CTX: Context = Context {
        keep_query: false,
        mono_to_unix_ns: 1_700_000_000_000_000_000,
    };

    #[test]
    fn builds_a_request() {
        let r = record(
            b"GET /users/12?token=x HTTP/1.1\r\nHost: h:1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n",
            1_000_000_000,
            1_300_000_000,
        );
        let q = Request::from_record(&r, EndReason::Close, 0, Some(8000), &CTX);
        assert_eq!(q.endpoint, "GET /users/:int");
        assert_eq!(q.path.as_deref(), Some("/users/12?[redacted]"));
        assert_eq!(q.status, Some(200));
        assert_eq!(q.duration_us, 300_000);
        assert_eq!(q.ttfb_us, Some(1000));
        assert_eq!(q.peer.as_deref(), Some("127.0.0.1:5555"));
        assert_eq!(q.comm, "python");
        assert_eq!(q.start, "2023-11-14T22:13:21.000000Z");
        assert_eq!(q.end, "close");
    }

    #[test]
    fn keep_query_keeps_it() {
        let r = record(
            b"GET /s?q=1 HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 404 Not Found",
            1,
            2,
        );
        let ctx = Context {
            keep_query: true,
            ..CTX
        };
        let q = Request::from_record(&r, EndReason::Close, 0, None, &ctx);
        assert_eq!(q.path.as_deref(), Some("/s?q=1"));
        assert_eq!(q.status, Some(404));
    }

    #[test]
    fn in_flight_runs_until_now() {
        let mut r = record(b"GET /slow HTTP/1.1\r\n\r\n", b"", 1_000, 0);
        r.resp_ns = 0;
        let q = Request::from_record(&r, EndReason::InFlight, 5_001_000, None, &CTX);
        assert_eq!(q.duration_us, 5000);
        assert_eq!(q.status, None);
        assert_eq!(q.ttfb_us, None);
        assert_eq!(q.end, "in_flight");
    }

    #[test]
    fn non_http_is_labelled() {
        let r = record(b"\x00\x01binary\xff", b"\x02", 1, 2);
        let q = Request::from_record(&r, EndReason::Close, 0, None, &CTX);
        assert_eq!((q.protocol, q.endpoint.as_str()), ("other", "(non-http)"));
        assert_eq!(q.method, None);
    }
}
