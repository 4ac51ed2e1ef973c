//! The table printed when `record` stops.

use std::{fmt::Write as _, time::Duration};

use crate::model::{
    endpoints::{Row, MAX_ENDPOINTS, OTHER_ENDPOINTS},
    Endpoints,
};

/// Durations for people: 850µs, 12.3ms, 1.52s.
pub fn human_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=9_999 => format!("{:.2}ms", us as f64 / 1e3),
        10_000..=999_999 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(width - 1).collect();
        t.push('…');
        t
    }
}

pub fn table(rows: &[Row]) -> String {
    const W: usize = 40;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<W$} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>5}",
        "ENDPOINT", "COUNT", "REQ/S", "P50", "P95", "P99", "MAX", "5XX"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<W$} {:>7} {:>8.1} {:>8} {:>8} {:>8} {:>8} {:>5}",
            cut(&r.endpoint, W),
            r.count,
            r.per_sec,
            human_us(r.p50_us),
            human_us(r.p95_us),
            human_us(r.p99_us),
            human_us(r.max_us),
            r.errors_5xx
        );
    }
    out
}

/// Everything printed on exit: the table, then in-flight requests, then what was lost.
pub fn render<X>(stats: &Endpoints<X>, elapsed: Duration, footer: &[String]) -> String {
    let mut out = String::new();
    let rows = stats.rows(elapsed);
    let _ = writeln!(
        out,
        "\n{} requests in {:.1}s, {} endpoints",
        stats.total,
        elapsed.as_secs_f64(),
        rows.len()
    );
    if rows.is_empty() {
        out.push_str("no completed requests were seen\n");
    } else {
        out.push_str(&table(&rows));
    }
    if stats.folded > 0 {
        let _ = writeln!(
            out,
            "{} requests of endpoints past the first {MAX_ENDPOINTS} are counted in {OTHER_ENDPOINTS}",
            stats.folded
        );
    }
    if stats.in_flight > 0 {
        let _ = writeln!(
            out,
            "\n{} requests still in flight at exit:",
            stats.in_flight
        );
        for r in &stats.in_flight_examples {
            let _ = writeln!(
                out,
                "  {:<40} running {:>8}  pid {} tid {}",
                cut(&r.endpoint, 40),
                human_us(r.duration_us),
                r.pid,
                r.tid
            );
        }
    }
    for line in footer {
        let _ = writeln!(out, "{line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_us(850), "850µs");
        assert_eq!(human_us(1_234), "1.23ms");
        assert_eq!(human_us(301_000), "301.0ms");
        assert_eq!(human_us(1_520_000), "1.52s");
    }

    #[test]
    fn table_layout() {
        let rows = [Row {
            endpoint: "GET /sleep".into(),
            count: 3,
            per_sec: 0.5,
            p50_us: 300_500,
            p95_us: 301_000,
            p99_us: 301_000,
            max_us: 301_100,
            errors_5xx: 0,
        }];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ENDPOINT"));
        assert!(lines[1].starts_with("GET /sleep"));
        assert!(lines[1].contains("300.5ms"), "{t}");
    }
}
