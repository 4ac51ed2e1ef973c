//! The per-endpoint aggregate every output reads: `record`'s exit summary (the latency table,
//! where the time went, the findings) and `top`'s endpoint table and findings screen. Per
//! endpoint: the count, a histogram of durations, 5xx and slow counts, the scheduler breakdown
//! summed by part, and the findings merged over its requests.
//!
//! O(1) per request (a histogram record, a few counters; findings cost O(their number)), and
//! bounded: histograms of fixed size, at most `MAX_ENDPOINTS` endpoints with their own row (later
//! ones share `OTHER_ENDPOINTS`, counted in `folded`), at most `MAX_SUBJECTS` distinct findings per
//! endpoint, `MAX_IN_FLIGHT` examples of requests still open at the end.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use hdrhistogram::Histogram;

use super::{
    downstream::findings::{EndpointFindings, Finding},
    Request,
};

/// Endpoints with their own row; later ones share `OTHER_ENDPOINTS` (unnormalized ids in paths
/// would otherwise grow memory without bound).
pub const MAX_ENDPOINTS: usize = 1000;
pub const OTHER_ENDPOINTS: &str = "(other endpoints)";
/// Distinct findings (kind, peer, statement) kept per endpoint.
pub const MAX_SUBJECTS: usize = 20;
/// Requests still open at the end kept as examples (the rest are counted).
pub const MAX_IN_FLIGHT: usize = 20;
/// Significant digits of `record`'s histograms: 1 µs .. 1 h at ~0.1% error.
pub const RECORD_DIGITS: u8 = 3;

/// Percentiles of one endpoint, µs: the middle of the histogram's bucket (within half a bucket),
/// clamped to the exact minimum and maximum (so one request shows its own duration everywhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quantiles {
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// One endpoint's time, summed over its finished requests that have a breakdown. Fixed size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Time {
    /// µs per part, in `Breakdown::parts` order.
    pub parts_us: [u64; 7],
    /// The requests' durations, µs: the parts plus what they did not account for.
    pub total_us: u64,
    pub requests: u64,
}

impl Time {
    pub fn add(&mut self, r: &Request) {
        let Some(b) = &r.breakdown else { return };
        for (sum, (_, us)) in self.parts_us.iter_mut().zip(b.parts()) {
            *sum = sum.saturating_add(us);
        }
        self.total_us = self.total_us.saturating_add(r.duration_us);
        self.requests += 1;
    }

    /// The whole the parts are shares of: the requests' time, or the parts when they overlap the
    /// ends.
    fn whole(&self) -> u64 {
        self.total_us.max(self.parts_us.iter().sum())
    }

    /// Cells per part, then unaccounted, adding up to `width` (largest remainders get the
    /// rounding), or None without time.
    pub fn cells(&self, width: u16) -> Option<[u16; 8]> {
        let whole = self.whole();
        if whole == 0 {
            return None;
        }
        let mut values = [0u64; 8];
        values[..7].copy_from_slice(&self.parts_us);
        values[7] = whole - self.parts_us.iter().sum::<u64>();
        let w = u128::from(width);
        let exact = values.map(|v| u128::from(v) * w);
        let mut cells = exact.map(|x| (x / u128::from(whole)) as u16);
        let mut left = width - cells.iter().sum::<u16>();
        let mut order: Vec<usize> = (0..8).collect();
        // Largest remainder first; ties to the earlier part.
        order.sort_by_key(|&i| std::cmp::Reverse(exact[i] % u128::from(whole)));
        for i in order {
            if left == 0 {
                break;
            }
            cells[i] += 1;
            left -= 1;
        }
        Some(cells)
    }

    /// Share of each part, in percent of the whole (0 without time).
    pub fn percent(&self, part: usize) -> u64 {
        let whole = self.whole();
        match whole {
            0 => 0,
            _ => (u128::from(self.parts_us[part]) * 100 / u128::from(whole)) as u64,
        }
    }
}

/// One endpoint's findings, merged over its finished requests (those with a breakdown: the ones
/// checked for findings), at most `MAX_SUBJECTS` distinct ones.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    pub merged: EndpointFindings,
    subjects: HashSet<(&'static str, String, String)>,
    /// Findings about a new subject once `MAX_SUBJECTS` were kept: not shown.
    pub left_out: u64,
}

