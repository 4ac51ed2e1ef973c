//! Root test of `record --pprof`: gunicorn (two sync workers) serving two CPU-bound endpoints
//! under load, traced with `--flamegraph --pprof FILE`. FILE is decoded by protoc, the reference
//! protobuf compiler (Debian's protobuf-compiler), with google/pprof's own profile.proto
//! (vendored in tests/proto/), not by our code; then its per-endpoint shares of on-CPU samples
//! must match cpu.folded's, samples inside requests carry 16-hex-digit span ids, and the pid
//! labels are the workers'.
//!
//! The same run pushes to `--pyroscope` at a port where nothing listens (there is no
//! Pyroscope-compatible server to install here): every push fails, is counted and retried, and
//! tracing and the file are unaffected.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    process::{Command, Stdio},
};

use integration_tests::*;

const REQUESTS: &str = "400";

/// A protobuf text-format value as protoc prints it: a scalar (strings unquoted) or a message.
#[derive(Debug)]
enum Text {
    Scalar(String),
    Msg(Vec<(String, Text)>),
}

impl Text {
    fn fields(&self, name: &str) -> std::vec::IntoIter<&Text> {
        let v: &[(String, Text)] = match self {
            Text::Msg(v) => v,
            Text::Scalar(_) => &[],
        };
        let found: Vec<&Text> = v
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, t)| t)
            .collect();
        found.into_iter()
    }

    fn scalar(&self, name: &str) -> Option<&str> {
        self.fields(name).find_map(|t| match t {
            Text::Scalar(s) => Some(s.as_str()),
            Text::Msg(_) => None,
        })
    }

    fn num(&self, name: &str) -> i64 {
        self.scalar(name).map_or(0, |s| s.parse().unwrap())
    }
}

/// protoc's text output: one field per line, `name: value` or `name {` … `}`.
fn parse_text(out: &str) -> Text {
    let mut stack: Vec<(String, Vec<(String, Text)>)> = vec![(String::new(), Vec::new())];
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(name) = line.strip_suffix(" {") {
            stack.push((name.to_owned(), Vec::new()));
        } else if line == "}" {
            let (name, fields) = stack.pop().unwrap();
            stack.last_mut().unwrap().1.push((name, Text::Msg(fields)));
        } else {
            let (k, v) = line.split_once(": ").unwrap_or_else(|| panic!("{line}"));
            let v = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Some(q) => unescape(q),
                None => v.to_owned(),
            };
            stack
                .last_mut()
                .unwrap()
                .1
                .push((k.to_owned(), Text::Scalar(v)));
        }
    }
    assert_eq!(stack.len(), 1, "unbalanced protoc output");
    Text::Msg(stack.pop().unwrap().1)
}

