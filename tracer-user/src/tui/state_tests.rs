//! `Dashboard` alone: events in, counters, rows and bounds out; and the synthetic requests the
//! other screen tests build on.

use super::*;
use crate::model::endpoints::{MAX_ENDPOINTS, OTHER_ENDPOINTS};

thread_local! {
    /// Each test runs on its own thread: a fresh, deterministic sequence per test.
    static NEXT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A finished request as the agent would send it; each one is a distinct request.
pub fn req(endpoint: &str, ms: u64, status: u16) -> Request {
    let n = NEXT.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    Request {
        start_us: 1_700_000_000_000_000 + n,
        start: "2023-11-14T22:13:20.000000Z".into(),
        pid: 4242,
        tid: 4243,
        comm: "python3".into(),
        fd: 7,
        local_port: Some(8000),
        peer: Some("127.0.0.1:50000".into()),
        protocol: "http/1.1",
        method: endpoint.split(' ').next().map(str::to_owned),
        path: endpoint.split(' ').nth(1).map(str::to_owned),
        host: Some("127.0.0.1:8000".into()),
        endpoint: endpoint.to_owned(),
        status: Some(status),
        duration_us: ms * 1000,
        ttfb_us: Some(ms * 1000),
        bytes_in: 80,
        bytes_out: 120,
        end: "close",
        ..crate::model::request::test_request()
    }
}

pub fn meta() -> Meta {
    Meta {
        targets: "port 8000 (pids [4242])".into(),
        attach_mode: "tracepoints (22 syscall and sched tracepoints)".into(),
        threshold: Duration::from_secs(1),
        sample_hz: 99,
        sampling_note: None,
        n_plus_one: 10,
    }
}

pub fn tick(in_flight: Vec<Request>, events: u64) -> AgentEvent {
    let mut counters = Counters::default();
    counters.kernel.insert(Counter::Events, events);
    AgentEvent::Tick {
        in_flight,
        counters,
    }
}

fn at(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn aggregates_per_endpoint() {
    let mut d = Dashboard::new(meta());
    for i in 1..=100 {
        d.apply(
            AgentEvent::Request(Box::new(req("GET /a", i, 200))),
            at(1.0),
        );
    }
    d.apply(
        AgentEvent::Request(Box::new(req("GET /b", 1500, 503))),
        at(1.5),
    );
    d.apply(tick(vec![], 101), at(2.0));
    assert_eq!(d.total, 101);
    let a = &d.endpoints()[0];
    assert_eq!((a.name.as_str(), a.count, a.slow), ("GET /a", 100, 0));
    assert!((a.q.p50_us as f64 - 50_000.0).abs() <= 250.0, "{:?}", a.q);
    assert_eq!(a.q.max_us, 100_000, "exact");
    let b = &d.endpoints()[1];
    assert_eq!((b.count, b.errors_5xx, b.slow), (1, 1, 1));
    assert_eq!(b.q.p50_us, 1_500_000, "one request: its own duration");
    assert_eq!(d.slow.len(), 1);
    assert!((d.requests.per_sec(d.now) - 50.5).abs() < 1e-9);
}

#[test]
fn in_flight_slow_requests_tick_then_finish_once() {
    let mut d = Dashboard::new(meta());
    let mut running = req("GET /sleep", 400, 0);
    running.status = None;
    running.end = "in_flight";
    d.apply(tick(vec![running.clone()], 0), at(0.25));
    assert!(d.slow_in_flight.is_empty(), "not slow yet");
    assert_eq!(d.in_flight, 1);
    running.duration_us = 1_200_000;
    d.apply(tick(vec![running.clone()], 0), at(1.0));
    assert_eq!(d.slow_in_flight.len(), 1);
    // It finishes; the stale in-flight entry goes at once, before the next scan.
    let mut done = running.clone();
    done.end = "close";
    done.status = Some(200);
    done.duration_us = 1_500_000;
    d.apply(AgentEvent::Request(Box::new(done)), at(1.3));
    assert!(d.slow_in_flight.is_empty());
    assert_eq!(d.slow_rows().count(), 1);
    assert_eq!(d.slow[0].status, Some(200));
}

#[test]
fn killed_requests_are_listed_even_when_fast() {
    let mut d = Dashboard::new(meta());
    let mut r = req("POST /upload", 20, 0);
    r.end = "process_exit";
    d.apply(AgentEvent::Request(Box::new(r)), at(1.0));
    assert_eq!(d.slow.len(), 1);
    assert!(killed(&d.slow[0]));
}

#[test]
fn memory_is_bounded() {
    let mut d = Dashboard::new(meta());
    for i in 0..(MAX_ENDPOINTS + 50) {
        d.apply(
            AgentEvent::Request(Box::new(req(&format!("GET /p{i}"), 2000, 200))),
            at(1.0),
        );
    }
    assert_eq!(d.endpoints().len(), MAX_ENDPOINTS + 1);
    let other = d.endpoints().last().unwrap();
    assert_eq!((other.name.as_str(), other.count), (OTHER_ENDPOINTS, 50));
    assert_eq!(d.slow.len(), MAX_SLOW);
    assert_eq!(d.slow[0].endpoint, format!("GET /p{}", MAX_ENDPOINTS + 49));
}

#[test]
fn captures_join_their_request_or_list_it() {
    use crate::tui::captures::tests::{capture, py, slow_request};
    let mut d = Dashboard::new(meta());
    let r = req("GET /slow", 1500, 200);
    d.apply(AgentEvent::Request(Box::new(r.clone())), at(1.0));
    let caps = vec![capture(1000, vec![py("view", "app.py", 3)], vec![])];
    d.apply(
        Update::Slow(Box::new(slow_request(r.clone(), caps.clone()))),
        at(1.2),
    );
    assert_eq!(d.slow.len(), 1, "joined, not listed twice");
    assert_eq!(d.captured(&r).unwrap().stacks.len(), 1);
    assert!(!d.is_killed(&d.slow[0]));
    // A fast request a fatal signal hit (it still answered): listed with its report.
    let mut fast = req("GET /abort", 20, 500);
    fast.start_us += 1_000_000;
    d.apply(AgentEvent::Request(Box::new(fast.clone())), at(2.0));
    assert_eq!(d.slow.len(), 1, "not slow, not dead");
    let mut s = slow_request(fast.clone(), caps);
    s.kind = "killed";
    d.apply(Update::Slow(Box::new(s)), at(2.1));
    assert_eq!(d.slow.len(), 2);
    assert!(d.is_killed(&d.slow[0]));
    assert_eq!(d.hot.captures, 2);
}

#[test]
fn handler_calls_get_their_own_rows() {
    let mut d = Dashboard::new(meta());
    let call = crate::model::handler::HandlerCall {
        start_us: 0,
        start: String::new(),
        pid: 1,
        tid: 1,
        handler: "handle_request".into(),
        binary: "/srv/server".into(),
        depth: 0,
        duration_us: 1_200_000,
        request: None,
        captures: vec![],
    };
    d.apply(Update::Handler(Box::new(call)), at(1.0));
    d.refresh();
    let e = &d.endpoints()[0];
    assert_eq!(
        (e.name.as_str(), e.count, e.slow),
        ("handler handle_request", 1, 1)
    );
    assert_eq!(d.total, 0, "a call is not a request");
}

#[test]
fn events_rate_from_kernel_counter_deltas() {
    let mut d = Dashboard::new(meta());
    d.apply(tick(vec![], 100), at(1.0));
    d.apply(tick(vec![], 300), at(2.0));
    d.apply(tick(vec![], 500), at(3.0));
    assert!((d.events.per_sec(at(3.0)) - 500.0 / 3.0).abs() < 1e-9);
    assert_eq!(d.dropped(), 0);
}
