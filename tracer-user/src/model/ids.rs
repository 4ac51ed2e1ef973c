//! Trace and span ids of a served request, derived from the request's own key so that every
//! output computes the same ids without talking to the others: the OTLP span of a request and the
//! `span_id` label of its samples in the pprof profile match by construction.
//!
//! A run-wide random key seeds the hash: ids differ between runs and hosts (connection ids are
//! kernel timestamps, so two agents could otherwise produce the same ids), and are stable within
//! one run.

use std::{
    hash::{BuildHasher as _, Hash, Hasher as _},
    sync::OnceLock,
};

/// A served request: (tgid, connection id, index on the connection). The same key names the
/// request to the profiler and the downstream tracker.
pub type ReqKey = (u32, u64, u32);

/// W3C trace context ids (neither is ever all zeros, which means "invalid").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl SpanIds {
    /// `span_id` as 16 lowercase hex digits, the form pprof labels and span links use.
    pub fn span_hex(&self) -> String {
        hex(&self.span_id)
    }
}

fn run_key() -> &'static std::collections::hash_map::RandomState {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEY.get_or_init(std::collections::hash_map::RandomState::new)
}

fn word(key: &ReqKey, lane: u8) -> u64 {
    let mut h = run_key().build_hasher();
    key.hash(&mut h);
    lane.hash(&mut h);
    // Never zero: an all-zero id is invalid in W3C trace context.
    h.finish().max(1)
}

/// The ids of a request's server span.
pub fn request_ids(key: ReqKey) -> SpanIds {
    let (a, b) = (word(&key, 1), word(&key, 2));
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&a.to_be_bytes());
    trace_id[8..].copy_from_slice(&b.to_be_bytes());
    SpanIds {
        trace_id,
        span_id: word(&key, 0).to_be_bytes(),
    }
}

/// The id of the `n`th child span of a request (its downstream round trips).
pub fn child_span_id(key: ReqKey, n: u32) -> [u8; 8] {
    let mut h = run_key().build_hasher();
    key.hash(&mut h);
    3u8.hash(&mut h);
    n.hash(&mut h);
    h.finish().max(1).to_be_bytes()
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_within_a_run_and_distinct_between_requests() {
        let a = request_ids((10, 777, 0));
        assert_eq!(a, request_ids((10, 777, 0)));
        assert_ne!(a.span_id, request_ids((10, 777, 1)).span_id);
        assert_ne!(a.trace_id, request_ids((11, 777, 0)).trace_id);
        assert_ne!(a.span_id, child_span_id((10, 777, 0), 0));
        assert_ne!(
            child_span_id((10, 777, 0), 0),
            child_span_id((10, 777, 0), 1)
        );
        assert_eq!(a.span_hex().len(), 16);
        assert!(a.span_hex().chars().all(|c| c.is_ascii_hexdigit()));
    }
}
