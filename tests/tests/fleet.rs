//! Root tests of `slowtrace agent` against real receivers started from the package registries:
//! Prometheus (Debian) scraping /metrics and answering PromQL, Arize Phoenix (PyPI) receiving
//! OTLP spans over HTTP and gRPC and answering through its REST API, and a collector that is
//! down. The agent also writes `record`'s files (`-o`), the reference its exports must match.

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{backends, receivers::*, *};
use serde_json::Value;

/// tests/servers/wsgi_app.py under gunicorn, 2 sync workers.
fn wsgi_app() -> (Proc, u16) {
    let port = free_port();
    let app = Proc::spawn(
        Command::new(venv().join("bin/gunicorn"))
            .args(["--workers", "2", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--log-level", "warning", "--chdir"])
            .arg(server_script(""))
            .arg("wsgi_app:app")
            .stdout(Stdio::null()),
    );
    wait_port(port);
    (app, port)
}

/// The duration histogram's bucket bounds, as the agent exports them (seconds).
const BOUNDS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    30.0, 60.0,
];

fn bucket_of(secs: f64) -> usize {
    BOUNDS.partition_point(|b| *b < secs)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn prometheus_scrapes_exact_counts_and_p50s() {
    require_root();
    let (_app, port) = wsgi_app();
    let metrics_port = free_port();
    let trace = Trace::start_agent(&[
        "--port",
        &port.to_string(),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    let prom = Prometheus::start(&format!("127.0.0.1:{metrics_port}"));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let mut urls = Vec::new();
    urls.extend((0..40).map(|_| url("/a")));
    urls.extend((0..25).map(|_| url("/sleep?ms=30")));
    urls.extend((0..10).map(|_| url("/sleep?ms=120")));
    urls.extend((0..5).map(|_| url("/missing")));
    let statuses = curl(&urls);
    assert_eq!(statuses.len(), 80);
    let total = 80.0;
    trace.wait_records("requests.jsonl", "80 requests", |r| r.len() >= 80);
    // Prometheus scrapes every second: wait for a scrape that saw them all.
    let start = Instant::now();
    while prom
        .by_label("sum(slowtrace_requests_total)", "")
        .first()
        .map_or(0.0, |v| v.1)
        < total
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Prometheus never scraped all 80 requests"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Everything is asked of Prometheus while the agent still runs: once it is gone, the next
    // failed scrape marks its series stale and instant queries return nothing.
    let records = trace.records_now();

    // The reference: record's per-request lines, per endpoint.
    let mut durations: HashMap<String, Vec<f64>> = HashMap::new();
    for r in &records {
        let ep = r["endpoint"].as_str().unwrap();
        let route = ep.split_once(' ').map_or(ep, |(_, r)| r).to_owned();
        durations
            .entry(route)
            .or_default()
            .push(r["duration_us"].as_f64().unwrap() / 1e6);
    }
    let counts: HashMap<String, f64> = prom
        .by_label(
            "sum by (http_route) (http_server_request_duration_seconds_count)",
            "http_route",
        )
        .into_iter()
        .collect();
    eprintln!("PromQL counts by route: {counts:?}");
    for (route, expected) in [("/a", 40.0), ("/sleep", 35.0), ("/missing", 5.0)] {
        assert_eq!(counts.get(route), Some(&expected), "{route}: {counts:?}");
        assert_eq!(durations[route].len() as f64, expected, "record's {route}");
    }
    let p50s: HashMap<String, f64> = prom
        .by_label(
            "histogram_quantile(0.5, sum by (le, http_route) \
             (http_server_request_duration_seconds_bucket))",
            "http_route",
        )
        .into_iter()
        .collect();
    eprintln!("PromQL p50 by route: {p50s:?}");
    for (route, d) in &mut durations {
        d.sort_by(f64::total_cmp);
        let record_p50 = d[(d.len() - 1) / 2];
        let prom_p50 = p50s[route];
        let (a, b) = (bucket_of(record_p50), bucket_of(prom_p50));
        assert!(
            a.abs_diff(b) <= 1,
            "{route}: record's p50 {record_p50} s (bucket {a}), Prometheus' {prom_p50} s (bucket {b})"
        );
    }
    let status = prom.by_label(
        "sum by (http_response_status_code) (http_server_request_duration_seconds_count)",
        "http_response_status_code",
    );
    assert!(
        status.contains(&("404".to_owned(), 5.0)),
        "status codes: {status:?}"
    );
    // Every loss counter is exported, and none counted anything here.
    let lost = prom.by_label("slowtrace_lost_total", "what");
    assert!(lost.len() >= 9, "{lost:?}");
    assert!(lost.iter().all(|(_, v)| *v == 0.0), "{lost:?}");
    let rss = prom.by_label("process_resident_memory_bytes", "");
    assert!(rss[0].1 > 1e6 && rss[0].1 < 1e9, "{rss:?}");
    // SIGUSR1: a status line now (the next one is due in 5 minutes).
    // SAFETY: signalling our child.
    unsafe { libc::kill(trace.pid() as i32, libc::SIGUSR1) };
    std::thread::sleep(Duration::from_millis(800));
    let done = trace.stop_with(libc::SIGTERM);
    assert!(done.success, "{}", done.stderr);
    assert!(
        done.stderr.contains("agent stopped by SIGTERM"),
        "{}",
        done.stderr
    );
    let status: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.contains("slowtrace: status after"))
        .collect();
    assert_eq!(
        status.len(),
        2,
        "one on SIGUSR1, one at exit: {}",
        done.stderr
    );
    assert!(status[0].contains(" 80 requests;"), "{}", status[0]);
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn events<'a>(span: &'a Value, name: &str) -> Vec<&'a Value> {
    span["events"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["name"] == name).collect())
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn otlp_spans_reach_phoenix_over_http_and_grpc() {
    require_root();
    let phoenix = Phoenix::start();
    let pg = backends::Postgres::start();
    let lock = tempfile::NamedTempFile::new().unwrap();
    let (app, port) = backends::downstream_app(&[
        ("PGPORT", pg.port.to_string()),
        ("SLOWTRACE_LOCK", lock.path().display().to_string()),
    ]);
    let workers = wait_for(Duration::from_secs(60), "gunicorn's 2 workers", || {
        let w = children(app.pid());
        (w.len() == 2).then_some(w)
    });
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    // OTLP/HTTP, every request sampled; the profile too, to match its samples with the spans.
    let pprof_dir = tempfile::tempdir().unwrap();
    let pprof = pprof_dir.path().join("agent.pb.gz");
    let trace = Trace::start_agent(&[
        "--port",
        &port.to_string(),
        "--threshold",
        "200ms",
        "--metrics-addr",
        "off",
        "--sample-ratio",
        "1",
        "--no-otlp-metrics",
        "--otlp-endpoint",
        &phoenix.base(),
        "--pprof",
        pprof.to_str().unwrap(),
    ]);
    let mut sent = 0;
    for p in ["/books/joined", "/books/n1", "/books/n1slow", "/cpu?s=0.3"] {
        assert_eq!(curl(&[url(p)]), [200], "{p}");
        sent += 1;
    }
    // A worker killed mid-request: the span carries the kill.
    let victim = std::thread::spawn({
        let u = url("/lock?hold=30");
        move || curl(&[u])
    });
    let pid = wait_for(
        Duration::from_secs(10),
        "the /lock worker to hold the lock",
        || flock_holder(lock.path()),
    );
    assert!(
        workers.contains(&(pid as u32)),
        "{pid} is not a worker of {workers:?}"
    );
    // SAFETY: killing the test's own gunicorn worker.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = victim.join();
    sent += 1;
    trace.wait_records("slow.jsonl", "the killed GET /lock", |s| {
        s.iter().any(|s| s["endpoint"] == "GET /lock")
    });
    let done = trace.stop_with(libc::SIGTERM);
    assert!(done.success, "{}", done.stderr);
    assert_eq!(
        done.records.len(),
        sent,
        "record's view: {:#?}",
        done.records
    );

    let servers = |spans: &[Value]| -> Vec<Value> {
        spans
            .iter()
            .filter(|s| s["parent_id"].is_null())
            .cloned()
            .collect()
    };
    let spans = wait_for(
        Duration::from_secs(30),
        "Phoenix to store the spans",
        || {
            let s = phoenix.spans();
            (servers(&s).len() >= sent).then_some(s)
        },
    );
    let server = servers(&spans);
    assert_eq!(server.len(), sent, "one server span per request");
    eprintln!(
        "one span as Phoenix returned it: {}",
        serde_json::to_string_pretty(
            server
                .iter()
                .find(|s| s["name"] == "GET /books/n1slow")
                .unwrap()
        )
        .unwrap()
    );
    let by_name = |n: &str| -> &Value {
        server
            .iter()
            .find(|s| s["name"] == n)
            .unwrap_or_else(|| panic!("no span {n}: {server:#?}"))
    };
    // Attributes, for every server span.
    for s in &server {
        let method = attr(s, "http.request.method");
        assert_eq!(method, "GET", "{s:#}");
        assert!(
            attr(s, "http.route").as_str().unwrap().starts_with('/'),
            "{s:#}"
        );
        assert_eq!(
            attr(s, "server.port").as_u64(),
            Some(u64::from(port)),
            "{s:#}"
        );
        assert_eq!(attr(s, "client.address"), "127.0.0.1", "{s:#}");
        let pid = attr(s, "process.pid").as_u64().unwrap() as u32;
        assert!(workers.contains(&pid), "pid {pid} not a worker: {s:#}");
        assert!(attr(s, "thread.id").as_u64().is_some(), "{s:#}");
    }
    assert_eq!(
        attr(by_name("GET /books/joined"), "http.response.status_code"),
        200
    );
    // The span's duration is the record's.
    let rec = done.with_endpoint("GET /books/joined")[0];
    let sp = by_name("GET /books/joined");
    let parse = |t: &Value| -> f64 {
        // "2026-12-07T02:34:02.023429+00:00": the time of day is enough here.
        let t = t.as_str().unwrap();
        t[17..26].parse::<f64>().unwrap()
            + 60.0 * t[14..16].parse::<f64>().unwrap()
            + 3600.0 * t[11..13].parse::<f64>().unwrap()
    };
    let dur_ms = (parse(&sp["end_time"]) - parse(&sp["start_time"])) * 1e3;
    let rec_ms = rec["duration_us"].as_f64().unwrap() / 1e3;
    assert!(
        (dur_ms - rec_ms).abs() < 0.01,
        "span {dur_ms} ms, record {rec_ms} ms"
    );

    // The slow N+1: a capture naming the view and line, the finding, client spans to Postgres.
    let slow = by_name("GET /books/n1slow");
    let caps = events(slow, "slowtrace.capture");
    assert!(!caps.is_empty(), "{slow:#}");
    let line = mark("downstream_app.py", "n1slow");
    // The view at the marked line, or at the sleep after it in the loop (innermost, or above
    // the ORM's frames when the capture caught a query).
    let at_view = |c: &&Value| {
        let tb = c["attributes"]["slowtrace.python.traceback"]
            .as_str()
            .unwrap_or("");
        [line, line + 1].iter().any(|l| {
            tb.contains(&format!(
                "downstream_app.py\", line {l}, in books_n_plus_one_slow\n"
            ))
        })
    };
    assert!(
        caps.iter().any(at_view),
        "no capture at books_n_plus_one_slow line {line}: {caps:#?}"
    );
    // Each traceback ends with its capture's innermost frame (a long one is cut at the outer
    // end), and the view is in it.
    for c in &caps {
        let a = &c["attributes"];
        let tb = a["slowtrace.python.traceback"].as_str().unwrap();
        let innermost = a["code.function.name"].as_str().unwrap();
        let line = &a["code.line.number"];
        assert!(
            tb.ends_with(&format!(", line {line}, in {innermost}\n")),
            "the innermost frames are kept: {tb}"
        );
        assert!(tb.contains(", in books_n_plus_one_slow\n"), "{tb}");
    }
    let finds = events(slow, "slowtrace.finding");
    assert!(
        finds
            .iter()
            .any(|f| f["attributes"]["slowtrace.finding.kind"] == "n_plus_one"),
        "{slow:#}"
    );
    let n1 = by_name("GET /books/n1");
    assert!(
        events(n1, "slowtrace.finding")
            .iter()
            .any(|f| f["attributes"]["slowtrace.finding.kind"] == "n_plus_one"),
        "{n1:#}"
    );
    let children: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parent_id"] == n1["context"]["span_id"])
        .collect();
    let round_trips = rec_of(&done, "GET /books/n1")["downstream"]["round_trips"]
        .as_u64()
        .unwrap();
    let folded: u64 = children
        .iter()
        .map(|c| attr(c, "slowtrace.round_trips").as_u64().unwrap_or(1))
        .sum();
    assert_eq!(
        folded, round_trips,
        "client spans stand for every round trip"
    );
    assert!(
        children.len() <= 40,
        "past the cap they are folded: {}",
        children.len()
    );
    assert!(children
        .iter()
        .all(|c| attr(c, "db.system.name") == "postgresql"
            && attr(c, "server.port").as_u64() == Some(u64::from(pg.port))));
    assert!(children.iter().any(|c| attr(c, "db.query.summary")
        .as_str()
        .unwrap()
        .starts_with("SELECT")));

    // The CPU-bound request's samples in the pprof file carry its span's id (~30 samples at
    // 99 Hz): one request picked out of the profile by the id of its span.
    let cpu_span = by_name("GET /cpu")["context"]["span_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let decoded = protoc_decode_pprof(&pprof);
    assert!(
        decoded.contains(&format!("string_table: \"{cpu_span}\"")),
        "span id {cpu_span} of GET /cpu not among the pprof labels"
    );

    // The killed worker's request.
    let killed = by_name("GET /lock");
    let kill = events(killed, "slowtrace.kill");
    assert_eq!(kill.len(), 1, "{killed:#}");
    assert_eq!(kill[0]["attributes"]["signal"], "SIGKILL", "{killed:#}");
    assert_eq!(killed["status_code"], "ERROR", "{killed:#}");

    // gRPC: a few more requests, to Phoenix's gRPC port.
    let trace = Trace::start_agent(&[
        "--port",
        &port.to_string(),
        "--metrics-addr",
        "off",
        "--sample-ratio",
        "1",
        "--no-otlp-metrics",
        "--otlp-protocol",
        "grpc",
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{}", phoenix.grpc_port),
        "--service-name",
        "books-grpc",
    ]);
    for _ in 0..3 {
        assert_eq!(curl(&[url("/books/joined")]), [200]);
    }
    trace.wait_records("requests.jsonl", "3 requests", |r| r.len() >= 3);
    let done = trace.stop_with(libc::SIGINT);
    assert!(done.success, "{}", done.stderr);
    let all = wait_for(Duration::from_secs(30), "the gRPC spans", || {
        let s = servers(&phoenix.spans());
        (s.len() >= sent + 3).then_some(s)
    });
    assert_eq!(all.len(), sent + 3, "three more server spans, over gRPC");
}

fn rec_of<'a>(done: &'a Finished, endpoint: &str) -> &'a Value {
    done.with_endpoint(endpoint)[0]
}

/// The resident memory of `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    s.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_collector_that_is_down_drops_counted_spans_and_tracing_goes_on() {
    require_root();
    let (_app, port) = wsgi_app();
    let metrics_port = free_port();
    // Nothing listens there: every export fails at once, and retries back off.
    let dead = free_port();
    let trace = Trace::start_agent(&[
        "--port",
        &port.to_string(),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        "--sample-ratio",
        "1",
        "--otlp-queue",
        "64",
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{dead}"),
    ]);
    let url = format!("http://127.0.0.1:{port}/a");
    let mut sent = 0;
    let mut rss_after_warmup = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        let urls: Vec<String> = (0..200).map(|_| url.clone()).collect();
        assert!(curl(&urls).iter().all(|s| *s == 200));
        sent += 200;
        if rss_after_warmup == 0 && start.elapsed() > Duration::from_secs(2) {
            rss_after_warmup = rss(trace.pid());
        }
    }
    trace.wait_records("requests.jsonl", "every request", |r| r.len() >= sent);
    let metrics = http_get(&format!("http://127.0.0.1:{metrics_port}/metrics"), &[]).unwrap();
    let rss_end = rss(trace.pid());
    let stopping = Instant::now();
    let done = trace.stop_with(libc::SIGTERM);
    let stop_took = stopping.elapsed();
    assert!(done.success, "{}", done.stderr);
    // Tracing went on: every request recorded.
    assert_eq!(done.records.len(), sent);
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
    };
    assert_eq!(value("slowtrace_requests_total "), sent as f64);
    assert_eq!(value("slowtrace_export_spans_total{outcome=\"sent\"}"), 0.0);
    // The final status line accounts for every span: none sent, each dropped or failed.
    let last = done
        .stderr
        .lines()
        .rfind(|l| l.starts_with("slowtrace: status after"))
        .unwrap_or_else(|| panic!("no status line: {}", done.stderr));
    let number_before = |what: &str| -> u64 {
        let i = last
            .find(what)
            .unwrap_or_else(|| panic!("{what} in {last}"));
        last[..i]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (sent_spans, dropped, failed) = (
        number_before(" sent,"),
        number_before(" dropped (queue full)"),
        number_before(" failed;"),
    );
    eprintln!(
        "{sent} requests; spans: {dropped} dropped (queue full), {failed} failed, {sent_spans} \
         sent; RSS {rss_after_warmup} → {rss_end} bytes; stop took {stop_took:?}"
    );
    assert_eq!(sent_spans, 0);
    assert!(
        dropped > 0,
        "a 64-span queue in front of a dead collector overflows"
    );
    assert_eq!(
        dropped + failed,
        sent as u64,
        "every span is counted: {last}"
    );
    assert!(done.stderr.contains("last export error"), "{}", done.stderr);
    assert!(
        rss_end < rss_after_warmup + rss_after_warmup / 5,
        "RSS grew from {rss_after_warmup} to {rss_end} with the collector down"
    );
    assert!(
        stop_took < Duration::from_secs(6),
        "stopping took {stop_took:?}"
    );
}

