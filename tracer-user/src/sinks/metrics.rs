//! Fleet metrics: the per-endpoint aggregates the agent's metric outputs read — the Prometheus
//! `/metrics` endpoint (`sinks::prometheus`) and the OTLP metrics exporter (`sinks::otlp`). One
//! store, updated once per request on the agent thread; readers take a `Snapshot` under the lock
//! (a scrape every few seconds), so the agent never encodes anything itself.
//!
//! Cardinality is bounded: at most `max_endpoints` distinct (service, endpoint) rows and
//! `MAX_PEERS` downstream peers; what falls over the caps is counted under one overflow row
//! (`http_route="(overflow)"`, method `_OTHER` as OpenTelemetry names unknown methods) and in
//! `slowtrace_overflow_total`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Instant,
};

use tracer_common::Counter;

use crate::{
    agent::Counters,
    model::{request::split_endpoint, slow::SlowRequest, Request},
};

/// Upper bounds of the request-duration histogram, in seconds: OpenTelemetry's advice for
/// `http.server.request.duration`, plus 1 ms and 2.5 ms below (a static file or a cache hit) and
/// 30 s and 60 s above (the requests slowtrace exists for).
pub const BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    30.0, 60.0,
];

/// Distinct downstream peers per service at most.
const MAX_PEERS: usize = 256;
pub const DEFAULT_MAX_ENDPOINTS: usize = 1000;
pub const OVERFLOW_ENDPOINT: &str = "_OTHER (overflow)";
const OVERFLOW_PEER: &str = "(overflow)";

/// The breakdown's parts, in `Breakdown` field order, as label values.
pub const PARTS: [&str; 7] = [
    "on_cpu",
    "runqueue",
    "downstream",
    "disk",
    "lock",
    "sleep",
    "other",
];

/// A duration histogram: per-bucket counts (not cumulative; the last is +Inf), sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Hist {
    pub buckets: [u64; BUCKETS.len() + 1],
    pub sum: f64,
    pub count: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Hist {
    pub fn observe(&mut self, secs: f64) {
        let i = BUCKETS.partition_point(|b| *b < secs);
        self.buckets[i] += 1;
        self.sum += secs;
        self.count += 1;
    }

    /// (upper bound, cumulative count) per bucket, +Inf last: the Prometheus form.
    #[cfg(test)]
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets)
            .map(|(b, n)| {
                acc += n;
                (b, acc)
            })
            .collect()
    }
}

#[derive(Debug, Default)]
struct Endpoint {
    /// By status code (0: none seen, e.g. the connection closed before a response).
    by_status: Vec<(u16, Hist)>,
    breakdown_us: [u64; PARTS.len()],
    slow: u64,
    killed: Vec<(String, u64)>,
    findings: Vec<(&'static str, u64)>,
}

#[derive(Debug, Default)]
struct Service {
    endpoints: HashMap<String, Endpoint>,
    /// (peer, protocol) → (round trips, µs).
    peers: HashMap<(String, &'static str), (u64, u64)>,
}

#[derive(Debug, Default)]
struct Store {
    services: HashMap<String, Service>,
    endpoints: usize,
    endpoint_overflow: u64,
    peer_overflow: u64,
    requests: u64,
    counters: Counters,
    /// Kernel events per second over the last tick interval.
    events_per_sec: f64,
    last_events: Option<(Instant, u64)>,
}

/// What the exporters did, shared with the metric outputs (the exporters' own losses are
/// metrics too).
#[derive(Debug, Default)]
pub struct ExportStats {
    pub spans_queued: AtomicU64,
    pub spans_sent: AtomicU64,
    /// Not queued: the exporter's queue was full (collector slow or down).
    pub spans_dropped: AtomicU64,
    /// Sent and refused, or given up after the retries.
    pub spans_failed: AtomicU64,
    /// Requests not exported because of the sampling ratio.
    pub spans_sampled_out: AtomicU64,
    pub batches_sent: AtomicU64,
    pub batches_failed: AtomicU64,
    pub retries: AtomicU64,
    pub metric_exports: AtomicU64,
    pub metric_exports_failed: AtomicU64,
    /// The last export error, for the agent's log line.
    last_error: Mutex<String>,
}

impl ExportStats {
    pub fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    pub fn note_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The store, for the agent thread (writes) and the metric outputs (snapshots).
#[derive(Debug)]
pub struct FleetMetrics {
    store: Mutex<Store>,
    max_endpoints: usize,
    /// `--service-name`: one service for every target. None: each process's name.
    service: Option<String>,
    pub started_unix_ns: u64,
    pub export: ExportStats,
}

impl FleetMetrics {
    pub fn new(max_endpoints: usize, service: Option<String>) -> Self {
        let started_unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            store: Mutex::new(Store::default()),
            max_endpoints: max_endpoints.max(1),
            service,
            started_unix_ns,
            export: ExportStats::default(),
        }
    }

