//! What the dashboard knows, built from `AgentEvent`s. Pure: time comes in as an argument (the
//! time since the dashboard started), so tests replay synthetic events and get the same screen
//! every time. Each event costs O(1) (a histogram record, a few counters), a slow request's
//! captures O(their frames); memory is bounded (histograms of fixed size, capped endpoints, a ring
//! of recent slow requests with their captures).

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use hdrhistogram::Histogram;
use tracer_common::Counter;

use super::{
    breakdown::Time,
    captures::{Captured, HotFrames},
    findings::Findings,
    rate::RateWindow,
};
use crate::{
    agent::{AgentEvent, Counters},
    model::{handler::HandlerCall, profile::HotFrame, slow::SlowRequest, Request},
};

/// Slow requests remembered for the slow pane (the newest), with their captures.
pub const MAX_SLOW: usize = 500;
/// Endpoints with their own row; later ones share `OTHER_ENDPOINTS` (unnormalized ids in paths
/// would otherwise grow memory without bound).
pub const MAX_ENDPOINTS: usize = 1000;
pub const OTHER_ENDPOINTS: &str = "(other endpoints)";

/// Names one request for its whole life, in flight and finished: (pid, fd, start, index on the
/// connection).
pub type ReqKey = (u32, u32, u64, u32);

pub fn key(r: &Request) -> ReqKey {
    (r.pid, r.fd, r.start_us, r.seq)
}

/// Whether a request ended because its process died (a killed or crashed worker).
pub fn killed(r: &Request) -> bool {
    r.end == "process_exit"
}

/// What the agent thread hands the dashboard.
#[derive(Debug, Clone)]
pub enum Update {
    Agent(AgentEvent),
    /// A slow or killed request's captures; its request came before as an `AgentEvent::Request`.
    Slow(Box<SlowRequest>),
    /// A `--handler` function call returned.
    Handler(Box<HandlerCall>),
    /// The CPU profile's hot frames so far (every scan while sampling); replaces the last.
    Profile(Vec<HotFrame>),
}

impl From<AgentEvent> for Update {
    fn from(ev: AgentEvent) -> Self {
        Update::Agent(ev)
    }
}

/// Endpoint-table row of a `--handler` function, next to the HTTP endpoints.
pub fn handler_row(name: &str) -> String {
    format!("handler {name}")
}

/// What the header shows about the run itself.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The agent's `described` string: "port 8000 (pids [12])".
    pub targets: String,
    pub attach_mode: String,
    pub threshold: Duration,
    /// On-CPU samples per second of every traced thread (`--sample-hz`); 0: not sampling.
    pub sample_hz: u64,
    /// Why on-CPU sampling is not working although asked for (the agent's degraded note).
    pub sampling_note: Option<String>,
    /// Calls of one statement to one peer that make an N+1 finding (`--n-plus-one`).
    pub n_plus_one: u32,
}

/// Percentiles, recomputed only for endpoints that changed (reading a quantile walks the
/// histogram, so this is not done per frame for every row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quantiles {
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub count: u64,
    pub errors_5xx: u64,
    /// Finished requests at least as slow as the threshold.
    pub slow: u64,
    pub q: Quantiles,
    pub rate: RateWindow,
    /// Where its finished requests' time went, summed per part (`breakdown.rs`).
    pub time: Time,
    /// Its requests' findings, merged (`findings.rs`).
    pub findings: Findings,
    hist: Histogram<u32>,
    /// Exact, unlike the histogram's buckets.
    min_us: u64,
    max_us: u64,
    /// Listed in `Dashboard::dirty`: `q` is out of date.
    stale: bool,
}

