use super::*;

fn call(peer: &str, fp: &str, key: Option<u64>, ns: u64) -> Call {
    Call {
        peer: peer.to_owned(),
        protocol: if key.is_some() {
            Protocol::Redis
        } else {
            Protocol::Postgres
        },
        fingerprint: fp.to_owned(),
        key_hash: key,
        is_read: key.is_some(),
        duration_ns: ns,
    }
}

const SQL: &str = "SELECT * FROM app_author WHERE id = ?";
const DB: &str = "10.0.0.5:5432";

fn repeat(n: usize, c: &Call) -> Vec<Call> {
    vec![c.clone(); n]
}

fn busy(total: u64) -> Breakdown {
    Breakdown {
        total_ns: total,
        ..Breakdown::default()
    }
}

#[test]
fn n_plus_one_at_threshold_fires() {
    let t = Thresholds::default();
    let calls = repeat(10, &call(DB, SQL, None, 1_000));
    let f = detect(&calls, &busy(1_000_000), &t);
    assert_eq!(
        f,
        [Finding::NPlusOne {
            fingerprint: SQL.into(),
            count: 10,
            total_ns: 10_000,
            peer: DB.into()
        }]
    );
}

#[test]
fn n_plus_one_below_threshold_or_other_peer_does_not() {
    let t = Thresholds::default();
    let mut calls = repeat(9, &call(DB, SQL, None, 1_000));
    assert!(detect(&calls, &busy(1_000_000), &t).is_empty());
    calls.push(call("10.0.0.6:5432", SQL, None, 1_000));
    assert!(detect(&calls, &busy(1_000_000), &t).is_empty());
    // A threshold of 0 or 1 would flag every call: counts below 2 never fire.
    let loose = Thresholds { n_plus_one: 0, ..t };
    assert!(detect(&[call(DB, SQL, None, 1)], &busy(1_000), &loose).is_empty());
}

#[test]
fn repeated_key_counts_reads_of_one_exact_key() {
    let t = Thresholds::default();
    let cache = "10.0.0.7:6379";
    let mut calls = repeat(5, &call(cache, "GET user:?", Some(42), 100));
    // Same fingerprint, other keys: not repeated (and 4 + 5 < 10, not N+1 either).
    calls.extend((0..4).map(|k| call(cache, "GET user:?", Some(k), 100)));
    // Writes of the key do not count.
    let mut write = call(cache, "SET user:?", Some(7), 100);
    write.is_read = false;
    calls.extend(repeat(6, &write));
    let f = detect(&calls, &busy(1_000_000), &t);
    assert_eq!(
        f,
        [Finding::RepeatedKey {
            fingerprint: "GET user:?".into(),
            count: 5,
            peer: cache.into()
        }]
    );
    assert!(detect(&calls[1..5], &busy(1_000_000), &t).is_empty());
}

#[test]
fn cpu_share_boundary() {
    let t = Thresholds::default();
    let at = Breakdown {
        total_ns: 100,
        on_cpu_ns: 80,
        ..Breakdown::default()
    };
    assert_eq!(detect(&[], &at, &t), [Finding::CpuBound { share: 0.8 }]);
    let below = Breakdown {
        on_cpu_ns: 79,
        ..at
    };
    assert!(detect(&[], &below, &t).is_empty());
    // No time measured: no share findings, no division by zero.
    assert!(detect(&[], &Breakdown::default(), &t).is_empty());
}

#[test]
fn lock_and_peer_bound() {
    let t = Thresholds::default();
    let b = Breakdown {
        total_ns: 1_000,
        lock_ns: 500,
        ..Breakdown::default()
    };
    let calls = [call(DB, SQL, None, 300), call(DB, "COMMIT", None, 300)];
    let f = detect(&calls, &b, &t);
    assert_eq!(
        f,
        [
            Finding::LockBound { share: 0.5 },
            Finding::PeerBound {
                peer: DB.into(),
                share: 0.6,
                calls: 2
            }
        ]
    );
    // Concurrent calls summing past the wall time: the share is capped at 1.
    let over = [call(DB, SQL, None, 900), call(DB, SQL, None, 900)];
    let f = detect(&over, &busy(1_000), &t);
    assert_eq!(f.last().map(Finding::magnitude), Some(1.0));
}

#[test]
fn output_order_is_deterministic() {
    let t = Thresholds {
        n_plus_one: 2,
        ..Thresholds::default()
    };
    let mut calls = repeat(3, &call("b", "Q2", None, 1));
    calls.extend(repeat(2, &call("a", "Q1", None, 1)));
    calls.extend(repeat(3, &call("a", "Q3", None, 1)));
    let f = detect(&calls, &busy(1_000_000), &t);
    let subjects: Vec<(&str, &str)> = f.iter().map(Finding::subject).collect();
    assert_eq!(subjects, [("a", "Q3"), ("b", "Q2"), ("a", "Q1")]);
    calls.reverse();
    assert_eq!(detect(&calls, &busy(1_000_000), &t), f);
}

#[test]
fn serializes_with_kind_tag() {
    let f = Finding::NPlusOne {
        fingerprint: "GET /x".into(),
        count: 12,
        total_ns: 5,
        peer: "p".into(),
    };
    let json = serde_json::to_string(&f).unwrap_or_default();
    assert_eq!(
        json,
        r#"{"kind":"n_plus_one","fingerprint":"GET /x","count":12,"total_ns":5,"peer":"p"}"#
    );
    let cpu = serde_json::to_string(&Finding::CpuBound { share: 0.9 }).unwrap_or_default();
    assert_eq!(cpu, r#"{"kind":"cpu_bound","share":0.9}"#);
}

#[test]
fn endpoint_aggregation() {
    let n1 = |count| Finding::NPlusOne {
        fingerprint: SQL.into(),
        count,
        total_ns: 1,
        peer: DB.into(),
    };
    let mut e = EndpointFindings::default();
    e.add(&[n1(12), Finding::CpuBound { share: 0.85 }]);
    e.add(&[n1(30)]);
    e.add(&[]);
    // The same finding twice in one request counts that request once.
    e.add(&[n1(11), n1(11)]);
    assert_eq!(e.requests(), 4);
    let v = e.findings();
    assert_eq!(v.len(), 2);
    assert_eq!(
        (v[0].kind, v[0].requests, v[0].max),
        ("n_plus_one", 3, 30.0)
    );
    assert_eq!(v[0].example, n1(30));
    assert_eq!((v[1].kind, v[1].requests), ("cpu_bound", 1));
    let json = serde_json::to_value(&e).unwrap_or_default();
    assert_eq!(json["requests"], 4);
    assert_eq!(json["findings"][0]["example"]["count"], 30);
    assert_eq!(json["findings"][1]["kind"], "cpu_bound");
    assert!(json["findings"][0].get("last_request").is_none());
}
