//! findings.jsonl (one line per request with findings), and the exit summary's words on where
//! each endpoint's time went and what its findings say (read from the shared per-endpoint
//! aggregate, `model::endpoints`).

use std::{io, path::Path};

use serde::Serialize;

use super::lines::LineFile;
use crate::model::{
    breakdown::Breakdown,
    downstream::findings::Finding,
    endpoints::{Endpoint, MAX_SUBJECTS},
    Endpoints, Request,
};

#[derive(Serialize)]
struct Line<'a> {
    start: &'a str,
    pid: u32,
    tid: u32,
    endpoint: &'a str,
    duration_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    breakdown: Option<&'a Breakdown>,
    findings: &'a [Finding],
    /// The app frame that issued the calls, when a capture of the request exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    site: Option<&'a str>,
}

pub struct FindingsSink {
    /// Whole lines only; `out.written` lines are on disk.
    pub out: LineFile,
}

impl FindingsSink {
    pub fn create(dir: &Path) -> io::Result<Self> {
        Ok(Self {
            out: LineFile::create(&dir.join("findings.jsonl"))?,
        })
    }

    /// Every finished request goes through here; those with findings (and a breakdown) are
    /// written.
    pub fn add(&mut self, r: &Request) -> io::Result<()> {
        let Some(b) = &r.breakdown else {
            return Ok(());
        };
        if r.findings.is_empty() {
            return Ok(());
        }
        self.out.line(&Line {
            start: &r.start,
            pid: r.pid,
            tid: r.tid,
            endpoint: &r.endpoint,
            duration_us: r.duration_us,
            breakdown: Some(b),
            findings: &r.findings,
            site: r.downstream.as_ref().and_then(|d| d.site.as_deref()),
        })
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush();
        Ok(())
    }
}

/// Lines for the exit summary: where each endpoint's time went, then its findings; `written`:
/// request lines in findings.jsonl.
pub fn summary<X>(endpoints: &Endpoints<X>, written: u64) -> Vec<String> {
    let mut lines = Vec::new();
    // Endpoints whose requests had a breakdown, by name, then the most time first (stable).
    let mut judged: Vec<&Endpoint<X>> = endpoints
        .list()
        .iter()
        .filter(|e| e.time.requests > 0)
        .collect();
    judged.sort_by(|a, b| a.name.cmp(&b.name));
    let mut by_time = judged.clone();
    by_time.sort_by_key(|e| std::cmp::Reverse(e.time.total_us));
    if !by_time.is_empty() {
        lines.push("\nwhere the time went (share of each endpoint's request time):".into());
    }
    for e in by_time.iter().take(10) {
        let total_us = e.time.total_us.max(1);
        let parts: Vec<String> = Breakdown::LABELS
            .iter()
            .zip(e.time.parts_us)
            .filter(|(_, us)| us * 100 >= total_us)
            .map(|(name, us)| format!("{name} {}%", us * 100 / total_us))
            .collect();
        lines.push(format!("  {:<40} {}", e.name, parts.join(" · ")));
    }
    let with: Vec<_> = judged
        .into_iter()
        .filter(|e| !e.findings.merged.findings().is_empty())
        .collect();
    if !with.is_empty() {
        lines.push(format!(
            "\nfindings ({written} request lines in findings.jsonl):"
        ));
    }
    for e in with {
        let f = &e.findings;
        for a in f.merged.findings() {
            lines.push(format!(
                "  {}: {} in {}/{} requests: {}",
                e.name,
                a.kind,
                a.requests,
                f.merged.requests(),
                describe(&a.example)
            ));
        }
        if f.left_out > 0 {
            lines.push(format!(
                "  {}: {} more findings past {MAX_SUBJECTS} distinct ones not kept",
                e.name, f.left_out
            ));
        }
    }
    lines
}

/// One finding for people.
pub fn describe(f: &Finding) -> String {
    match f {
        Finding::NPlusOne {
            fingerprint,
            count,
            total_ns,
            peer,
        } => format!(
            "{count}× `{fingerprint}` to {peer} ({:.1} ms)",
            *total_ns as f64 / 1e6
        ),
        Finding::RepeatedKey {
            fingerprint,
            count,
            peer,
        } => format!("the same key {count}× `{fingerprint}` from {peer}"),
        Finding::CpuBound { share } => format!("{:.0}% on CPU", share * 100.0),
        Finding::LockBound { share } => format!("{:.0}% waiting on locks", share * 100.0),
        Finding::PeerBound { peer, share, calls } => {
            format!("{:.0}% in {calls} calls to {peer}", share * 100.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(endpoint: &str, findings: Vec<Finding>) -> Request {
        let mut r = crate::model::Request::from_record(
            &tracer_common::RequestRecord::zeroed(),
            tracer_common::EndReason::Close,
            0,
            None,
            &crate::model::Context {
                keep_query: false,
                mono_to_unix_ns: 0,
            },
        );
        r.endpoint = endpoint.into();
        r.duration_us = 10_000;
        r.breakdown = Some(Breakdown {
            on_cpu_us: 1_000,
            downstream_us: 9_000,
            ..Breakdown::default()
        });
        r.findings = findings;
        r
    }

    #[test]
    fn writes_lines_with_findings_and_summarizes_per_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FindingsSink::create(dir.path()).unwrap();
        let mut endpoints = Endpoints::<()>::default();
        let mut add = |r: Request| {
            endpoints.add(&r);
            s.add(&r).unwrap();
        };
        let n1 = Finding::NPlusOne {
            fingerprint: "SELECT * FROM t WHERE id = ?".into(),
            count: 100,
            total_ns: 5_000_000,
            peer: "127.0.0.1:5432".into(),
        };
        add(request("GET /a", vec![n1]));
        add(request("GET /a", vec![]));
        s.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("findings.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["findings"][0]["kind"], "n_plus_one");
        assert_eq!(v["breakdown"]["downstream_us"], 9000);
        let sum = summary(&endpoints, s.out.written).join("\n");
        assert!(
            sum.contains("GET /a") && sum.contains("downstream 90%"),
            "{sum}"
        );
        assert!(
            sum.contains("n_plus_one in 1/2 requests: 100× `SELECT * FROM t WHERE id = ?`"),
            "{sum}"
        );
    }
}
