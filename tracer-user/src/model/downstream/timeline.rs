//! A request's downstream round trips in time order, for outputs that draw them one by one (the
//! OTLP exporter's client spans). A request that makes 100,000 queries must not become 100,000
//! spans: the first `cap` round trips are kept as they happened, the rest are folded into one
//! entry per (peer, fingerprint) with a count.

use super::calls::{name, Exchange};

/// One round trip, or several folded together (`count` > 1).
#[derive(Debug, Clone, PartialEq)]
pub struct RoundTrip {
    pub peer: String,
    pub protocol: &'static str,
    /// The first command's fingerprint (a pipelined batch carries several: `commands` says how
    /// many).
    pub fingerprint: String,
    /// ns from the request's start to the first byte sent (of the first folded round trip).
    pub start_ns: u64,
    /// ns from the request's start to the end (answer's first byte) of the last folded one.
    pub end_ns: u64,
    /// Time waiting for answers, summed over the folded round trips.
    pub busy_ns: u64,
    pub count: u64,
    pub commands: u64,
}

/// Round trips kept one by one at most, by default.
pub const DEFAULT_CAP: usize = 32;

/// The first `cap` exchanges as they happened, then one folded entry per (peer, fingerprint), in
/// order of first appearance; times relative to `origin_ns` (the request's start, kernel clock).
pub fn timeline(exchanges: &[Exchange], origin_ns: u64, cap: usize) -> Vec<RoundTrip> {
    let mut out: Vec<RoundTrip> = Vec::with_capacity(exchanges.len().min(cap + 4));
    let mut folded_from = None;
    for (i, e) in exchanges.iter().enumerate() {
        let fingerprint = e.calls.first().map_or_else(
            || format!("({} exchange)", name(e.protocol)),
            |c| c.fingerprint.clone(),
        );
        let start_ns = e.start_ns.saturating_sub(origin_ns);
        let end_ns = start_ns.saturating_add(e.duration_ns);
        if i >= cap {
            let start = *folded_from.get_or_insert(out.len());
            if let Some(f) = out[start..]
                .iter_mut()
                .find(|f| f.peer == e.peer && f.fingerprint == fingerprint)
            {
                f.end_ns = f.end_ns.max(end_ns);
                f.busy_ns += e.duration_ns;
                f.count += 1;
                f.commands += e.calls.len() as u64;
                continue;
            }
        }
        out.push(RoundTrip {
            peer: e.peer.clone(),
            protocol: name(e.protocol),
            fingerprint,
            start_ns,
            end_ns,
            busy_ns: e.duration_ns,
            count: 1,
            commands: e.calls.len() as u64,
        });
    }
    out
}

/// OpenTelemetry's `db.system.name` for a protocol (None: not a database; HTTP peers are
/// described as HTTP clients instead).
pub fn db_system(protocol: &str) -> Option<&'static str> {
    Some(match protocol {
        "postgres" => "postgresql",
        "mysql" => "mysql",
        "redis" => "redis",
        "memcached" => "memcached",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::downstream::{findings::Call, Protocol};

    fn ex(peer: &str, fp: &str, start: u64, dur: u64) -> Exchange {
        Exchange {
            peer: peer.into(),
            protocol: Protocol::Postgres,
            start_ns: start,
            duration_ns: dur,
            calls: vec![Call {
                peer: peer.into(),
                protocol: Protocol::Postgres,
                fingerprint: fp.into(),
                key_hash: None,
                is_read: true,
                duration_ns: dur,
            }],
        }
    }

    #[test]
    fn keeps_the_first_round_trips_then_folds_per_peer_and_fingerprint() {
        let mut v = vec![ex("db:5432", "BEGIN", 0, 5)];
        for i in 0..10 {
            v.push(ex(
                "db:5432",
                "SELECT * FROM t WHERE id = ?",
                10 + i * 10,
                3,
            ));
        }
        v.push(ex("db:5432", "COMMIT", 200, 4));
        let t = timeline(&v, 0, 3);
        // BEGIN and two SELECTs as they were, then the 8 other SELECTs and the COMMIT folded.
        assert_eq!(t.len(), 5, "{t:#?}");
        assert_eq!((t[0].fingerprint.as_str(), t[0].count), ("BEGIN", 1));
        assert_eq!(t[2].start_ns, 20);
        assert_eq!(t[3].count, 8);
        assert_eq!(t[3].start_ns, 30);
        assert_eq!(t[3].end_ns, 103);
        assert_eq!(t[3].busy_ns, 24);
        assert_eq!((t[4].fingerprint.as_str(), t[4].count), ("COMMIT", 1));
        assert_eq!(t.iter().map(|r| r.count).sum::<u64>(), 12);
        assert_eq!(db_system("redis"), Some("redis"));
        assert_eq!(db_system("http"), None);
    }

    #[test]
    fn under_the_cap_every_round_trip_is_its_own() {
        let v = vec![ex("a", "X", 0, 1), ex("a", "X", 5, 1)];
        let t = timeline(&v, 0, 32);
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|r| r.count == 1));
    }
}
