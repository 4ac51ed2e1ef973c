//! A request → OTLP spans: one server span (semantic-convention HTTP attributes, the breakdown
//! and downstream totals as `slowtrace.*` attributes, captures, kill and findings as events),
//! and one client child span per downstream round trip (folded past a cap, with a count).
//! Pure: unit-tested on synthetic requests.

use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue, KeyValue},
    trace::v1::{
        span::{Event, SpanKind},
        status::StatusCode,
        Span, Status,
    },
};

use crate::model::{
    downstream::timeline::{db_system, RoundTrip},
    ids::{child_span_id, request_ids},
    request::split_endpoint,
    slow::{Capture, SlowRequest},
    Request,
};

/// Span names and attribute strings longer than this are cut (a query fingerprint can be long).
const MAX_TEXT: usize = 4096;

pub fn kv(key: &str, v: impl Into<Attr>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(v.into().0),
        }),
        ..KeyValue::default()
    }
}

/// An attribute value.
pub struct Attr(any_value::Value);

impl From<&str> for Attr {
    fn from(s: &str) -> Self {
        Attr(any_value::Value::StringValue(cut(s, MAX_TEXT)))
    }
}
impl From<String> for Attr {
    fn from(s: String) -> Self {
        Attr::from(s.as_str())
    }
}
impl From<i64> for Attr {
    fn from(v: i64) -> Self {
        Attr(any_value::Value::IntValue(v))
    }
}
impl From<u64> for Attr {
    fn from(v: u64) -> Self {
        Attr(any_value::Value::IntValue(
            i64::try_from(v).unwrap_or(i64::MAX),
        ))
    }
}
impl From<u32> for Attr {
    fn from(v: u32) -> Self {
        Attr(any_value::Value::IntValue(i64::from(v)))
    }
}
impl From<bool> for Attr {
    fn from(v: bool) -> Self {
        Attr(any_value::Value::BoolValue(v))
    }
}
impl From<f64> for Attr {
    fn from(v: f64) -> Self {
        Attr(any_value::Value::DoubleValue(v))
    }
}

