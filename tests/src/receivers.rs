//! The real receivers the fleet tests export to, installed by `cargo xtask setup`: Prometheus
//! from Debian (scrapes the agent's /metrics, answers PromQL over HTTP) and Arize Phoenix from
//! PyPI (an OTLP trace backend: OTLP/HTTP and gRPC in, SQLite storage, a REST API out). Each is
//! started by the test on free loopback ports with its data in a temporary directory.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{free_port, repo, wait_for, Proc};

/// The venv `cargo xtask setup` installs Phoenix into.
pub fn phoenix_venv() -> PathBuf {
    std::env::var_os("SLOWTRACE_PHOENIX_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/venv-phoenix"))
}

/// `curl -s URL` (GET, with `--data-urlencode` pairs when given): the body, or None when the
/// server did not answer 2xx.
pub fn http_get(url: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut c = Command::new("curl");
    c.args(["-s", "-f", "--max-time", "10"]);
    if !params.is_empty() {
        c.arg("--get");
        for (k, v) in params {
            c.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
    }
    let out = c.arg(url).stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Phoenix {
    _proc: Proc,
    _dir: tempfile::TempDir,
    pub http_port: u16,
    pub grpc_port: u16,
}

impl Phoenix {
    /// Start Phoenix and wait (up to 2 minutes: its first start migrates its database) until
    /// its REST API answers.
    pub fn start() -> Phoenix {
        let bin = phoenix_venv().join("bin/phoenix");
        assert!(
            bin.exists(),
            "{} missing: run cargo xtask setup",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let (http_port, grpc_port) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("phoenix.log")).unwrap();
        let proc = Proc::spawn(
            Command::new(bin)
                .arg("serve")
                .env("PHOENIX_WORKING_DIR", dir.path())
                .env("PHOENIX_HOST", "127.0.0.1")
                .env("PHOENIX_PORT", http_port.to_string())
                .env("PHOENIX_GRPC_PORT", grpc_port.to_string())
                .env("PHOENIX_TELEMETRY_ENABLED", "false")
                .stdout(Stdio::null())
                .stderr(log),
        );
        let p = Phoenix {
            _proc: proc,
            _dir: dir,
            http_port,
            grpc_port,
        };
        wait_for(Duration::from_secs(120), "Phoenix to answer", || {
            http_get(&format!("{}/v1/projects", p.base()), &[])
        });
        p
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Every span of the default project, through the REST API (all pages).
    pub fn spans(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut params = vec![("limit", "1000".to_owned())];
            if let Some(c) = &cursor {
                params.push(("cursor", c.clone()));
            }
            let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let Some(body) = http_get(&format!("{}/v1/projects/default/spans", self.base()), &p)
            else {
                return out;
            };
            let v: Value = serde_json::from_str(&body).unwrap();
            out.extend(v["data"].as_array().cloned().unwrap_or_default());
            match v["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                _ => return out,
            }
        }
    }
}

pub struct Prometheus {
    _proc: Proc,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Prometheus {
    /// Start Prometheus scraping `target` (HOST:PORT) every second.
    pub fn start(target: &str) -> Prometheus {
        assert!(
            crate::backends::installed("prometheus"),
            "prometheus missing: run cargo xtask setup"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
                 - job_name: slowtrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let proc = Proc::spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(log),
        );
        let p = Prometheus {
            _proc: proc,
            _dir: dir,
            port,
        };
        wait_for(Duration::from_secs(60), "Prometheus to answer", || {
            http_get(&format!("http://127.0.0.1:{port}/-/ready"), &[])
        });
        p
    }

    /// An instant PromQL query: the result vector (`data.result`).
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let body = http_get(
            &format!("http://127.0.0.1:{}/api/v1/query", self.port),
            &[("query", promql)],
        )
        .unwrap_or_else(|| panic!("PromQL {promql}: no answer"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// `query`'s samples as (the value of `label`, number).
    pub fn by_label(&self, promql: &str, label: &str) -> Vec<(String, f64)> {
        self.query(promql)
            .iter()
            .map(|r| {
                (
                    r["metric"][label].as_str().unwrap_or("").to_owned(),
                    r["value"][1].as_str().unwrap().parse::<f64>().unwrap(),
                )
            })
            .collect()
    }
}

/// A gzipped pprof file as protoc's text format, decoded with google/pprof's profile.proto
/// (vendored in tests/proto): the standard decoder, not ours.
pub fn protoc_decode_pprof(path: &std::path::Path) -> String {
    let raw = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("gzip");
    assert!(raw.status.success(), "{} is not gzip", path.display());
    let proto = repo().join("tests/proto");
    let mut protoc = Command::new("protoc")
        .arg("--decode=perftools.profiles.Profile")
        .arg("-I")
        .arg(&proto)
        .arg(proto.join("profile.proto"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("protoc (Debian protobuf-compiler; cargo xtask setup installs it)");
    let mut stdin = protoc.stdin.take().unwrap();
    let bytes = raw.stdout;
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &bytes));
    let out = protoc.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "protoc could not decode {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
