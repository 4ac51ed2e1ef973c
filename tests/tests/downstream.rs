//! Root test of "where did the time go": gunicorn + Django against a real PostgreSQL, Redis and
//! memcached from Debian's packages. An N+1 view and its select_related twin, views that read one
//! cache key 50 times, a view waiting on a file lock another request holds, a CPU-bound view: the
//! round trips, fingerprints, findings and breakdowns must say so.

use std::time::Duration;

use integration_tests::{backends, *};
use serde_json::Value;

/// How far the parts of a breakdown may be from the request's duration: 2 ms or 2 %.
fn tolerance_us(duration_us: u64) -> i64 {
    (duration_us / 50).max(2_000) as i64
}

fn findings_of<'a>(r: &'a Value, kind: &str) -> Vec<&'a Value> {
    r["findings"]
        .as_array()
        .map(|f| f.iter().filter(|f| f["kind"] == kind).collect())
        .unwrap_or_default()
}

fn one<'a>(done: &'a Finished, endpoint: &str) -> &'a Value {
    let v = done.with_endpoint(endpoint);
    assert_eq!(v.len(), 1, "{endpoint}: {v:?}");
    v[0]
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn downstream_calls_findings_and_breakdown() {
    require_root();
    for bin in ["postgres", "redis-server", "memcached"] {
        assert!(
            backends::installed(bin),
            "{bin} missing: run cargo xtask setup"
        );
    }
    let pg = backends::Postgres::start();
    let (_redis, redis_port) = backends::redis();
    let (_memcached, mc_port) = backends::memcached();
    let lock = tempfile::NamedTempFile::new().unwrap();
    let (_app, port) = backends::downstream_app(&[
        ("PGPORT", pg.port.to_string()),
        ("REDIS_PORT", redis_port.to_string()),
        ("MEMCACHED_PORT", mc_port.to_string()),
        ("SLOWTRACE_LOCK", lock.path().display().to_string()),
    ]);
    // No request before tracing: connections the workers open are then all seen from connect.
    let trace = Trace::start(&["--port", &port.to_string(), "--threshold", "200ms"]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for p in [
        "/books/n1",
        "/books/n1slow",
        "/books/joined",
        "/cache/redis",
        "/cache/memcached",
        "/cpu",
    ] {
        assert_eq!(curl(&[url(p)]), [200], "{p}");
    }
    let holder = std::thread::spawn({
        let u = url("/lock?hold=0.8");
        move || curl(&[u])
    });
    wait_until(
        Duration::from_secs(10),
        "the holder to take the lock",
        || flock_held(lock.path()),
    );
    assert_eq!(curl(&[url("/lock")]), [200]);
    assert_eq!(holder.join().unwrap(), [200]);
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    eprintln!("{}", done.stdout);

    // N+1: one query for the books, then one per book, all with one fingerprint.
    let n1 = one(&done, "GET /books/n1");
    let ds = &n1["downstream"];
    let rt = ds["round_trips"].as_u64().unwrap();
    assert!((101..=110).contains(&rt), "N+1 round trips: {rt}");
    let peer = &ds["peers"][0];
    assert_eq!(peer["protocol"], "postgres");
    assert_eq!(peer["peer"], format!("127.0.0.1:{}", pg.port));
    let top = &peer["top"][0];
    assert_eq!(top["calls"], 100, "{peer}");
    let fp = top["fingerprint"].as_str().unwrap();
    assert!(
        fp.contains("FROM \"st_author\" WHERE \"st_author\".\"id\" = ?"),
        "{fp}"
    );
    let f = findings_of(n1, "n_plus_one");
    assert_eq!(f.len(), 1, "{n1}");
    assert_eq!(f[0]["count"], 100);
    assert_eq!(f[0]["fingerprint"], fp);

    // A slow N+1 is captured while it runs: its findings name the app frame issuing the calls.
    let slow_n1 = one(&done, "GET /books/n1slow");
    assert_eq!(findings_of(slow_n1, "n_plus_one").len(), 1, "{slow_n1}");
    let site = slow_n1["downstream"]["site"].as_str().unwrap_or_default();
    assert!(
        site.contains("downstream_app.py:"),
        "site {site:?}: {slow_n1}"
    );
    let lines = read_records(&done.dir.join("findings.jsonl"));
    assert!(lines.iter().any(|l| l["site"].as_str() == Some(site)));

    // select_related: one query for everything, no finding.
    let joined = one(&done, "GET /books/joined");
    let rt = joined["downstream"]["round_trips"].as_u64().unwrap();
    assert!(rt <= 5, "select_related round trips: {rt}");
    assert!(findings_of(joined, "n_plus_one").is_empty(), "{joined}");
    let join_calls: Vec<&Value> = joined["downstream"]["peers"][0]["top"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["fingerprint"].as_str().unwrap().contains("INNER JOIN"))
        .collect();
    assert_eq!(join_calls.len(), 1, "{joined}");
    assert_eq!(join_calls[0]["calls"], 1);

    // The same cache key 50 times, in Redis and in memcached.
    for (endpoint, proto, cache_port) in [
        ("GET /cache/redis", "redis", redis_port),
        ("GET /cache/memcached", "memcached", mc_port),
    ] {
        let r = one(&done, endpoint);
        let peer = &r["downstream"]["peers"][0];
        assert_eq!(peer["protocol"], proto, "{r}");
        assert_eq!(peer["peer"], format!("127.0.0.1:{cache_port}"));
        let f = findings_of(r, "repeated_key");
        assert_eq!(f.len(), 1, "{r}");
        assert_eq!(f[0]["count"], 50, "{r}");
        assert!(
            f[0]["fingerprint"]
                .as_str()
                .unwrap()
                .contains("user:?:profile"),
            "{r}"
        );
        assert!(findings_of(r, "n_plus_one").is_empty(), "{r}");
    }

    // CPU-bound.
    let cpu = one(&done, "GET /cpu");
    let b = &cpu["breakdown"];
    let share = b["on_cpu_us"].as_f64().unwrap() / cpu["duration_us"].as_f64().unwrap();
    assert!(share >= 0.8, "on-CPU share {share}: {b}");
    assert_eq!(findings_of(cpu, "cpu_bound").len(), 1, "{cpu}");

    // The waiter's time is the lock; the holder's is its sleep.
    let locks = done.with_endpoint("GET /lock");
    assert_eq!(locks.len(), 2);
    let waiter = locks
        .iter()
        .max_by_key(|r| r["breakdown"]["lock_us"].as_u64().unwrap())
        .unwrap();
    let lock_us = waiter["breakdown"]["lock_us"].as_u64().unwrap();
    assert!(
        lock_us >= 400_000,
        "waited {lock_us} µs on the lock: {waiter}"
    );
    assert_eq!(findings_of(waiter, "lock_bound").len(), 1, "{waiter}");
    assert!(locks
        .iter()
        .any(|r| r["breakdown"]["sleep_us"].as_u64().unwrap() >= 700_000));

    // Every breakdown adds up to its request's duration.
    for r in &done.records {
        let b = &r["breakdown"];
        let d = r["duration_us"].as_u64().unwrap();
        let u = b["unaccounted_us"].as_i64().unwrap();
        assert!(
            u.abs() <= tolerance_us(d),
            "{} {d} µs, unaccounted {u}: {b}",
            r["endpoint"]
        );
    }

    // findings.jsonl and the summary.
    let lines = read_records(&done.dir.join("findings.jsonl"));
    for kind in ["n_plus_one", "repeated_key", "cpu_bound", "lock_bound"] {
        assert!(
            lines.iter().any(|l| l["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["kind"] == kind)),
            "no {kind} in findings.jsonl"
        );
    }
    assert!(
        done.stdout
            .contains("GET /books/n1: n_plus_one in 1/1 requests"),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout.contains("where the time went"),
        "{}",
        done.stdout
    );
}
