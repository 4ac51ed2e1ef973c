//! What the dashboard knows, built from `AgentEvent`s. Pure: time comes in as an argument (the
//! time since the dashboard started), so tests replay synthetic events and get the same screen
//! every time. The per-endpoint numbers are the shared aggregate's (`model::endpoints`, with a
//! request rate per endpoint added here). Each event costs O(1) (a histogram record, a few
//! counters), a slow request's captures O(their frames); memory is bounded (histograms of fixed
//! size, capped endpoints, a ring of recent slow requests with their captures).

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use tracer_common::Counter;

use super::{
    captures::{Captured, HotFrames},
    rate::RateWindow,
};
use crate::{
    agent::{AgentEvent, Counters},
    model::{handler::HandlerCall, profile::HotFrame, slow::SlowRequest, Endpoints, Request},
};

/// Slow requests remembered for the slow pane (the newest), with their captures.
pub const MAX_SLOW: usize = 500;
/// Significant digits of the dashboard's histograms: buckets under 1% wide in ~13 KB per
/// endpoint, so a thousand endpoints stay small (`record`'s summary uses 3 digits).
const DIGITS: u8 = 2;

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

/// One endpoint-table row: the shared aggregate's, with its request rate (`extra`).
pub type Endpoint = crate::model::endpoints::Endpoint<RateWindow>;

#[derive(Debug, Clone)]
pub struct Dashboard {
    pub meta: Meta,
    /// Time since the dashboard started, as of the last event or `set_now`.
    pub now: Duration,
    /// Per endpoint (and `--handler` function): the shared aggregate, quantiles refreshed every
    /// scan.
    endpoints: Endpoints<RateWindow>,
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
        let endpoints = Endpoints::new(DIGITS, Some(meta.threshold));
        Self {
            meta,
            now: Duration::ZERO,
            endpoints,
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
            if let Some(i) = self.endpoints.add(&r) {
                self.endpoints.get_mut(i).extra.add(self.now, 1);
            }
            self.judged = self.endpoints.judged;
            self.found = self.endpoints.found;
        }
        if slow || killed(&r) {
            self.push_slow(r);
        }
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
        let i = self
            .endpoints
            .sample(&handler_row(&c.handler), c.duration_us, false);
        self.endpoints.get_mut(i).extra.add(self.now, 1);
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
        self.endpoints.refresh();
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        self.endpoints.list()
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