impl Findings {
    /// One finished request's findings, none included (it counts in "requests seen"). Returns
    /// how many distinct findings are new.
    pub fn add(&mut self, found: &[Finding]) -> usize {
        let before = self.subjects.len();
        let mut keep = vec![true; found.len()];
        for (f, keep) in found.iter().zip(&mut keep) {
            let (peer, fingerprint) = f.subject();
            let k = (f.kind(), peer.to_owned(), fingerprint.to_owned());
            if !self.subjects.contains(&k) {
                if self.subjects.len() < MAX_SUBJECTS {
                    self.subjects.insert(k);
                } else {
                    *keep = false;
                    self.left_out += 1;
                }
            }
        }
        if keep.iter().all(|k| *k) {
            self.merged.add(found);
        } else {
            let kept: Vec<Finding> = found
                .iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(f, _)| f.clone())
                .collect();
            self.merged.add(&kept);
        }
        self.subjects.len() - before
    }
}

/// One endpoint (or `--handler` function). `X` is what one view adds per endpoint (`top`: its
/// request rate; `record`: nothing).
#[derive(Debug, Clone)]
pub struct Endpoint<X = ()> {
    pub name: String,
    pub count: u64,
    pub errors_5xx: u64,
    /// Finished requests at least as slow as the threshold (0 without one).
    pub slow: u64,
    /// As of the last `Endpoints::refresh`.
    pub q: Quantiles,
    /// Where its finished requests' time went, summed per part.
    pub time: Time,
    /// Its requests' findings, merged.
    pub findings: Findings,
    pub extra: X,
    hist: Histogram<u32>,
    /// Exact, unlike the histogram's buckets.
    min_us: u64,
    max_us: u64,
    /// Listed in `Endpoints::dirty`: `q` is out of date.
    stale: bool,
}

impl<X: Default> Endpoint<X> {
    fn new(name: String, digits: u8) -> Self {
        Self {
            name,
            count: 0,
            errors_5xx: 0,
            slow: 0,
            q: Quantiles::default(),
            time: Time::default(),
            findings: Findings::default(),
            extra: X::default(),
            hist: Histogram::new_with_bounds(1, 3_600_000_000, digits)
                .expect("valid histogram bounds"),
            min_us: u64::MAX,
            max_us: 0,
            stale: false,
        }
    }
}

impl<X> Endpoint<X> {
    /// Its percentiles now (reading a quantile walks the histogram: `q` caches them).
    pub fn quantiles(&self) -> Quantiles {
        if self.count == 0 {
            return Quantiles::default();
        }
        let at = |q: f64| {
            let h = &self.hist;
            h.median_equivalent(h.value_at_quantile(q))
                .clamp(self.min_us, self.max_us)
        };
        Quantiles {
            p50_us: at(0.50),
            p95_us: at(0.95),
            p99_us: at(0.99),
            max_us: self.max_us,
        }
    }

    /// Total time spent in it (count × mean), µs.
    fn weight(&self) -> f64 {
        self.hist.mean() * self.count as f64
    }
}

/// One row of `record`'s summary table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub endpoint: String,
    pub count: u64,
    pub per_sec: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub errors_5xx: u64,
}

/// Finished requests (and calls) by endpoint, in order of first appearance, plus the requests
/// still open when tracing stopped.
#[derive(Debug, Clone)]
pub struct Endpoints<X = ()> {
    list: Vec<Endpoint<X>>,
    by_name: HashMap<String, usize>,
    /// Endpoints whose quantiles are stale.
    dirty: Vec<usize>,
    /// Significant digits of the histograms.
    digits: u8,
    /// Durations from which a request counts as slow; None: none does.
    slow_us: Option<u64>,
    /// Samples: finished requests and calls.
    pub total: u64,
    /// Finished requests with a breakdown: checked for findings.
    pub judged: u64,
    /// Distinct findings kept over all endpoints.
    pub found: u64,
    /// Samples of endpoints past `MAX_ENDPOINTS`, counted in the `OTHER_ENDPOINTS` row.
    pub folded: u64,
    /// Requests still open when tracing stopped (not in the statistics).
    pub in_flight: u64,
    /// The first `MAX_IN_FLIGHT` of them.
    pub in_flight_examples: Vec<Request>,
}

/// `record`'s shape: `RECORD_DIGITS`, no slow threshold.
impl<X: Default> Default for Endpoints<X> {
    fn default() -> Self {
        Self::new(RECORD_DIGITS, None)
    }
}

