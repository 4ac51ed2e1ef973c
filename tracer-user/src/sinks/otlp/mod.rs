//! OTLP: requests as spans (`span`), the fleet metrics as OTLP metrics (`metrics`), sent by one
//! exporter thread (`export`) configured from flags and the standard `OTEL_*` variables
//! (`settings`). docs/export.md lists every attribute.
//!
//! Sampling is decided here, on the agent thread, when the request's outcome is known (tail
//! sampling for free): slow, killed and 5xx requests are always sent; the others at
//! `--sample-ratio`, chosen by trace id so that the choice is the same wherever it is made.

pub mod export;
pub mod metrics;
pub mod settings;
pub mod span;

use std::sync::{atomic::Ordering, Arc};

use opentelemetry_proto::tonic::{common::v1::InstrumentationScope, resource::v1::Resource};

use crate::{
    model::{ids::request_ids, slow::SlowRequest, Request},
    sinks::metrics::FleetMetrics,
};
use export::{Exporter, Item};
use span::kv;

/// Requests waiting for the exporter at most, by default.
pub const DEFAULT_QUEUE: usize = 4096;

pub struct OtlpSink {
    exporter: Exporter,
    ratio: f64,
    metrics: Arc<FleetMetrics>,
}

impl OtlpSink {
    pub fn start(
        settings: settings::OtlpSettings,
        ratio: f64,
        queue: usize,
        metrics: Arc<FleetMetrics>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            exporter: Exporter::start(settings, metrics.clone(), queue)?,
            ratio,
            metrics,
        })
    }

    /// A finished request: exported if sampled. One with a slow report coming is exported with
    /// the report instead (`slow`); requests still running at exit are not spans (no end).
    pub fn request(&self, req: &Request) {
        if req.reported_slow || req.end == "in_flight" {
            return;
        }
        if req.is_5xx() || sampled(req, self.ratio) {
            self.exporter.offer(Item::Request(Box::new(req.clone())));
        } else {
            self.metrics
                .export
                .spans_sampled_out
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A slow or killed request, always exported, with its captures and kill as events.
    pub fn slow(&self, slow: &SlowRequest) {
        self.exporter.offer(Item::Slow(Box::new(slow.clone())));
    }

    pub fn finish(self, grace: std::time::Duration) {
        self.exporter.finish(grace);
    }
}

/// Keep the request at `ratio`, decided by its trace id (the W3C "trace id ratio" rule).
pub fn sampled(req: &Request, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let id = request_ids((req.pid, req.conn_id, req.seq)).trace_id;
    let mut low = [0u8; 8];
    low.copy_from_slice(&id[8..]);
    // The lower 56 bits, as the W3C random trace id flag and OpenTelemetry's sampler use.
    let x = u64::from_be_bytes(low) & ((1 << 56) - 1);
    (x as f64) < ratio * (1u64 << 56) as f64
}

pub fn resource(
    service: &str,
    exe: Option<&str>,
    host: &str,
    extra: &[(String, String)],
) -> Resource {
    let mut attributes = vec![
        kv("service.name", service),
        kv("host.name", host),
        kv("telemetry.sdk.name", "slowtrace"),
        kv("telemetry.sdk.language", "rust"),
        kv("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ];
    if let Some(exe) = exe {
        attributes.push(kv("process.executable.name", exe));
    }
    attributes.extend(extra.iter().map(|(k, v)| kv(k, v.as_str())));
    Resource {
        attributes,
        ..Resource::default()
    }
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "slowtrace".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..InstrumentationScope::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampling_ratio_keeps_about_that_share_and_is_stable() {
        let mut r = crate::model::request::test_request();
        let mut kept = 0;
        for seq in 0..20_000 {
            r.seq = seq;
            if sampled(&r, 0.1) {
                kept += 1;
                assert!(sampled(&r, 0.1), "the same request, the same choice");
                assert!(sampled(&r, 0.5), "a request kept at 10 % is kept at 50 %");
            }
        }
        assert!((1700..2300).contains(&kept), "{kept}");
        assert!(sampled(&r, 1.0));
        assert!(!sampled(&r, 0.0));
    }
}