    pub fn service_of<'a>(&'a self, req: &'a Request) -> &'a str {
        self.service.as_deref().unwrap_or(&req.comm)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // A reader that panicked mid-snapshot leaves the numbers intact: keep serving them.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A finished request (in-flight ones at exit are not finished: not counted).
    pub fn request(&self, req: &Request) {
        if req.end == "in_flight" {
            return;
        }
        let service = self.service_of(req);
        let mut guard = self.lock();
        let st = &mut *guard;
        st.requests += 1;
        let (ep, _) = st.endpoint(service, &req.endpoint, self.max_endpoints);
        let status = req.status.unwrap_or(0);
        let hist = match ep.by_status.iter_mut().position(|(s, _)| *s == status) {
            Some(i) => &mut ep.by_status[i].1,
            None => {
                ep.by_status.push((status, Hist::default()));
                &mut ep.by_status.last_mut().expect("just pushed").1
            }
        };
        hist.observe(req.duration_us as f64 / 1e6);
        if let Some(b) = &req.breakdown {
            let parts = [
                b.on_cpu_us,
                b.runqueue_us,
                b.downstream_us,
                b.disk_us,
                b.lock_us,
                b.sleep_us,
                b.other_us,
            ];
            for (acc, v) in ep.breakdown_us.iter_mut().zip(parts) {
                *acc += v;
            }
        }
        for f in &req.findings {
            bump(&mut ep.findings, f.kind());
        }
        if let Some(d) = &req.downstream {
            let svc = st.services.get_mut(service).expect("endpoint() made it");
            for p in &d.peers {
                let key = (p.peer.clone(), p.protocol);
                let full = svc.peers.len() >= MAX_PEERS && !svc.peers.contains_key(&key);
                let key = if full {
                    st.peer_overflow += 1;
                    (OVERFLOW_PEER.to_owned(), p.protocol)
                } else {
                    key
                };
                let e = svc.peers.entry(key).or_default();
                e.0 += p.round_trips;
                e.1 += p.time_us;
            }
        }
    }

    /// A slow or killed request's report.
    pub fn slow(&self, slow: &SlowRequest) {
        let req = &slow.request;
        let service = self.service_of(req);
        let mut st = self.lock();
        let (ep, _) = st.endpoint(service, &req.endpoint, self.max_endpoints);
        match &slow.killed {
            Some(k) => match ep.killed.iter_mut().find(|(s, _)| *s == k.signal) {
                Some(e) => e.1 += 1,
                None => ep.killed.push((k.signal.clone(), 1)),
            },
            None => ep.slow += 1,
        }
    }

    /// Every agent tick: the kernel and user-space counters so far.
    pub fn counters(&self, c: &Counters) {
        let mut st = self.lock();
        let now = Instant::now();
        let events = c.get(Counter::Events);
        if let Some((then, before)) = st.last_events {
            let dt = now.duration_since(then).as_secs_f64();
            if dt >= 0.5 {
                st.events_per_sec = events.saturating_sub(before) as f64 / dt;
                st.last_events = Some((now, events));
            }
        } else {
            st.last_events = Some((now, events));
        }
        st.counters.clone_from(c);
    }

    /// Requests seen and the counters of the last tick, for the agent's status line.
    pub fn totals(&self) -> (u64, Counters) {
        let st = self.lock();
        (st.requests, st.counters.clone())
    }

    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        let mut s = Snapshot::default();
        let mut durations = Vec::new();
        let mut breakdown = Vec::new();
        let mut findings = Vec::new();
        let mut slow = Vec::new();
        let mut killed = Vec::new();
        let mut rt = Vec::new();
        let mut rt_time = Vec::new();
        for (service, svc) in &st.services {
            for (endpoint, ep) in &svc.endpoints {
                let (method, route) = split_endpoint(endpoint);
                let base = || {
                    vec![
                        ("service_name", service.clone()),
                        ("http_request_method", method.to_owned()),
                        ("http_route", route.to_owned()),
                    ]
                };
                for (status, h) in &ep.by_status {
                    let mut l = base();
                    if *status != 0 {
                        l.push(("http_response_status_code", status.to_string()));
                    }
                    durations.push(Point::new(l, Value::Hist(h.clone())));
                }
                for (part, us) in PARTS.iter().zip(ep.breakdown_us) {
                    let mut l = base();
                    l.push(("part", (*part).to_owned()));
                    breakdown.push(Point::new(l, Value::Float(us as f64 / 1e6)));
                }
                for (kind, n) in &ep.findings {
                    let mut l = base();
                    l.push(("kind", (*kind).to_owned()));
                    findings.push(Point::new(l, Value::Int(*n)));
                }
                if ep.slow > 0 {
                    slow.push(Point::new(base(), Value::Int(ep.slow)));
                }
                for (sig, n) in &ep.killed {
                    let mut l = base();
                    l.push(("signal", sig.clone()));
                    killed.push(Point::new(l, Value::Int(*n)));
                }
            }
            for ((peer, protocol), (n, us)) in &svc.peers {
                let l = vec![
                    ("service_name", service.clone()),
                    ("server_address", peer.clone()),
                    ("protocol", (*protocol).to_owned()),
                ];
                rt.push(Point::new(l.clone(), Value::Int(*n)));
                rt_time.push(Point::new(l, Value::Float(*us as f64 / 1e6)));
            }
        }
        s.push(
            "http_server_request_duration",
            "http.server.request.duration",
            "Duration of HTTP server requests, by route, method and status code.",
            Kind::Histogram,
            Some(Unit::Seconds),
            durations,
        );
        s.push(
            "slowtrace_request_breakdown",
            "slowtrace.request.breakdown",
            "Where requests' time went (scheduler view of the serving thread), summed per part.",
            Kind::Counter,
            Some(Unit::Seconds),
            breakdown,
        );
        s.push(
            "slowtrace_downstream_round_trips",
            "slowtrace.downstream.round_trips",
            "Round trips to databases, caches and services made while serving requests.",
            Kind::Counter,
            None,
            rt,
        );
        s.push(
            "slowtrace_downstream_time",
            "slowtrace.downstream.time",
            "Time requests waited for downstream answers.",
            Kind::Counter,
            Some(Unit::Seconds),
            rt_time,
        );
        s.push(
            "slowtrace_findings",
            "slowtrace.findings",
            "Findings (n_plus_one, repeated_key, cpu_bound, lock_bound, peer_bound) by endpoint.",
            Kind::Counter,
            None,
            findings,
        );
        s.push(
            "slowtrace_slow_requests",
            "slowtrace.slow_requests",
            "Requests that ran past --threshold (captured).",
            Kind::Counter,
            None,
            slow,
        );
        s.push(
            "slowtrace_killed_requests",
            "slowtrace.killed_requests",
            "Requests whose worker was killed while serving them, by signal.",
            Kind::Counter,
            None,
            killed,
        );
        s.push(
            "slowtrace_requests",
            "slowtrace.requests",
            "Requests seen (all endpoints).",
            Kind::Counter,
            None,
            vec![Point::new(vec![], Value::Int(st.requests))],
        );
        s.push(
            "slowtrace_kernel",
            "slowtrace.kernel",
            "The kernel programs' counters (docs/export.md lists them; *_full and faults are losses).",
            Kind::Counter,
            None,
            Counter::ALL
                .iter()
                .map(|c| {
                    Point::new(
                        vec![("counter", c.name().to_owned())],
                        Value::Int(st.counters.get(*c)),
                    )
                })
                .collect(),
        );
        let c = &st.counters;
        let e = &self.export;
        let g = ExportStats::get;
        s.push(
            "slowtrace_lost",
            "slowtrace.lost",
            "Everything user space dropped or could not place, by what.",
            Kind::Counter,
            None,
            [
                ("malformed_records", c.malformed),
                ("profile_samples_queue_full", c.profile_overflow),
                ("capture_jobs_queue_full", c.capture_overflow),
                ("downstream_calls_outside_requests", c.downstream_outside),
                (
                    "downstream_requests_forgotten",
                    c.downstream_dropped_requests,
                ),
                ("endpoints_over_cap", st.endpoint_overflow),
                ("peers_over_cap", st.peer_overflow),
                ("spans_queue_full", g(&e.spans_dropped)),
                ("spans_failed", g(&e.spans_failed)),
            ]
            .into_iter()
            .map(|(what, n)| Point::new(vec![("what", what.to_owned())], Value::Int(n)))
            .collect(),
        );
        s.push(
            "slowtrace_export_spans",
            "slowtrace.export.spans",
            "Request spans by outcome: queued, sent, sampled_out (not chosen by --sample-ratio).",
            Kind::Counter,
            None,
            [
                ("queued", g(&e.spans_queued)),
                ("sent", g(&e.spans_sent)),
                ("sampled_out", g(&e.spans_sampled_out)),
            ]
            .into_iter()
            .map(|(o, n)| Point::new(vec![("outcome", o.to_owned())], Value::Int(n)))
            .collect(),
        );
        s.push(
            "slowtrace_export_batches",
            "slowtrace.export.batches",
            "OTLP export requests by outcome (retry: one more attempt after a failure).",
            Kind::Counter,
            None,
            [
                ("sent", g(&e.batches_sent)),
                ("failed", g(&e.batches_failed)),
                ("retry", g(&e.retries)),
                ("metrics_sent", g(&e.metric_exports)),
                ("metrics_failed", g(&e.metric_exports_failed)),
            ]
            .into_iter()
            .map(|(o, n)| Point::new(vec![("outcome", o.to_owned())], Value::Int(n)))
            .collect(),
        );
        s.push(
            "slowtrace_events_per_second",
            "slowtrace.events_per_second",
            "Kernel request records per second (last few seconds).",
            Kind::Gauge,
            None,
            vec![Point::new(vec![], Value::Float(st.events_per_sec))],
        );
        drop(st);
        let me = crate::procfs::self_usage();
        s.push(
            "process_cpu",
            "process.cpu.time",
            "CPU time of slowtrace itself (user and system).",
            Kind::Counter,
            Some(Unit::Seconds),
            vec![Point::new(vec![], Value::Float(me.cpu_secs))],
        );
        s.push(
            "process_resident_memory",
            "process.memory.usage",
            "Resident memory of slowtrace itself.",
            Kind::Gauge,
            Some(Unit::Bytes),
            vec![Point::new(vec![], Value::Int(me.rss_bytes))],
        );
        s
    }
}

impl Store {
    /// The row of (service, endpoint), or the overflow row past the cap.
    fn endpoint(&mut self, service: &str, endpoint: &str, max: usize) -> (&mut Endpoint, bool) {
        if !self.services.contains_key(service) {
            self.services.insert(service.to_owned(), Service::default());
        }
        let svc = self.services.get_mut(service).expect("inserted above");
        if svc.endpoints.contains_key(endpoint) {
            return (svc.endpoints.get_mut(endpoint).expect("checked"), false);
        }
        let key = if self.endpoints >= max {
            self.endpoint_overflow += 1;
            OVERFLOW_ENDPOINT
        } else {
            endpoint
        };
        let overflow = key == OVERFLOW_ENDPOINT;
        if !svc.endpoints.contains_key(key) {
            self.endpoints += 1;
            svc.endpoints.insert(key.to_owned(), Endpoint::default());
        }
        (svc.endpoints.get_mut(key).expect("inserted"), overflow)
    }
}

fn bump(v: &mut Vec<(&'static str, u64)>, kind: &'static str) {
    match v.iter_mut().find(|(k, _)| *k == kind) {
        Some(e) => e.1 += 1,
        None => v.push((kind, 1)),
    }
}

/// The metrics at one moment, in a form both encoders read.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub families: Vec<Family>,
}

#[derive(Debug)]
pub struct Family {
    /// Prometheus name, without the unit and `_total` suffixes (the encoder adds them).
    pub name: &'static str,
    /// OpenTelemetry name (dotted).
    pub otel_name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
}

#[derive(Debug)]
pub struct Point {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

impl Point {
    fn new(labels: Vec<(&'static str, String)>, value: Value) -> Self {
        Self { labels, value }
    }
}

#[derive(Debug)]
pub enum Value {
    Int(u64),
    Float(f64),
    Hist(Hist),
}

impl Snapshot {
    fn push(
        &mut self,
        name: &'static str,
        otel_name: &'static str,
        help: &'static str,
        kind: Kind,
        unit: Option<Unit>,
        points: Vec<Point>,
    ) {
        self.families.push(Family {
            name,
            otel_name,
            help,
            kind,
            unit,
            points,
        });
    }