impl<X: Default> Endpoints<X> {
    /// Histograms of `digits` significant digits (2: buckets under 1% wide in ~13 KB per
    /// endpoint; 3: ~0.1% in ~100 KB); requests from `slow` on count as slow.
    pub fn new(digits: u8, slow: Option<Duration>) -> Self {
        Self {
            list: Vec::new(),
            by_name: HashMap::new(),
            dirty: Vec::new(),
            digits,
            slow_us: slow.map(|t| t.as_micros() as u64),
            total: 0,
            judged: 0,
            found: 0,
            folded: 0,
            in_flight: 0,
            in_flight_examples: Vec::new(),
        }
    }

    /// A request from the agent; returns its endpoint's row, or None when it was still open
    /// (kept apart: it has no duration yet).
    pub fn add(&mut self, r: &Request) -> Option<usize> {
        if r.end == "in_flight" {
            self.in_flight += 1;
            if self.in_flight_examples.len() < MAX_IN_FLIGHT {
                self.in_flight_examples.push(r.clone());
            }
            return None;
        }
        let i = self.sample(&r.endpoint, r.duration_us, r.is_5xx());
        if r.breakdown.is_some() {
            let e = &mut self.list[i];
            e.time.add(r);
            self.found += e.findings.add(&r.findings) as u64;
            self.judged += 1;
        }
        Some(i)
    }

    /// One completed call of anything with a name and a duration (requests, handler calls);
    /// returns its row.
    pub fn sample(&mut self, name: &str, duration_us: u64, is_5xx: bool) -> usize {
        self.total += 1;
        let i = self.index(name);
        let slow = self.slow_us.is_some_and(|t| duration_us >= t);
        let e = &mut self.list[i];
        e.count += 1;
        e.errors_5xx += u64::from(is_5xx);
        e.slow += u64::from(slow);
        e.hist.saturating_record(duration_us.max(1));
        e.min_us = e.min_us.min(duration_us);
        e.max_us = e.max_us.max(duration_us);
        if !e.stale {
            e.stale = true;
            self.dirty.push(i);
        }
        i
    }

    fn index(&mut self, name: &str) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let name = if self.list.len() < MAX_ENDPOINTS {
            name
        } else {
            self.folded += 1;
            OTHER_ENDPOINTS
        };
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        self.list.push(Endpoint::new(name.to_owned(), self.digits));
        self.by_name.insert(name.to_owned(), self.list.len() - 1);
        self.list.len() - 1
    }
}

impl<X> Endpoints<X> {
    /// Recompute `q` of the endpoints that changed since the last call.
    pub fn refresh(&mut self) {
        for i in self.dirty.drain(..) {
            let e = &mut self.list[i];
            e.stale = false;
            e.q = e.quantiles();
        }
    }

    /// In order of first appearance.
    pub fn list(&self) -> &[Endpoint<X>] {
        &self.list
    }

    pub fn get_mut(&mut self, i: usize) -> &mut Endpoint<X> {
        &mut self.list[i]
    }

