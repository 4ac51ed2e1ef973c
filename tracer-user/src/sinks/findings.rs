//! findings.jsonl (one line per request with findings) and the per-endpoint view of findings and
//! time breakdowns for the exit summary.

use std::{
    collections::BTreeMap,
    io::{self, BufWriter, Write as _},
    path::Path,
};

use serde::Serialize;

use super::create_private;
use crate::model::{
    breakdown::Breakdown,
    downstream::findings::{EndpointFindings, Finding},
    Request,
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

/// Per endpoint: findings merged over its requests, and its time summed by part.
#[derive(Default)]
struct PerEndpoint {
    findings: EndpointFindings,
    parts_us: [u64; 7],
    total_us: u64,
}

pub struct FindingsSink {
    out: BufWriter<std::fs::File>,
    pub written: u64,
    endpoints: BTreeMap<String, PerEndpoint>,
}

impl FindingsSink {
    pub fn create(dir: &Path) -> io::Result<Self> {
        Ok(Self {
            out: BufWriter::new(create_private(&dir.join("findings.jsonl"))?),
            written: 0,
            endpoints: BTreeMap::new(),
        })
    }

    /// Every finished request (with a breakdown) goes through here, findings or not.
    pub fn add(&mut self, r: &Request) -> io::Result<()> {
        let Some(b) = &r.breakdown else {
            return Ok(());
        };
        let e = self.endpoints.entry(r.endpoint.clone()).or_default();
        e.findings.add(&r.findings);
        for (sum, (_, us)) in e.parts_us.iter_mut().zip(b.parts()) {
            *sum += us;
        }
        e.total_us += r.duration_us;
        if r.findings.is_empty() {
            return Ok(());
        }
        serde_json::to_writer(
            &mut self.out,
            &Line {
                start: &r.start,
                pid: r.pid,
                tid: r.tid,
                endpoint: &r.endpoint,
                duration_us: r.duration_us,
                breakdown: Some(b),
                findings: &r.findings,
                site: r.downstream.as_ref().and_then(|d| d.site.as_deref()),
            },
        )?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Lines for the exit summary: where each endpoint's time went, then its findings.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut by_time: Vec<(&String, &PerEndpoint)> = self.endpoints.iter().collect();
        by_time.sort_by_key(|(_, e)| std::cmp::Reverse(e.total_us));
        if !by_time.is_empty() {
            lines.push("\nwhere the time went (share of each endpoint's request time):".into());
        }
        for (endpoint, e) in by_time.iter().take(10) {
            let parts: Vec<String> = Breakdown::LABELS
                .iter()
                .zip(e.parts_us)
                .filter(|(_, us)| us * 100 >= e.total_us.max(1))
                .map(|(name, us)| format!("{name} {}%", us * 100 / e.total_us.max(1)))
                .collect();
            lines.push(format!("  {endpoint:<40} {}", parts.join(" · ")));
        }
        let with: Vec<_> = self
            .endpoints
            .iter()
            .filter(|(_, e)| !e.findings.findings().is_empty())
            .collect();
        if !with.is_empty() {
            lines.push(format!(
                "\nfindings ({} request lines in findings.jsonl):",
                self.written
            ));
        }
        for (endpoint, e) in with {
            for a in e.findings.findings() {
                lines.push(format!(
                    "  {endpoint}: {} in {}/{} requests: {}",
                    a.kind,
                    a.requests,
                    e.findings.requests(),
                    describe(&a.example)
                ));
            }
        }
        lines
    }
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
        let n1 = Finding::NPlusOne {
            fingerprint: "SELECT * FROM t WHERE id = ?".into(),
            count: 100,
            total_ns: 5_000_000,
            peer: "127.0.0.1:5432".into(),
        };
        s.add(&request("GET /a", vec![n1])).unwrap();
        s.add(&request("GET /a", vec![])).unwrap();
        s.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("findings.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["findings"][0]["kind"], "n_plus_one");
        assert_eq!(v["breakdown"]["downstream_us"], 9000);
        let sum = s.summary().join("\n");
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
