//! `--metrics-addr`: the fleet metrics (`sinks::metrics`) served at `/metrics` in the
//! OpenMetrics text format that Prometheus scrapes, encoded by `prometheus-client`.
//!
//! The listener has its own thread and runtime: a scrape encodes a snapshot there, never on the
//! agent thread. It binds loopback unless told otherwise (`--metrics-addr 0.0.0.0:9464`).

use std::{net::SocketAddr, sync::Arc, thread::JoinHandle, time::Duration};

use http_body_util::Full;
use hyper::{body::Bytes, service::service_fn, Request, Response, StatusCode};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit as PromUnit},
};

use super::metrics::{FleetMetrics, Kind, Unit, Value};

/// The default listen address: loopback, OpenTelemetry's Prometheus exporter port.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--metrics-addr {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the /metrics listener: {0}")]
    Start(std::io::Error),
}

/// Encodes the store's snapshot at each scrape.
#[derive(Debug)]
struct View(Arc<FleetMetrics>);

impl Collector for View {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.snapshot();
        for fam in &snapshot.families {
            let unit = fam.unit.map(|u| match u {
                Unit::Seconds => PromUnit::Seconds,
                Unit::Bytes => PromUnit::Bytes,
            });
            let kind = match fam.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut family = encoder.encode_descriptor(fam.name, fam.help, unit.as_ref(), kind)?;
            for p in &fam.points {
                let labels: Vec<(&str, &str)> =
                    p.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let mut m = family.encode_family(&labels)?;
                match (&p.value, fam.kind) {
                    (Value::Int(v), Kind::Counter) => {
                        m.encode_counter::<NoLabelSet, _, u64>(v, None)?;
                    }
                    (Value::Float(v), Kind::Counter) => {
                        m.encode_counter::<NoLabelSet, _, f64>(v, None)?;
                    }
                    (Value::Int(v), _) => m.encode_gauge(&(*v as i64))?,
                    (Value::Float(v), _) => m.encode_gauge(v)?,
                    (Value::Hist(h), _) => {
                        let buckets: Vec<(f64, u64)> = super::metrics::BUCKETS
                            .iter()
                            .copied()
                            .chain([f64::INFINITY])
                            .zip(h.buckets)
                            .collect();
                        m.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The registry holding the store's view.
pub fn registry(metrics: Arc<FleetMetrics>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(View(metrics)));
    r
}

/// The exposition text, as a scrape gets it.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        // Only a formatter error, which writing to a String does not produce.
        log::warn!("encoding /metrics: {e}");
    }
    out
}

/// The running listener; dropping it stops it.
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn start(addr: SocketAddr, metrics: Arc<FleetMetrics>) -> Result<Self, MetricsError> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| MetricsError::Bind { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(MetricsError::Start)?;
        let bound = listener.local_addr().map_err(MetricsError::Start)?;
        let registry = Arc::new(registry(metrics));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(listener, registry, rx))
            .map_err(MetricsError::Start)?;
        Ok(Self {
            addr: bound,
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slowtrace: /metrics listener: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("slowtrace: /metrics listener: {e}");
                return;
            }
        };
        loop {
            let conn = tokio::select! {
                _ = &mut stop => return,
                c = listener.accept() => c,
            };
            let Ok((stream, _)) = conn else { continue };
            let registry = registry.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let registry = registry.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&req, &registry)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(io, svc);
                let _ = conn.await;
            });
        }
    });
}

fn respond(req: &Request<hyper::body::Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET" | "HEAD", "/metrics") => (StatusCode::OK, CONTENT_TYPE, render(registry)),
        ("GET" | "HEAD", "/") => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "slowtrace agent: metrics at /metrics\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_units_and_buckets_as_prometheus_expects() {
        let m = Arc::new(FleetMetrics::new(1000, None));
        let mut r = crate::model::request::test_request();
        r.duration_us = 30_000;
        m.request(&r);
        let text = render(&registry(m));
        assert!(
            text.contains("# TYPE http_server_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains(
            "http_server_request_duration_seconds_bucket{le=\"0.05\",service_name=\"gunicorn\",http_request_method=\"GET\",http_route=\"/report\",http_response_status_code=\"200\"} 1"
        ), "{text}");
        assert!(text.contains(
            "http_server_request_duration_seconds_bucket{le=\"0.025\",service_name=\"gunicorn\",http_request_method=\"GET\",http_route=\"/report\",http_response_status_code=\"200\"} 0"
        ), "{text}");
        assert!(text.contains("slowtrace_requests_total 1"), "{text}");
        assert!(
            text.contains("slowtrace_kernel_total{counter=\"ring_full_drops\"} 0"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn the_listener_serves_metrics_and_refuses_other_paths() {
        let m = Arc::new(FleetMetrics::new(1000, None));
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), m).unwrap();
        let get = |path: &str| {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect(server.addr).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("slowtrace_requests_total 0"), "{ok}");
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
        let err = MetricsServer::start(server.addr, Arc::new(FleetMetrics::new(1, None)))
            .err()
            .expect("the port is taken");
        assert!(
            err.to_string().starts_with("--metrics-addr 127.0.0.1:"),
            "{err}"
        );
    }
}
