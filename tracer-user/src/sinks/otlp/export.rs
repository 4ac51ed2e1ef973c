//! The OTLP exporter thread: a bounded queue in front, batches out, retries with backoff, every
//! loss counted. The agent thread only ever `try_send`s: a collector that is down or slow fills
//! the queue, and what does not fit is dropped and counted (`slowtrace_lost_total{what=
//! "spans_queue_full"}`), never waited for.

use std::{
    collections::HashMap,
    sync::{
        atomic::Ordering,
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
            ExportMetricsServiceResponse,
        },
        trace::v1::{
            trace_service_client::TraceServiceClient, ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        },
    },
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message as _;

use super::{
    resource, scope,
    settings::{OtlpSettings, Protocol, Target},
    span::spans,
};
use crate::{
    model::{slow::SlowRequest, Request},
    sinks::metrics::FleetMetrics,
};

/// Spans per export request at most (OpenTelemetry's batch processor default).
const MAX_BATCH: usize = 512;
/// How long spans wait to fill a batch.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Retries of one batch, with backoff doubling from `FIRST_BACKOFF`.
const RETRIES: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The last batch at exit gets one attempt, this long at most: stopping stays fast.
const FINAL_TIMEOUT: Duration = Duration::from_secs(1);

/// What the agent hands over: a finished request, or a slow/killed one with its report.
pub enum Item {
    Request(Box<Request>),
    Slow(Box<SlowRequest>),
}

pub struct Exporter {
    tx: Option<SyncSender<Item>>,
    thread: Option<JoinHandle<()>>,
    done: Receiver<()>,
    metrics: Arc<FleetMetrics>,
}

impl Exporter {
    pub fn start(
        settings: OtlpSettings,
        metrics: Arc<FleetMetrics>,
        queue: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let (done_tx, done) = mpsc::channel();
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("otlp".into())
            .spawn(move || {
                run(&settings, &m, &rx);
                let _ = done_tx.send(());
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            done,
            metrics,
        })
    }