/// CAP_* names of a capability line of the shipped systemd unit.
fn unit_capabilities(key: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(repo().join("docs/deploy/slowtrace-agent.service")).unwrap();
    unit.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in the unit"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_agent_works_with_only_the_capabilities_of_its_systemd_unit() {
    require_root();
    let caps = unit_capabilities("CapabilityBoundingSet=");
    assert_eq!(caps, unit_capabilities("AmbientCapabilities="));
    let setpriv_caps: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let (_app, port) = wsgi_app();
    let metrics_port = free_port();
    let out = tempfile::tempdir().unwrap();
    let mut agent = Proc::spawn(
        Command::new("setpriv")
            .arg(format!("--bounding-set=-all,{}", setpriv_caps.join(",")))
            .arg("--inh-caps=-all")
            .arg(slowtrace_bin())
            .args(["agent", "--port", &port.to_string(), "--threshold", "200ms"])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .arg("-o")
            .arg(out.path())
            .stderr(Stdio::piped()),
    );
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    wait_for(Duration::from_secs(60), "the agent's /metrics", || {
        http_get(&metrics, &[])
    });
    // It holds exactly the unit's capabilities, nothing more.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    let bit = |name: &str| -> u64 {
        1 << match name {
            "CAP_DAC_READ_SEARCH" => 2,
            "CAP_SYS_PTRACE" => 19,
            "CAP_SYSLOG" => 34,
            "CAP_PERFMON" => 38,
            "CAP_BPF" => 39,
            other => panic!("unknown capability {other} in the unit"),
        }
    };
    assert_eq!(
        eff,
        caps.iter().map(|c| bit(c)).fold(0, |a, b| a | b),
        "CapEff {eff:x}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    assert_eq!(
        curl(&[url("/a"), url("/a"), url("/sleep?ms=400")]),
        [200, 200, 200]
    );
    wait_for(
        Duration::from_secs(30),
        "the three requests on /metrics",
        || http_get(&metrics, &[]).filter(|m| m.contains("slowtrace_requests_total 3")),
    );
    // SAFETY: signalling our child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // The slow request was captured with its Python frames: the target's memory was readable.
    let slow: Vec<std::path::PathBuf> = std::fs::read_dir(out.path().join("slow"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    assert_eq!(slow.len(), 1, "{slow:?}");
    let report = std::fs::read_to_string(&slow[0]).unwrap();
    assert!(report.contains("wsgi_app.py\", line"), "{report}");
}