/// C escapes as protoc writes them: `\n`, `\"`, `\\`, `\'` and octal bytes (`\302\265`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = b[i + 1];
        if c.is_ascii_digit() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap();
            out.push(u8::from_str_radix(oct, 8).unwrap());
            i += 4;
        } else {
            out.push(match c {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                other => other,
            });
            i += 2;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Decode a gzipped pprof file with protoc and google/pprof's profile.proto.
fn decode(path: &Path) -> Text {
    parse_text(&integration_tests::receivers::protoc_decode_pprof(path))
}

/// On-CPU samples by root frame (the endpoint, or `[no request]`) in cpu.folded.
fn folded_by_endpoint(path: &Path) -> BTreeMap<String, u64> {
    let mut by = BTreeMap::new();
    for l in std::fs::read_to_string(path).unwrap().lines() {
        let (stack, n) = l.rsplit_once(' ').unwrap();
        let root = stack.split(';').next().unwrap();
        *by.entry(root.to_owned()).or_default() += n.parse::<u64>().unwrap();
    }
    by
}

fn shares(by: &BTreeMap<String, u64>) -> BTreeMap<String, f64> {
    let total: u64 = by.values().sum();
    by.iter()
        .map(|(k, v)| (k.clone(), *v as f64 / total.max(1) as f64))
        .collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn pprof_file_decodes_and_matches_the_folded_profile() {
    require_root();
    let port = free_port();
    let ready = GunicornReady::default();
    let gunicorn = Proc::spawn(
        ready
            .configure(
                Command::new(venv().join("bin/gunicorn"))
                    .current_dir(repo().join("tests/servers"))
                    .args([
                        "--workers",
                        "2",
                        "--bind",
                        &format!("127.0.0.1:{port}"),
                        "--log-level",
                        "warning",
                    ]),
            )
            .arg("cpu_wsgi:app")
            .stdout(Stdio::null()),
    );
    let workers: HashSet<u32> = ready.workers(gunicorn.pid(), 2).into_iter().collect();
    let out = tempfile::tempdir().unwrap();
    let pprof = out.path().join("profile.pb.gz");
    let port_s = port.to_string();
    let closed = format!("http://127.0.0.1:{}", free_port());
    // 499 Hz as in profiling.rs: enough samples that every endpoint's count is solid.
    let trace = Trace::start(&[
        "--port",
        &port_s,
        "--flamegraph",
        "--threshold",
        "0",
        "--sample-hz",
        "499",
        "--pprof",
        pprof.to_str().unwrap(),
        "--pyroscope",
        &closed,
        "--pyroscope-every",
        "1s",
    ]);
    // One client per endpoint, at once; gunicorn's sync workers close each connection and
    // http.client opens the next.
    let clients: Vec<_> = ["/heavy", "/light"]
        .iter()
        .map(|path| {
            Command::new(python())
                .arg(server_script("keepalive_client.py"))
                .args([&port_s, REQUESTS, path])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    let done = trace.stop();
    assert!(done.success, "{}", done.stderr);
    assert!(done.stdout.contains("pprof: "), "{}", done.stdout);
    let push = done
        .stdout
        .lines()
        .find(|l| l.starts_with("pyroscope: "))
        .unwrap_or_else(|| panic!("no pyroscope line in\n{}", done.stdout));
    eprintln!("{push}");
    assert!(push.starts_with("pyroscope: 0 profiles pushed"), "{push}");
    let failed: u64 = push
        .split(", ")
        .find_map(|p| p.strip_suffix(" pushes failed (retried next period)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{push}"));
    assert!(failed >= 2, "{push}");

    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&pprof).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let p = decode(&pprof);
    let strings: Vec<&str> = p
        .fields("string_table")
        .map(|t| match t {
            Text::Scalar(s) => s.as_str(),
            Text::Msg(_) => panic!("string_table entry is a message"),
        })
        .collect();
    assert_eq!(strings.first(), Some(&""), "string_table[0] must be \"\"");
    let s = |i: i64| strings[usize::try_from(i).unwrap()];
    let types: Vec<(&str, &str)> = p
        .fields("sample_type")
        .map(|t| (s(t.num("type")), s(t.num("unit"))))
        .collect();
    assert_eq!(
        types,
        [
            ("samples", "count"),
            ("cpu", "nanoseconds"),
            ("wall", "nanoseconds")
        ]
    );
    let functions: BTreeMap<i64, &str> = p
        .fields("function")
        .map(|f| (f.num("id"), s(f.num("name"))))
        .collect();
    let locations: BTreeMap<i64, i64> = p
        .fields("location")
        .map(|l| {
            (
                l.num("id"),
                l.fields("line").next().unwrap().num("function_id"),
            )
        })
        .collect();

    let mut by_label: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_root: BTreeMap<String, u64> = BTreeMap::new();
    let (mut in_requests, mut with_span) = (0, 0);
    let mut pids = HashSet::new();
    let mut heavy_frames = 0;
    for sample in p.fields("sample") {
        let values: Vec<i64> = sample
            .fields("value")
            .map(|v| match v {
                Text::Scalar(x) => x.parse().unwrap(),
                Text::Msg(_) => panic!(),
            })
            .collect();
        assert_eq!(values.len(), 3);
        let n = u64::try_from(values[0]).unwrap();
        // cpu ns = samples × the period of 499 Hz.
        assert_eq!(values[1], values[0] * (1_000_000_000 / 499));
        let labels: BTreeMap<&str, &str> = sample
            .fields("label")
            .map(|l| (s(l.num("key")), s(l.num("str"))))
            .collect();
        let stack: Vec<&str> = sample
            .fields("location_id")
            .map(|id| match id {
                Text::Scalar(x) => functions[&locations[&x.parse::<i64>().unwrap()]],
                Text::Msg(_) => panic!(),
            })
            .collect();
        let root = *stack.last().unwrap();
        if stack.contains(&"heavy") {
            heavy_frames += n;
            assert_eq!(root, "GET /heavy");
        }
        *by_root.entry(root.to_owned()).or_default() += n;
        let endpoint = labels.get("endpoint").copied().unwrap_or("[no request]");
        assert_eq!(endpoint, root, "the endpoint label names the root frame");
        *by_label.entry(endpoint.to_owned()).or_default() += n;
        if let Some(pid) = labels.get("pid") {
            pids.insert(pid.parse::<u32>().unwrap());
        }
        if labels.contains_key("endpoint") {
            in_requests += n;
            let Some(span) = labels.get("span_id") else {
                continue;
            };
            with_span += n;
            assert!(
                span.len() == 16 && span.chars().all(|c| c.is_ascii_hexdigit()),
                "span_id {span:?}"
            );
            assert_eq!(labels.get("profile_id"), Some(span));
            let pid: u32 = labels["pid"].parse().unwrap();
            assert!(
                workers.contains(&pid),
                "request sample of pid {pid}, not a worker {workers:?}"
            );
        }
    }
    eprintln!("pprof samples by endpoint {by_label:?}; pids {pids:?}");
    assert!(heavy_frames > 0, "no sample in heavy()");
    assert!(
        in_requests >= 200,
        "too few samples inside requests: {in_requests}"
    );
    assert_eq!(
        with_span, in_requests,
        "every sample inside a request has its span id"
    );
    assert!(
        workers.iter().all(|w| pids.contains(w)),
        "pid labels {pids:?} miss a worker of {workers:?}"
    );
    let folded = folded_by_endpoint(&done.dir.join("cpu.folded"));
    eprintln!("cpu.folded samples by endpoint {folded:?}");
    assert_eq!(by_root, by_label);
    let (a, b) = (shares(&by_label), shares(&folded));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same endpoints"
    );
    for (k, share) in &a {
        assert!(
            (share - b[k]).abs() <= 0.01,
            "{k}: {:.2} % of the pprof samples, {:.2} % of cpu.folded's",
            share * 100.0,
            b[k] * 100.0
        );
    }
    assert!(a["GET /heavy"] > a["GET /light"]);
}