    /// Queue an item for export, or count it dropped if the queue is full.
    pub fn offer(&self, item: Item) {
        let Some(tx) = &self.tx else { return };
        let e = &self.metrics.export;
        match tx.try_send(item) {
            Ok(()) => {
                e.spans_queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                e.spans_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Flush what is queued (one attempt each) and stop; waits `grace` at most.
    pub fn finish(mut self, grace: Duration) {
        self.tx = None;
        if self.done.recv_timeout(grace).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        } else {
            // Still retrying: what it holds is lost, and counted so.
            let e = &self.metrics.export;
            let g = crate::sinks::metrics::ExportStats::get;
            let left = g(&e.spans_queued).saturating_sub(g(&e.spans_sent) + g(&e.spans_failed));
            e.spans_failed.fetch_add(left, Ordering::Relaxed);
            e.note_error(format!(
                "{left} spans still unsent after {grace:?} at exit (collector unreachable or slow)"
            ));
        }
    }
}

fn run(settings: &OtlpSettings, metrics: &FleetMetrics, rx: &Receiver<Item>) {
    let host = hostname();
    let mut traces = match Sender::new(&settings.traces) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("slowtrace: OTLP traces exporter: {e}");
            return;
        }
    };
    let mut metric_sender = settings
        .metrics
        .as_ref()
        .and_then(|t| match Sender::new(t) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("slowtrace: OTLP metrics exporter: {e}");
                None
            }
        });
    let mut batch: Vec<Item> = Vec::new();
    let mut next_flush = Instant::now() + BATCH_DELAY;
    let mut next_metrics = Instant::now() + settings.metrics_every;
    loop {
        let now = Instant::now();
        let wake = next_flush.min(next_metrics);
        let closed = match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(item) => {
                batch.push(item);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let now = Instant::now();
        if batch.len() >= MAX_BATCH || (now >= next_flush && !batch.is_empty()) || closed {
            send_batch(
                &mut traces,
                std::mem::take(&mut batch),
                settings,
                &host,
                metrics,
                closed,
            );
            next_flush = now + BATCH_DELAY;
        } else if now >= next_flush {
            next_flush = now + BATCH_DELAY;
        }
        if let Some(ms) = metric_sender.as_mut() {
            if closed || now >= next_metrics {
                let req = super::metrics::request(
                    &metrics.snapshot(),
                    metrics.started_unix_ns,
                    unix_now_ns(),
                    &host,
                    settings.service_name.as_deref(),
                    &settings.resource,
                );
                let e = &metrics.export;
                match ms.send_metrics(&req, closed) {
                    Ok(()) => e.metric_exports.fetch_add(1, Ordering::Relaxed),
                    Err(err) => {
                        e.note_error(format!("metrics: {err}"));
                        e.metric_exports_failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                next_metrics = now + settings.metrics_every;
            }
        }
        if closed {
            return;
        }
    }
}

fn send_batch(
    sender: &mut Sender,
    items: Vec<Item>,
    settings: &OtlpSettings,
    host: &str,
    metrics: &FleetMetrics,
    last: bool,
) {
    let n = items.len() as u64;
    // One resource per (service, executable); spans keep their order within it.
    let mut groups: HashMap<(String, String), Vec<Span>> = HashMap::new();
    for item in items {
        let (req, slow) = match &item {
            Item::Request(r) => (&**r, None),
            Item::Slow(s) => (&s.request, Some(&**s)),
        };
        let service = settings
            .service_name
            .clone()
            .unwrap_or_else(|| req.comm.clone());
        groups
            .entry((service, req.comm.clone()))
            .or_default()
            .extend(spans(req, slow));
    }
    let request = ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|((service, exe), spans)| ResourceSpans {
                resource: Some(resource(&service, Some(&exe), host, &settings.resource)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    };
    let e = &metrics.export;
    let mut backoff = FIRST_BACKOFF;
    for attempt in 0..=RETRIES {
        match sender.send_traces(&request, last) {
            Ok(rejected) => {
                e.batches_sent.fetch_add(1, Ordering::Relaxed);
                e.spans_sent
                    .fetch_add(n.saturating_sub(rejected), Ordering::Relaxed);
                if rejected > 0 {
                    e.spans_failed.fetch_add(rejected, Ordering::Relaxed);
                    e.note_error(format!("the collector rejected {rejected} spans"));
                }
                return;
            }
            Err(err) => {
                e.note_error(format!("traces: {err}"));
                if !err.retryable || last || attempt == RETRIES {
                    break;
                }
                e.retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(4));
            }
        }
    }
    e.batches_failed.fetch_add(1, Ordering::Relaxed);
    e.spans_failed.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct SendError {
    pub retryable: bool,
    pub msg: String,
}

/// One destination over one protocol.
enum Sender {
    Http {
        agent: ureq::Agent,
        target: Target,
    },
    Grpc {
        rt: tokio::runtime::Runtime,
        channel: tonic::transport::Channel,
        target: Target,
    },
}

impl Sender {
    fn new(target: &Target) -> Result<Self, SendError> {
        let fatal = |msg: String| SendError {
            retryable: false,
            msg,
        };
        Ok(match target.protocol {
            Protocol::HttpProtobuf => Sender::Http {
                agent: ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(target.timeout))
                    .build()
                    .into(),
                target: target.clone(),
            },
            Protocol::Grpc => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| fatal(e.to_string()))?;
                let endpoint = tonic::transport::Endpoint::from_shared(target.url.clone())
                    .map_err(|e| fatal(format!("{}: {e}", target.url)))?
                    .connect_timeout(target.timeout)
                    .timeout(target.timeout);
                let channel = {
                    let _in_runtime = rt.enter();
                    endpoint.connect_lazy()
                };
                Sender::Grpc {
                    rt,
                    channel,
                    target: target.clone(),
                }
            }
        })
    }

    /// Sends; Ok(spans the collector rejected).
    fn send_traces(
        &mut self,
        req: &ExportTraceServiceRequest,
        last: bool,
    ) -> Result<u64, SendError> {
        match self {
            Sender::Http { agent, target } => {
                let body = post(agent, target, req.encode_to_vec(), last)?;
                Ok(ExportTraceServiceResponse::decode(body.as_slice())
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map_or(0, |p| p.rejected_spans.max(0) as u64))
            }
            Sender::Grpc {
                rt,
                channel,
                target,
            } => {
                let mut client = TraceServiceClient::new(channel.clone());
                let request = grpc_request(req.clone(), target, last);
                let resp = rt.block_on(client.export(request)).map_err(grpc_error)?;
                Ok(resp
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| p.rejected_spans.max(0) as u64))
            }
        }
    }

    fn send_metrics(
        &mut self,
        req: &ExportMetricsServiceRequest,
        last: bool,
    ) -> Result<(), SendError> {
        match self {
            Sender::Http { agent, target } => {
                let body = post(agent, target, req.encode_to_vec(), last)?;
                let _ = ExportMetricsServiceResponse::decode(body.as_slice());
                Ok(())
            }
            Sender::Grpc {
                rt,
                channel,
                target,
            } => {
                let mut client = MetricsServiceClient::new(channel.clone());
                let request = grpc_request(req.clone(), target, last);
                rt.block_on(client.export(request)).map_err(grpc_error)?;
                Ok(())
            }
        }
    }
}

fn grpc_request<T>(msg: T, target: &Target, last: bool) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(if last {
        target.timeout.min(FINAL_TIMEOUT)
    } else {
        target.timeout
    });
    for (k, v) in &target.headers {
        if let (Ok(k), Ok(v)) = (
            k.to_ascii_lowercase()
                .parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            v.parse(),
        ) {
            r.metadata_mut().insert(k, v);
        }
    }
    r
}

fn grpc_error(s: tonic::Status) -> SendError {
    use tonic::Code;
    SendError {
        // The OTLP specification's retryable codes.
        retryable: matches!(
            s.code(),
            Code::Cancelled
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::OutOfRange
                | Code::Unavailable
                | Code::DataLoss
        ),
        msg: format!("gRPC {:?}: {}", s.code(), s.message()),
    }
}

fn post(
    agent: &ureq::Agent,
    target: &Target,
    body: Vec<u8>,
    last: bool,
) -> Result<Vec<u8>, SendError> {
    let (body, encoding) = if target.gzip {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = gz.write_all(&body);
        (gz.finish().unwrap_or_default(), Some("gzip"))
    } else {
        (body, None)
    };
    let mut req = agent
        .post(&target.url)
        .header("content-type", "application/x-protobuf");
    if let Some(enc) = encoding {
        req = req.header("content-encoding", enc);
    }
    for (k, v) in &target.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if last {
        req = req
            .config()
            .timeout_global(Some(target.timeout.min(FINAL_TIMEOUT)))
            .build();
    }
    let mut resp = req.send(&body[..]).map_err(|e| SendError {
        retryable: true,
        msg: format!("{}: {e}", target.url),
    })?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_vec().unwrap_or_default();
    if (200..300).contains(&status) {
        return Ok(body);
    }
    Err(SendError {
        // The OTLP/HTTP specification's retryable statuses.
        retryable: matches!(status, 429 | 502 | 503 | 504),
        msg: format!("{}: HTTP {status}", target.url),
    })
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