impl Endpoint {
    fn new(name: String) -> Self {
        Self {
            name,
            count: 0,
            errors_5xx: 0,
            slow: 0,
            q: Quantiles::default(),
            rate: RateWindow::default(),
            time: Time::default(),
            findings: Findings::default(),
            // 1 µs .. 1 h at 2 significant digits: buckets under 1% wide in ~13 KB per
            // endpoint, so a thousand endpoints stay small (`record`'s summary uses 3 digits).
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds"),
            stale: false,
            min_us: u64::MAX,
            max_us: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Dashboard {
    pub meta: Meta,
    /// Time since the dashboard started, as of the last event or `set_now`.
    pub now: Duration,
    endpoints: Vec<Endpoint>,
    by_name: HashMap<String, usize>,
    /// Endpoints whose quantiles are stale.
    dirty: Vec<usize>,
    /// Finished slow requests, newest first.
    pub slow: VecDeque<Request>,
    /// Captures of requests in `slow`, for those the agent reported on (the same bound).
    pub captured: HashMap<ReqKey, Captured>,
    /// Frame counts over `captured`.
    pub hot: HotFrames,
    /// The CPU profile's frames by SELF, as the agent last sent them (at most 200).
    pub cpu: Vec<HotFrame>,
    /// Requests running now that are already past the threshold, longest first.
    pub slow_in_flight: Vec<Request>,
    /// All requests running at the last scan.
    pub in_flight: usize,
    /// Finished requests.
    pub total: u64,
    /// Finished requests with a breakdown: checked for findings.
    pub judged: u64,
    /// Distinct findings over all endpoints (rows of the findings screen).
    pub found: u64,
    pub requests: RateWindow,
    pub events: RateWindow,
    pub counters: Counters,
    /// Events the dashboard missed because it fell behind the agent.
    pub ui_overflow: u64,
    /// What stopped the agent, when it stopped on its own ("the command exiting").
    pub stopped: Option<String>,
}

impl Dashboard {
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            now: Duration::ZERO,
            endpoints: Vec::new(),
            by_name: HashMap::new(),
            dirty: Vec::new(),
            slow: VecDeque::new(),
            captured: HashMap::new(),
            hot: HotFrames::default(),
            cpu: Vec::new(),
            slow_in_flight: Vec::new(),
            in_flight: 0,
            total: 0,
            judged: 0,
            found: 0,
            requests: RateWindow::default(),
            events: RateWindow::default(),
            counters: Counters::default(),
            ui_overflow: 0,
            stopped: None,
        }
    }

    pub fn apply(&mut self, u: impl Into<Update>, now: Duration) {
        self.set_now(now);
        match u.into() {
            Update::Agent(AgentEvent::Request(r)) => self.request(*r),
            Update::Agent(AgentEvent::Tick {
                in_flight,
                counters,
            }) => self.tick(in_flight, counters),
            Update::Slow(s) => self.slow_request(*s),
            Update::Handler(c) => self.handler(&c),
            Update::Profile(hot) => self.cpu = hot,
        }
    }

    /// Time passes with no event (the screen still ticks).
    pub fn set_now(&mut self, now: Duration) {
        self.now = self.now.max(now);
    }

    fn is_slow(&self, r: &Request) -> bool {
        r.duration_us >= self.meta.threshold.as_micros() as u64
    }

    fn request(&mut self, r: Request) {
        // It is no longer running, whatever the next scan says.
        let k = key(&r);
        self.slow_in_flight.retain(|f| key(f) != k);
        let slow = self.is_slow(&r);
        // Requests still open when the agent stopped are not finished: they are kept out of the
        // latency statistics, as in `record`'s summary.
        if r.end != "in_flight" {
            self.total += 1;
            self.requests.add(self.now, 1);
            let i = self.sample(&r.endpoint, r.duration_us, r.is_5xx(), slow);
            if r.breakdown.is_some() {
                let e = &mut self.endpoints[i];
                e.time.add(&r);
                self.found += e.findings.add(&r.findings) as u64;
                self.judged += 1;
            }
        }
        if slow || killed(&r) {
            self.push_slow(r);
        }
    }

    /// One finished call or request into its endpoint row; returns the row.
    fn sample(&mut self, endpoint: &str, duration_us: u64, is_5xx: bool, slow: bool) -> usize {
        let i = self.endpoint_index(endpoint);
        let e = &mut self.endpoints[i];
        e.count += 1;
        e.errors_5xx += u64::from(is_5xx);
        e.slow += u64::from(slow);
        e.rate.add(self.now, 1);
        e.hist.saturating_record(duration_us.max(1));
        e.min_us = e.min_us.min(duration_us);
        e.max_us = e.max_us.max(duration_us);
        if !e.stale {
            e.stale = true;
            self.dirty.push(i);
        }
        i
    }

    fn push_slow(&mut self, r: Request) {
        if self.slow.len() == MAX_SLOW {
            if let Some(old) = self.slow.pop_back() {
                if let Some(c) = self.captured.remove(&key(&old)) {
                    self.hot.evict(&c);
                }
            }
        }
        self.slow.push_front(r);
    }

    /// The agent's report on a slow or killed request: captures, and the signal that killed it.
    /// It comes after the request itself (up to a few seconds, while captures finish).
    fn slow_request(&mut self, s: SlowRequest) {
        let k = key(&s.request);
        // Usually near the front: it ended moments ago.
        if !self.slow.iter().any(|r| key(r) == k) {
            // The screen skipped its request (ui overflow), or a fatal signal hit a request that
            // still ended, fast: list it now, or its captures have nowhere to go.
            self.slow_in_flight.retain(|f| key(f) != k);
            self.push_slow(s.request.clone());
        }
        let c = self.hot.admit(s);
        if let Some(old) = self.captured.insert(k, c) {
            self.hot.evict(&old);
        }
    }

    /// A `--handler` call: its own row in the endpoint table (not a request: not in the totals).
    fn handler(&mut self, c: &HandlerCall) {
        let slow = c.duration_us >= self.meta.threshold.as_micros() as u64;
        let _ = self.sample(&handler_row(&c.handler), c.duration_us, false, slow);
    }

    /// Killed: its process died with it open, or the agent saw a fatal signal hit it.
    pub fn is_killed(&self, r: &Request) -> bool {
        killed(r)
            || self
                .captured
                .get(&key(r))
                .is_some_and(|c| c.kind == "killed")
    }

    pub fn captured(&self, r: &Request) -> Option<&Captured> {
        self.captured.get(&key(r))
    }

    fn endpoint_index(&mut self, name: &str) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let name = if self.endpoints.len() < MAX_ENDPOINTS {
            name
        } else {
            OTHER_ENDPOINTS
        };
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        self.endpoints.push(Endpoint::new(name.to_owned()));
        self.by_name
            .insert(name.to_owned(), self.endpoints.len() - 1);
        self.endpoints.len() - 1
    }