/// The last `max` bytes of a traceback: its innermost frames are the ones that matter (the
/// attribute would otherwise be cut at its start, the server's main loop).
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    let from = s[start..].find('\n').map_or(start, |i| start + i + 1);
    format!(
        "Traceback (most recent call last, outer frames cut):\n…\n{}",
        &s[from..]
    )
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The server span of `req` and its downstream children; `slow` adds captures and the kill.
pub fn spans(req: &Request, slow: Option<&SlowRequest>) -> Vec<Span> {
    let key = (req.pid, req.conn_id, req.seq);
    let ids = request_ids(key);
    let start = req.start_us.saturating_mul(1000);
    let end = start.saturating_add(req.duration_us.saturating_mul(1000));
    let (method, route) = split_endpoint(&req.endpoint);
    let mut a = Vec::with_capacity(24);
    if !method.is_empty() {
        a.push(kv("http.request.method", method));
        a.push(kv("http.route", route));
    }
    if let Some(p) = &req.path {
        let (path, query) = p.split_once('?').unwrap_or((p, ""));
        a.push(kv("url.path", path));
        if !query.is_empty() {
            a.push(kv("url.query", query));
        }
    }
    if let Some(s) = req.status {
        a.push(kv("http.response.status_code", i64::from(s)));
    }
    if let Some(h) = &req.host {
        a.push(kv(
            "server.address",
            h.rsplit_once(':').map_or(h.as_str(), |(h, _)| h),
        ));
    }
    if let Some(p) = req.local_port {
        a.push(kv("server.port", i64::from(p)));
    }
    if let Some((addr, port)) = req.peer.as_deref().and_then(split_host_port) {
        a.push(kv("client.address", addr));
        a.push(kv("client.port", port));
    }
    if let Some(v) = req.protocol.strip_prefix("http/") {
        a.push(kv("network.protocol.name", "http"));
        a.push(kv("network.protocol.version", v));
    }
    a.push(kv("process.pid", req.pid));
    a.push(kv("thread.id", req.tid));
    a.push(kv("slowtrace.end", req.end));
    if let Some(t) = req.ttfb_us {
        a.push(kv("slowtrace.ttfb_us", t));
    }
    a.push(kv("slowtrace.request.bytes", req.bytes_in));
    a.push(kv("slowtrace.response.bytes", req.bytes_out));
    if let Some(b) = &req.breakdown {
        for (k, v) in [
            ("on_cpu_us", b.on_cpu_us),
            ("runqueue_us", b.runqueue_us),
            ("downstream_us", b.downstream_us),
            ("disk_us", b.disk_us),
            ("lock_us", b.lock_us),
            ("sleep_us", b.sleep_us),
            ("other_us", b.other_us),
            ("switches", b.switches),
        ] {
            a.push(kv(&format!("slowtrace.breakdown.{k}"), v));
        }
        a.push(kv("slowtrace.breakdown.unaccounted_us", b.unaccounted_us));
    }
    if let Some(d) = &req.downstream {
        a.push(kv("slowtrace.downstream.round_trips", d.round_trips));
        a.push(kv("slowtrace.downstream.calls", d.calls));
        a.push(kv("slowtrace.downstream.time_us", d.time_us));
        if let Some(site) = &d.site {
            a.push(kv("slowtrace.downstream.site", site.as_str()));
        }
    }
    let mut events = Vec::new();
    for f in &req.findings {
        events.push(finding_event(f, end));
    }
    for s in &req.signals {
        let mut attrs = Vec::new();
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(s) {
            for (k, v) in m {
                attrs.push(kv(&format!("slowtrace.signal.{k}"), json_text(&v)));
            }
        }
        events.push(Event {
            time_unix_nano: end,
            name: "slowtrace.signal_sent".into(),
            attributes: attrs,
            dropped_attributes_count: 0,
        });
    }
    let mut status = Status::default();
    if req.is_5xx() {
        status.code = StatusCode::Error as i32;
    }
    if let Some(s) = slow {
        a.push(kv("slowtrace.slow", s.killed.is_none()));
        a.push(kv("slowtrace.threshold_ms", s.threshold_ms));
        a.push(kv("slowtrace.captures", s.captures.len() as u64));
        a.push(kv("slowtrace.captures_missed", s.captures_missed));
        for c in &s.captures {
            events.push(capture_event(c, start));
        }
        if let Some(k) = &s.killed {
            status.code = StatusCode::Error as i32;
            status.message = format!("worker killed by {} while serving the request", k.signal);
            events.push(Event {
                time_unix_nano: start.saturating_add(k.at_ms.saturating_mul(1_000_000)),
                name: "slowtrace.kill".into(),
                attributes: vec![
                    kv("signal", k.signal.as_str()),
                    kv("signal.number", k.signo),
                    kv("slowtrace.kill.sender_pid", k.sender_pid),
                    kv("slowtrace.kill.process_died", k.process_died),
                ],
                dropped_attributes_count: 0,
            });
        }
    }
    events.sort_by_key(|e| e.time_unix_nano);
    let mut out = Vec::with_capacity(1 + req.round_trips.len());
    out.push(Span {
        trace_id: ids.trace_id.to_vec(),
        span_id: ids.span_id.to_vec(),
        name: cut(&req.endpoint, 256),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: a,
        events,
        status: Some(status),
        ..Span::default()
    });
    for (i, rt) in req.round_trips.iter().enumerate() {
        out.push(client_span(
            rt,
            &ids.trace_id,
            &ids.span_id,
            child_span_id(key, i as u32),
            start,
        ));
    }
    out
}

fn client_span(
    rt: &RoundTrip,
    trace_id: &[u8; 16],
    parent: &[u8; 8],
    id: [u8; 8],
    origin: u64,
) -> Span {
    let mut a = Vec::with_capacity(10);
    match db_system(rt.protocol) {
        Some(sys) => {
            a.push(kv("db.system.name", sys));
            a.push(kv("db.query.summary", rt.fingerprint.as_str()));
        }
        None if rt.protocol == "http" => {
            if let Some((m, _)) = rt.fingerprint.split_once(' ') {
                a.push(kv("http.request.method", m));
            }
        }
        None => {}
    }
    match split_host_port(&rt.peer) {
        Some((host, port)) => {
            a.push(kv("server.address", host));
            a.push(kv("server.port", port));
        }
        None => {
            a.push(kv("server.address", rt.peer.as_str()));
            if rt.peer.starts_with("unix:") {
                a.push(kv("network.transport", "unix"));
            }
        }
    }
    a.push(kv("slowtrace.protocol", rt.protocol));
    a.push(kv("slowtrace.commands", rt.commands));
    if rt.count > 1 {
        // Folded: this span stands for `count` round trips between its start and end.
        a.push(kv("slowtrace.round_trips", rt.count));
        a.push(kv("slowtrace.busy_us", rt.busy_ns / 1000));
    }
    Span {
        trace_id: trace_id.to_vec(),
        span_id: id.to_vec(),
        parent_span_id: parent.to_vec(),
        name: cut(&rt.fingerprint, 256),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: origin.saturating_add(rt.start_ns),
        end_time_unix_nano: origin.saturating_add(rt.end_ns),
        attributes: a,
        status: Some(Status::default()),
        ..Span::default()
    }
}

