//! Root test: `record` and `top` are two sets of outputs of one pipeline. The same workload
//! traced by each gives the same files with the same fields, the app frame that made a slow
//! request's calls (`downstream.site`) included in slow.jsonl and findings.jsonl.

use std::{collections::BTreeSet, path::Path, time::Duration};

use integration_tests::{tmux::Tmux, *};
use serde_json::Value;

/// Every key path of a JSON value (`downstream.peers.[].top.[].calls`), arrays folded. Inside
/// a capture the fields depend on the moment it was taken (`syscall` only when the thread was
/// blocked in one), so captures count as one field.
fn shape(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = format!("{prefix}{k}");
                out.insert(p.clone());
                if p != "captures" {
                    shape(v, &format!("{p}."), out);
                }
            }
        }
        Value::Array(a) => {
            for v in a {
                shape(v, &format!("{prefix}[]."), out);
            }
        }
        _ => {}
    }
}

/// Files (and the slow/ directory) of an output directory, and the key shape of each jsonl.
fn outputs(dir: &Path) -> Vec<(String, BTreeSet<String>, usize)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "command.log")
        .map(|name| {
            let mut keys = BTreeSet::new();
            let mut lines = 0;
            if name.ends_with(".jsonl") {
                for r in read_records(&dir.join(&name)) {
                    shape(&r, "", &mut keys);
                    lines += 1;
                }
            }
            (name, keys, lines)
        })
        .collect();
    v.sort();
    v
}

fn site_of(records: &[Value], endpoint: &str) -> Option<String> {
    records
        .iter()
        .find(|r| r["endpoint"] == endpoint)
        .and_then(|r| r["downstream"]["site"].as_str().map(str::to_owned))
}

/// The workload: a slow N+1 (captured while it runs) and a fast one.
fn workload(port: u16) {
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for p in ["/books/n1slow", "/books/n1"] {
        assert_eq!(curl(&[url(p)]), [200], "{p}");
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn record_and_top_write_the_same_files_with_the_same_fields() {
    require_root();
    let pg = backends::Postgres::start();
    let (_redis, redis_port) = backends::redis();
    let (_app, port) = backends::downstream_app(&[
        ("PGPORT", pg.port.to_string()),
        ("REDIS_PORT", redis_port.to_string()),
        ("MEMCACHED_PORT", "1".into()),
    ]);

    // record
    let trace = Trace::start(&["--port", &port.to_string(), "--threshold", "200ms"]);
    workload(port);
    let recorded = trace.stop();
    assert!(recorded.success, "{}", recorded.stderr);

    // top, exported with --export, quit with q
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    let status = tmp.path().join("status");
    let shell = format!(
        "{} top --port {port} --threshold 200ms --export {}; echo \"exit=$?\" > {}; sleep 60",
        slowtrace_bin().display(),
        export.display(),
        status.display()
    );
    let tmux = Tmux::start("pipeline", 160, 48, &shell);
    tmux.wait_for(Duration::from_secs(60), |s| {
        s.contains("slowtrace top") && s.contains("Endpoints")
    })
    .unwrap_or_else(|s| panic!("the dashboard did not come up:\n{s}"));
    workload(port);
    // The slow request comes out once its captures are in; then quit.
    wait_until(Duration::from_secs(20), "top's slow.jsonl line", || {
        std::fs::read_to_string(export.join("slow.jsonl")).is_ok_and(|s| s.lines().count() >= 1)
    });
    tmux.keys("q");
    wait_until(Duration::from_secs(30), "top to exit after q", || {
        std::fs::read_to_string(&status).is_ok_and(|s| s.ends_with('\n'))
    });
    let exit = std::fs::read_to_string(&status).unwrap();
    assert_eq!(exit.trim(), "exit=0", "{}", tmux.screen());

    let from_record = outputs(&recorded.dir);
    let from_top = outputs(&export);
    let names = |v: &[(String, BTreeSet<String>, usize)]| -> Vec<String> {
        v.iter().map(|(n, _, _)| n.clone()).collect()
    };
    assert_eq!(names(&from_record), names(&from_top), "the same files");
    for ((name, keys_r, lines_r), (_, keys_t, lines_t)) in from_record.iter().zip(&from_top) {
        assert_eq!(keys_r, keys_t, "{name}: the same fields");
        assert_eq!(lines_r, lines_t, "{name}: the same number of lines");
    }

    // The slow N+1's site, in every output of both commands.
    for (what, dir) in [
        ("record", recorded.dir.as_path()),
        ("top", export.as_path()),
    ] {
        let requests = read_records(&dir.join("requests.jsonl"));
        let site = site_of(&requests, "GET /books/n1slow")
            .unwrap_or_else(|| panic!("{what}: no site in requests.jsonl: {requests:#?}"));
        assert!(site.contains("downstream_app.py:"), "{what}: {site}");
        let slow = read_records(&dir.join("slow.jsonl"));
        assert_eq!(
            site_of(&slow, "GET /books/n1slow").as_deref(),
            Some(site.as_str()),
            "{what}: slow.jsonl"
        );
        let findings = read_records(&dir.join("findings.jsonl"));
        assert!(
            findings
                .iter()
                .any(|l| l["endpoint"] == "GET /books/n1slow" && l["site"] == site.as_str()),
            "{what}: findings.jsonl {findings:#?}"
        );
    }
}