    #[cfg(test)]
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(endpoint: &str, status: u16, us: u64) -> Request {
        let mut r = crate::model::request::test_request();
        r.endpoint = endpoint.into();
        r.status = Some(status);
        r.duration_us = us;
        r.comm = "gunicorn".into();
        r
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_last() {
        let mut h = Hist::default();
        for s in [0.0005, 0.003, 0.003, 0.2, 100.0] {
            h.observe(s);
        }
        let c = h.cumulative();
        assert_eq!(c.len(), BUCKETS.len() + 1);
        assert_eq!(c[0], (0.001, 1));
        assert_eq!(c[2], (0.005, 3));
        assert_eq!(c.last().unwrap(), &(f64::INFINITY, 5));
        assert_eq!(h.count, 5);
        // A value on a bound belongs to that bucket (le = less or equal).
        let mut h = Hist::default();
        h.observe(0.1);
        assert_eq!(h.cumulative()[7], (0.1, 1));
    }

    #[test]
    fn requests_aggregate_per_endpoint_and_status_and_the_cap_overflows_into_one_row() {
        let m = FleetMetrics::new(2, None);
        m.request(&req("GET /a", 200, 1000));
        m.request(&req("GET /a", 200, 3000));
        m.request(&req("GET /a", 500, 3000));
        m.request(&req("GET /b", 200, 1000));
        m.request(&req("GET /c", 200, 1000));
        m.request(&req("POST /d", 200, 1000));
        let s = m.snapshot();
        let d = s.family("http_server_request_duration").unwrap();
        let count = |route: &str, status: &str| -> u64 {
            d.points
                .iter()
                .filter(|p| {
                    p.labels.contains(&("http_route", route.into()))
                        && p.labels
                            .contains(&("http_response_status_code", status.into()))
                })
                .map(|p| match &p.value {
                    Value::Hist(h) => h.count,
                    _ => 0,
                })
                .sum()
        };
        assert_eq!(count("/a", "200"), 2);
        assert_eq!(count("/a", "500"), 1);
        assert_eq!(count("/b", "200"), 1);
        assert_eq!(
            count("(overflow)", "200"),
            2,
            "/c and /d are over the cap of 2"
        );
        let lost = s.family("slowtrace_lost").unwrap();
        assert!(lost.points.iter().any(|p| p.labels
            == vec![("what", "endpoints_over_cap".to_owned())]
            && matches!(p.value, Value::Int(2))));
        assert!(matches!(
            s.family("slowtrace_requests").unwrap().points[0].value,
            Value::Int(6)
        ));
    }

    #[test]
    fn endpoints_split_into_method_and_route() {
        assert_eq!(split_endpoint("GET /users/{id}"), ("GET", "/users/{id}"));
        assert_eq!(split_endpoint("(non-http)"), ("", "(non-http)"));
        assert_eq!(split_endpoint(OVERFLOW_ENDPOINT), ("_OTHER", "(overflow)"));
    }
}