/// A capture as a span event: the Python traceback as text (outermost call first, as Python
/// prints it), the innermost frame and the thread state as attributes.
fn capture_event(c: &Capture, start: u64) -> Event {
    let mut a = Vec::with_capacity(8);
    a.push(kv("thread.state", c.state.as_str()));
    if let Some(s) = &c.syscall {
        a.push(kv("slowtrace.syscall", s.as_str()));
    }
    if let Some(f) = c.python.first() {
        a.push(kv("code.function.name", f.function.as_str()));
        if let Some(file) = &f.file {
            a.push(kv("code.file.path", file.as_str()));
        }
        if let Some(l) = f.line {
            a.push(kv("code.line.number", l));
        }
    }
    if !c.python.is_empty() {
        let mut tb = String::from("Traceback (most recent call last):\n");
        for f in c.python.iter().rev() {
            tb.push_str(&format!(
                "  File \"{}\", line {}, in {}\n",
                f.file.as_deref().unwrap_or("?"),
                f.line.map_or_else(|| "?".into(), |l| l.to_string()),
                f.function
            ));
        }
        a.push(kv("slowtrace.python.traceback", tail(&tb, MAX_TEXT - 128)));
    }
    if !c.native.is_empty() {
        let text: Vec<&str> = c.native.iter().map(|f| f.function.as_str()).collect();
        a.push(kv("slowtrace.native.stack", text.join("\n")));
        a.push(kv("slowtrace.native.source", c.native_source.as_str()));
    }
    if !c.kernel.is_empty() {
        let text: Vec<&str> = c.kernel.iter().map(|f| f.function.as_str()).collect();
        a.push(kv("slowtrace.kernel.stack", text.join("\n")));
    }
    if !c.errors.is_empty() {
        a.push(kv("slowtrace.capture.errors", c.errors.join("; ")));
    }
    Event {
        time_unix_nano: start.saturating_add(c.offset_ms.saturating_mul(1_000_000)),
        name: "slowtrace.capture".into(),
        attributes: a,
        dropped_attributes_count: 0,
    }
}

fn finding_event(f: &crate::model::downstream::findings::Finding, at: u64) -> Event {
    let mut a = vec![kv("slowtrace.finding.kind", f.kind())];
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(f) {
        for (k, v) in m {
            if k != "kind" {
                a.push(kv(&format!("slowtrace.finding.{k}"), json_text(&v)));
            }
        }
    }
    Event {
        time_unix_nano: at,
        name: "slowtrace.finding".into(),
        attributes: a,
        dropped_attributes_count: 0,
    }
}

fn json_text(v: &serde_json::Value) -> Attr {
    match v {
        serde_json::Value::String(s) => Attr::from(s.as_str()),
        serde_json::Value::Bool(b) => Attr::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Attr::from(i),
            (None, Some(f)) => Attr::from(f),
            _ => Attr::from(n.to_string()),
        },
        other => Attr::from(other.to_string()),
    }
}

