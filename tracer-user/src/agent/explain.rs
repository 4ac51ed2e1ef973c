//! What the agent adds to a finished request besides its timing: where its time went, the
//! downstream calls it made and the findings they support; and the side rings those come from.

use tracer_common::{EndReason, RequestRecord};

use super::{capturing::Capturing, Agent};
use crate::model::{
    breakdown::Breakdown,
    downstream::{
        calls::Summary as CallSummary,
        findings,
        timeline::{timeline, DEFAULT_CAP},
    },
    Request,
};

impl Agent {
    /// Where the request's time went, its downstream calls, and what they say (findings).
    pub(super) fn explain(&mut self, r: &RequestRecord, end: EndReason, req: &mut Request) {
        self.drain_side();
        let exchanges = self.calls.take(&(r.tgid, r.conn_id, r.seq));
        req.downstream = CallSummary::of(&exchanges);
        if self.keep_round_trips {
            req.round_trips = timeline(&exchanges, r.start_ns, DEFAULT_CAP);
        }
        if end == EndReason::InFlight || r.start_ns == 0 {
            return;
        }
        let b = Breakdown::from_record(r, r.start_ns + req.duration_us * 1000);
        req.breakdown = Some(b);
        // Shares of time say something about slow requests; a 300 µs request is always
        // "CPU-bound". Counts (N+1, repeated keys) are findings at any duration.
        let slow_us = self
            .capturing
            .as_ref()
            .map_or(1_000_000, Capturing::threshold_us);
        let shares = if req.duration_us >= slow_us {
            b.for_findings(req.duration_us)
        } else {
            findings::Breakdown::default()
        };
        let calls: Vec<findings::Call> = exchanges.into_iter().flat_map(|e| e.calls).collect();
        req.findings = findings::detect(&calls, &shares, &self.thresholds);
    }

    /// The side rings: profiling samples to the profiler, downstream exchanges kept per served
    /// request until it ends. A request's records in them were written before the request's own
    /// record, so draining them right before a request is finished means none is missed.
    /// (They are polled, not waited on: the kernel does not wake us for them.)
    pub(super) fn drain_side(&mut self) {
        while let Some(rec) = self.kernel.next_downstream() {
            match rec {
                Ok(rec) => self.calls.add(&rec),
                Err(_) => self.malformed += 1,
            }
        }
        while let Some(rec) = self.kernel.next_sample() {
            match (rec, self.profiler.as_mut()) {
                (Ok(rec), Some(p)) => p.submit(rec),
                (Ok(_), None) => {}
                (Err(_), _) => self.malformed += 1,
            }
        }
    }
}