    /// Rows by total time spent (count × mean), the hottest first.
    pub fn rows(&self, elapsed: Duration) -> Vec<Row> {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let mut rows: Vec<(f64, Row)> = self
            .list
            .iter()
            .map(|e| {
                let q = e.quantiles();
                let row = Row {
                    endpoint: e.name.clone(),
                    count: e.count,
                    per_sec: e.count as f64 / secs,
                    p50_us: q.p50_us,
                    p95_us: q.p95_us,
                    p99_us: q.p99_us,
                    max_us: q.max_us,
                    errors_5xx: e.errors_5xx,
                };
                (e.weight(), row)
            })
            .collect();
        rows.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| a.1.endpoint.cmp(&b.1.endpoint))
        });
        rows.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::breakdown::Breakdown;

    fn req(endpoint: &str, us: u64, status: u16) -> Request {
        Request {
            start_us: 0,
            start: String::new(),
            pid: 1,
            tid: 1,
            comm: String::new(),
            fd: 3,
            local_port: None,
            peer: None,
            protocol: "http/1.1",
            method: None,
            path: None,
            host: None,
            endpoint: endpoint.to_owned(),
            status: Some(status),
            duration_us: us,
            ttfb_us: None,
            bytes_in: 0,
            bytes_out: 0,
            end: "close",
            ..crate::model::request::test_request()
        }
    }

    #[test]
    fn percentiles_and_order() {
        let mut s = Endpoints::<()>::default();
        for i in 1..=100 {
            s.add(&req("GET /fast", i * 10, 200));
        }
        for _ in 0..3 {
            s.add(&req("GET /slow", 300_000, 500));
        }
        let rows = s.rows(Duration::from_secs(10));
        assert_eq!(rows[0].endpoint, "GET /slow", "most total time first");
        assert_eq!(rows[0].errors_5xx, 3);
        assert_eq!(rows[0].max_us, 300_000, "one duration: itself everywhere");
        assert_eq!(rows[0].p50_us, 300_000);
        let fast = &rows[1];
        assert_eq!(fast.count, 100);
        assert!((fast.per_sec - 10.0).abs() < 1e-9);
        assert_eq!(fast.p50_us, 500);
        assert_eq!(fast.p99_us, 990);
        assert_eq!(fast.max_us, 1000);
    }

    #[test]
    fn in_flight_is_kept_apart_and_bounded() {
        let mut s = Endpoints::<()>::default();
        for _ in 0..MAX_IN_FLIGHT + 5 {
            let mut r = req("GET /stuck", 5_000_000, 0);
            r.end = "in_flight";
            assert_eq!(s.add(&r), None);
        }
        assert_eq!(s.total, 0);
        assert_eq!(s.in_flight, MAX_IN_FLIGHT as u64 + 5);
        assert_eq!(s.in_flight_examples.len(), MAX_IN_FLIGHT);
        assert!(s.rows(Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn endpoints_past_the_cap_are_folded_and_counted() {
        let mut s = Endpoints::<()>::default();
        for i in 0..MAX_ENDPOINTS + 30 {
            s.add(&req(&format!("GET /p{i}"), 100, 200));
        }
        // A known endpoint still gets its own row.
        s.add(&req("GET /p0", 100, 200));
        assert_eq!(s.list().len(), MAX_ENDPOINTS + 1);
        let other = s.list().last().unwrap();
        assert_eq!((other.name.as_str(), other.count), (OTHER_ENDPOINTS, 30));
        assert_eq!(s.folded, 30);
        assert_eq!(s.list()[0].count, 2);
        assert_eq!(s.total, MAX_ENDPOINTS as u64 + 31);
    }

    #[test]
    fn breakdowns_and_findings_are_summed_per_endpoint() {
        let mut s = Endpoints::<()>::new(2, Some(Duration::from_millis(5)));
        let mut r = req("GET /a", 10_000, 200);
        r.breakdown = Some(Breakdown {
            on_cpu_us: 1_000,
            downstream_us: 9_000,
            ..Breakdown::default()
        });
        r.findings = vec![Finding::CpuBound { share: 0.9 }];
        s.add(&r);
        r.findings.clear();
        s.add(&r);
        // No breakdown: counted, not judged.
        s.add(&req("GET /a", 1_000, 200));
        let e = &s.list()[0];
        assert_eq!((e.count, e.slow), (3, 2));
        assert_eq!(e.time.requests, 2);
        assert_eq!(e.time.parts_us[2], 18_000);
        assert_eq!(e.time.percent(2), 90);
        assert_eq!(e.findings.merged.requests(), 2);
        assert_eq!(e.findings.merged.findings()[0].requests, 1);
        assert_eq!((s.judged, s.found), (2, 1));
    }

    #[test]
    fn quantiles_are_cached_until_refresh() {
        let mut s = Endpoints::<()>::new(2, None);
        let i = s.sample("handler f", 1_500, false);
        assert_eq!(s.list()[i].q, Quantiles::default());
        s.refresh();
        assert_eq!(s.list()[i].q.p50_us, 1_500);
        assert_eq!(s.list()[i].q, s.list()[i].quantiles());
    }

    #[test]
    fn distinct_findings_per_endpoint_are_bounded() {
        let mut f = Findings::default();
        let cpu = Finding::CpuBound { share: 0.9 };
        assert_eq!(f.add(std::slice::from_ref(&cpu)), 1);
        assert_eq!(f.add(&[cpu]), 0, "the same subject again");
        for i in 0..MAX_SUBJECTS + 5 {
            let n1 = Finding::NPlusOne {
                fingerprint: format!("SELECT {i}"),
                count: 10,
                total_ns: 1,
                peer: "db:5432".into(),
            };
            f.add(&[n1]);
        }
        f.add(&[]);
        assert_eq!(f.left_out, 6);
        assert_eq!(f.merged.findings().len(), MAX_SUBJECTS);
        assert_eq!(
            f.merged.requests(),
            MAX_SUBJECTS as u64 + 8,
            "every request counts"
        );
    }
}
