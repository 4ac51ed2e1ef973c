//! Ring-buffer records (events.rs `decode`, every record type) and what the agent makes of them,
//! as it does: requests through the tracker into `Request` (JSON line, endpoint table,
//! breakdown, findings), downstream records into the call tracker and the request they belong
//! to, handler calls into `HandlerCall`, profiling samples into their endpoint.
//!
//! Input: records back to back, each a type byte, a little-endian u16 length and that many bytes
//! (a record shorter than its type is a `ShortRecord`, as a torn ring item would be).
#![no_main]

use libfuzzer_sys::fuzz_target;
use slowtrace::{
    events::decode,
    handlers::Handler,
    model::{
        breakdown::Breakdown,
        downstream::{
            calls::{CallTracker, Summary},
            findings::{detect, Call, Thresholds},
            timeline::timeline,
        },
        handler::HandlerCall,
        request::endpoint_of,
        Context, Endpoints, Request, Tracker,
    },
};
use tracer_common::{DownstreamRecord, EndReason, HandlerRecord, ProfileRecord, RequestRecord};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let ctx = Context {
        keep_query: flags & 1 != 0,
        // A boot-time offset as a real clock gives (up to 2^61 ns: the year 2043).
        mono_to_unix_ns: i128::from(u64::from_le_bytes([flags; 8]) >> 3),
    };
    let handler = Handler {
        path: "/srv/app/server".into(),
        symbol: "handle_request".into(),
        name: "handle_request".into(),
    };
    let mut tracker = Tracker::new(500_000_000);
    let mut calls = CallTracker::default();
    let mut endpoints: Endpoints<()> = Endpoints::default();
    while rest.len() >= 3 {
        let kind = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let bytes = &rest[3..3 + len];
        rest = &rest[3 + len..];
        match kind % 4 {
            0 => {
                let Ok(r) = decode::<RequestRecord>(bytes) else {
                    continue;
                };
                if !tracker.accept(&r) {
                    continue;
                }
                let end = EndReason::from_u8(r.end_reason);
                let now = r.end_ns.wrapping_add(u64::from(kind));
                let mut req = Request::from_record(&r, end, now, Some(r.local_port), &ctx);
                let exchanges = calls.take(&(r.tgid, r.conn_id, r.seq));
                req.downstream = Summary::of(&exchanges);
                req.round_trips = timeline(&exchanges, r.start_ns, 16);
                let b =
                    Breakdown::from_record(&r, r.start_ns.saturating_add(req.duration_us * 1000));
                let all: Vec<Call> = exchanges.into_iter().flat_map(|e| e.calls).collect();
                req.findings = detect(
                    &all,
                    &b.for_findings(req.duration_us),
                    &Thresholds::default(),
                );
                req.breakdown = Some(b);
                serde_json::to_string(&req).expect("a request always serializes");
                endpoints.add(&req);
            }
            1 => {
                if let Ok(d) = decode::<DownstreamRecord>(bytes) {
                    calls.add(&d);
                }
            }
            2 => {
                if let Ok(h) = decode::<HandlerRecord>(bytes) {
                    let n = (h.req_len as usize).min(h.req.len());
                    let call = HandlerCall::from_record(&h, &handler, Some(&h.req[..n]), &ctx);
                    serde_json::to_string(&call).expect("a handler call always serializes");
                }
            }
            _ => {
                if let Ok(p) = decode::<ProfileRecord>(bytes) {
                    let _ = endpoint_of(&p.req[..(p.req_len as usize).min(p.req.len())]);
                }
            }
        }
    }
});