    fn tick(&mut self, in_flight: Vec<Request>, counters: Counters) {
        self.in_flight = in_flight.len();
        let mut slow: Vec<Request> = in_flight.into_iter().filter(|r| self.is_slow(r)).collect();
        slow.sort_by(|a, b| b.duration_us.cmp(&a.duration_us).then(key(a).cmp(&key(b))));
        self.slow_in_flight = slow;
        let events = counters.get(Counter::Events);
        let before = self.counters.get(Counter::Events);
        self.events.add(self.now, events.saturating_sub(before));
        self.counters = counters;
        self.refresh();
    }

    /// Recompute the quantiles of endpoints that changed. Called every scan and before drawing.
    pub fn refresh(&mut self) {
        for i in self.dirty.drain(..) {
            let e = &mut self.endpoints[i];
            e.stale = false;
            // The middle of the bucket (≤0.5% off), within the exact minimum and maximum (so
            // one request shows its own duration everywhere).
            let at = |q: f64| {
                let h = &e.hist;
                h.median_equivalent(h.value_at_quantile(q))
                    .clamp(e.min_us, e.max_us)
            };
            e.q = Quantiles {
                p50_us: at(0.50),
                p95_us: at(0.95),
                p99_us: at(0.99),
                max_us: e.max_us,
            };
        }
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Kernel and user-space losses: request records that never reached us.
    pub fn dropped(&self) -> u64 {
        let c = &self.counters;
        c.get(Counter::RingFull) + c.get(Counter::ArgsMapFull) + c.malformed
    }

    /// The slow pane, top to bottom: running ones first (they are the news), then finished ones,
    /// newest first.
    pub fn slow_rows(&self) -> impl Iterator<Item = &Request> {
        self.slow_in_flight.iter().chain(self.slow.iter())
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
pub mod tests;
