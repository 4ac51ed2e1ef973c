//! Per-endpoint aggregation: O(1) per request, histograms instead of stored samples.

use std::{collections::HashMap, time::Duration};

use hdrhistogram::Histogram;

use super::Request;

/// Latency statistics of one endpoint, in microseconds.
#[derive(Debug, Clone)]
pub struct EndpointStats {
    pub count: u64,
    pub errors_5xx: u64,
    hist: Histogram<u64>,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self {
            count: 0,
            errors_5xx: 0,
            // 1 µs .. 1 h at 3 significant digits: ~0.1% error, fixed memory per endpoint.
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
        }
    }
}

/// One row of the summary table.
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

/// Completed requests by endpoint, plus those still open when tracing stopped.
#[derive(Debug, Default)]
pub struct Stats {
    endpoints: HashMap<String, EndpointStats>,
    pub total: u64,
    pub in_flight: Vec<Request>,
}

impl Stats {
    pub fn add(&mut self, r: &Request) {
        if r.end == "in_flight" {
            self.in_flight.push(r.clone());
            return;
        }
        self.sample(&r.endpoint, r.duration_us, r.is_5xx());
    }

    /// One completed call of anything with a name and a duration (requests, handler calls).
    pub fn sample(&mut self, name: &str, duration_us: u64, is_5xx: bool) {
        self.total += 1;
        let e = self.endpoints.entry_ref_or_default(name);
        e.count += 1;
        e.errors_5xx += u64::from(is_5xx);
        e.hist.saturating_record(duration_us.max(1));
    }

    /// Rows by total time spent (count × mean), the hottest first.
    pub fn rows(&self, elapsed: Duration) -> Vec<Row> {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let mut rows: Vec<(f64, Row)> = self
            .endpoints
            .iter()
            .map(|(name, e)| {
                let h = &e.hist;
                let weight = h.mean() * e.count as f64;
                let row = Row {
                    endpoint: name.clone(),
                    count: e.count,
                    per_sec: e.count as f64 / secs,
                    p50_us: h.value_at_quantile(0.50),
                    p95_us: h.value_at_quantile(0.95),
                    p99_us: h.value_at_quantile(0.99),
                    max_us: h.max(),
                    errors_5xx: e.errors_5xx,
                };
                (weight, row)
            })
            .collect();
        rows.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| a.1.endpoint.cmp(&b.1.endpoint))
        });
        rows.into_iter().map(|(_, r)| r).collect()
    }
}

trait EntryRef {
    fn entry_ref_or_default(&mut self, k: &str) -> &mut EndpointStats;
}

impl EntryRef for HashMap<String, EndpointStats> {
    // Avoid allocating the key for every request: only a new endpoint allocates.
    fn entry_ref_or_default(&mut self, k: &str) -> &mut EndpointStats {
        if !self.contains_key(k) {
            self.insert(k.to_owned(), EndpointStats::default());
        }
        self.get_mut(k).expect("inserted above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            seq: 0,
            pipeline_index: None,
            signals: Vec::new(),
            breakdown: None,
            downstream: None,
            findings: Vec::new(),
        }
    }

    #[test]
    fn percentiles_and_order() {
        let mut s = Stats::default();
        for i in 1..=100 {
            s.add(&req("GET /fast", i * 10, 200));
        }
        for _ in 0..3 {
            s.add(&req("GET /slow", 300_000, 500));
        }
        let rows = s.rows(Duration::from_secs(10));
        assert_eq!(rows[0].endpoint, "GET /slow", "most total time first");
        assert_eq!(rows[0].errors_5xx, 3);
        let fast = &rows[1];
        assert_eq!(fast.count, 100);
        assert!((fast.per_sec - 10.0).abs() < 1e-9);
        assert_eq!(fast.p50_us, 500);
        assert_eq!(fast.p99_us, 990);
        assert_eq!(fast.max_us, 1000);
    }

    #[test]
    fn in_flight_is_kept_apart() {
        let mut s = Stats::default();
        let mut r = req("GET /stuck", 5_000_000, 0);
        r.end = "in_flight";
        s.add(&r);
        assert_eq!(s.total, 0);
        assert_eq!(s.in_flight.len(), 1);
        assert!(s.rows(Duration::from_secs(1)).is_empty());
    }
}