/// `1.2.3.4:80` / `[::1]:80` → (host, port).
fn split_host_port(s: &str) -> Option<(&str, i64)> {
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse::<u16>().ok()?;
    Some((
        h.trim_start_matches('[').trim_end_matches(']'),
        i64::from(port),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        downstream::findings::Finding,
        slow::{Frame, Killed},
    };

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        attrs
            .iter()
            .find(|k| k.key == key)
            .and_then(|k| k.value.as_ref()?.value.as_ref())
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    #[test]
    fn a_request_is_a_server_span_with_semantic_convention_attributes() {
        let mut r = crate::model::request::test_request();
        r.status = Some(503);
        let spans = spans(&r, None);
        assert_eq!(spans.len(), 1);
        let sp = &spans[0];
        assert_eq!(sp.name, "GET /report");
        assert_eq!(sp.kind, SpanKind::Server as i32);
        assert_eq!(sp.end_time_unix_nano - sp.start_time_unix_nano, 1_000_000);
        assert_eq!(sp.start_time_unix_nano, r.start_us * 1000);
        let a = &sp.attributes;
        assert_eq!(attr(a, "http.request.method"), Some(&s("GET")));
        assert_eq!(attr(a, "http.route"), Some(&s("/report")));
        assert_eq!(attr(a, "url.path"), Some(&s("/report")));
        assert_eq!(attr(a, "url.query"), Some(&s("[redacted]")));
        assert_eq!(
            attr(a, "http.response.status_code"),
            Some(&any_value::Value::IntValue(503))
        );
        assert_eq!(attr(a, "client.address"), Some(&s("127.0.0.1")));
        assert_eq!(
            attr(a, "client.port"),
            Some(&any_value::Value::IntValue(50000))
        );
        assert_eq!(
            attr(a, "process.pid"),
            Some(&any_value::Value::IntValue(10))
        );
        assert_eq!(attr(a, "thread.id"), Some(&any_value::Value::IntValue(11)));
        assert_eq!(sp.status.as_ref().unwrap().code, StatusCode::Error as i32);
        let ids = request_ids((10, 77, 0));
        assert_eq!(sp.span_id, ids.span_id.to_vec());
        assert_eq!(sp.trace_id, ids.trace_id.to_vec());
    }

    #[test]
    fn a_killed_slow_request_has_its_captures_kill_and_findings_as_events() {
        let mut r = crate::model::request::test_request();
        r.duration_us = 1_000_000;
        r.findings.push(Finding::NPlusOne {
            fingerprint: "SELECT * FROM t WHERE id = ?".into(),
            count: 40,
            total_ns: 4_000_000,
            peer: "127.0.0.1:5432".into(),
        });
        let frame = |f: &str, l: u32| Frame {
            function: f.into(),
            file: Some("/app/views.py".into()),
            line: Some(l),
            module: None,
        };
        let slow = SlowRequest {
            kind: "killed",
            threshold_ms: 300,
            request: r.clone(),
            killed: Some(Killed {
                signal: "SIGKILL".into(),
                signo: 9,
                sender_pid: 1,
                at_ms: 900,
                process_died: true,
            }),
            captures: vec![Capture {
                offset_ms: 300,
                state: "sleeping".into(),
                syscall: Some("clock_nanosleep".into()),
                python: vec![frame("slow_view", 12), frame("dispatch", 3)],
                native: Vec::new(),
                kernel: Vec::new(),
                native_source: String::new(),
                took_us: 50,
                errors: Vec::new(),
                stack_of: None,
            }],
            captures_missed: 0,
            profile: None,
        };
        let spans = spans(&r, Some(&slow));
        let sp = &spans[0];
        let names: Vec<&str> = sp.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["slowtrace.capture", "slowtrace.kill", "slowtrace.finding"]
        );
        let cap = &sp.events[0];
        assert_eq!(cap.time_unix_nano, sp.start_time_unix_nano + 300_000_000);
        assert_eq!(
            attr(&cap.attributes, "code.function.name"),
            Some(&s("slow_view"))
        );
        assert_eq!(
            attr(&cap.attributes, "code.line.number"),
            Some(&any_value::Value::IntValue(12))
        );
        let Some(any_value::Value::StringValue(tb)) =
            attr(&cap.attributes, "slowtrace.python.traceback")
        else {
            panic!("no traceback")
        };
        assert!(tb.ends_with(
            "  File \"/app/views.py\", line 3, in dispatch\n  File \"/app/views.py\", line 12, in slow_view\n"
        ), "{tb}");
        assert_eq!(
            attr(&sp.events[1].attributes, "signal"),
            Some(&s("SIGKILL"))
        );
        assert_eq!(
            attr(&sp.events[2].attributes, "slowtrace.finding.count"),
            Some(&any_value::Value::IntValue(40))
        );
        assert_eq!(sp.status.as_ref().unwrap().code, StatusCode::Error as i32);
    }

    #[test]
    fn round_trips_are_client_children_of_the_server_span() {
        let mut r = crate::model::request::test_request();
        r.round_trips = vec![
            RoundTrip {
                peer: "127.0.0.1:5432".into(),
                protocol: "postgres",
                fingerprint: "SELECT * FROM t WHERE id = ?".into(),
                start_ns: 1000,
                end_ns: 5000,
                busy_ns: 4000,
                count: 1,
                commands: 1,
            },
            RoundTrip {
                peer: "unix:/run/redis.sock".into(),
                protocol: "redis",
                fingerprint: "GET ?".into(),
                start_ns: 6000,
                end_ns: 90_000,
                busy_ns: 30_000,
                count: 30,
                commands: 30,
            },
        ];
        let spans = spans(&r, None);
        assert_eq!(spans.len(), 3);
        let (server, pg, redis) = (&spans[0], &spans[1], &spans[2]);
        for c in [pg, redis] {
            assert_eq!(c.parent_span_id, server.span_id);
            assert_eq!(c.trace_id, server.trace_id);
            assert_eq!(c.kind, SpanKind::Client as i32);
            assert_ne!(c.span_id, server.span_id);
        }
        assert_eq!(pg.start_time_unix_nano, server.start_time_unix_nano + 1000);
        assert_eq!(
            attr(&pg.attributes, "db.system.name"),
            Some(&s("postgresql"))
        );
        assert_eq!(
            attr(&pg.attributes, "db.query.summary"),
            Some(&s("SELECT * FROM t WHERE id = ?"))
        );
        assert_eq!(
            attr(&pg.attributes, "server.port"),
            Some(&any_value::Value::IntValue(5432))
        );
        assert_eq!(
            attr(&redis.attributes, "slowtrace.round_trips"),
            Some(&any_value::Value::IntValue(30))
        );
        assert_eq!(
            attr(&redis.attributes, "network.transport"),
            Some(&s("unix"))
        );
    }
}
