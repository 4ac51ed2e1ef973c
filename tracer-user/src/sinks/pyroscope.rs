//! `--pyroscope URL`: each period's profile pushed to a Pyroscope-compatible server with its HTTP
//! ingest API (`POST URL/ingest?name=APP&from=S&until=S&format=pprof`, the body a gzipped pprof
//! profile; the server takes the application name as a prefix and the profile type from the
//! pprof sample types).
//!
//! Pushes run on their own thread behind a bounded queue: the profiler hands a period over and
//! goes on; a slow or dead server never slows tracing. A push that fails stays queued and is
//! tried again when the next period comes (a few at most; beyond, the oldest is dropped), and
//! every outcome is counted for the exit summary.

use std::{
    collections::VecDeque,
    sync::mpsc::{self, Receiver, SyncSender},
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::pprof::{self, proto};

/// Periods waiting for the push thread at most (it is busy with an earlier one).
const QUEUE: usize = 2;
/// Failed pushes kept for a retry at most: a minute of profile at the default period.
const MAX_PENDING: usize = 4;
/// One push's whole budget (connect, send, answer).
const TIMEOUT: Duration = Duration::from_secs(10);
/// What the pusher calls itself (`spyName`); not one Pyroscope rewrites names for.
const SPY_NAME: &str = "slowtrace";

/// `--pyroscope`, resolved.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The server's base URL; `/ingest` is appended.
    pub url: String,
    pub every: Duration,
    /// The application name; None: the traced program's name, found at the first push.
    pub app: Option<String>,
}

/// One period's profiles (the CPU profile, and the wall-clock one when it is on: the server
/// names a profile by its first sample types, so each goes as its own request).
pub struct Period {
    pub profiles: Vec<proto::Profile>,
    pub from: SystemTime,
    pub until: SystemTime,
    pub app: String,
    pub sample_hz: u64,
}

/// What the pushes did, for the exit summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PushReport {
    pub url: String,
    /// Profiles the server accepted.
    pub pushed: u64,
    /// Attempts that failed (each failed profile is tried again next period).
    pub failed: u64,
    /// Profiles given up: queue full, too many failures waiting, or still failing at exit.
    pub dropped: u64,
    pub last_error: Option<String>,
}

/// The push thread's handle.
pub struct Pusher {
    tx: Option<SyncSender<Period>>,
    thread: Option<JoinHandle<PushReport>>,
    /// Periods dropped here because the queue was full.
    dropped: u64,
}

/// A request ready to go: the ingest URL and the gzipped profile.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    pub body: Vec<u8>,
}

impl Pusher {
    pub fn spawn(cfg: &PushConfig) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let url = cfg.url.clone();
        let thread = std::thread::Builder::new()
            .name("pyroscope".into())
            .spawn(move || run(&url, &rx))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            dropped: 0,
        })
    }

    /// Hand a period over; never waits. Dropped (counted) when the thread is still busy.
    pub fn push(&mut self, p: Period) {
        let n = p.profiles.len() as u64;
        if let Some(tx) = &self.tx {
            if tx.try_send(p).is_err() {
                self.dropped += n;
            }
        }
    }

    /// Send what is queued (one last try for failed ones) and stop. Waits for the pushes in
    /// flight, each bounded by `TIMEOUT`.
    pub fn finish(mut self) -> PushReport {
        drop(self.tx.take());
        let mut r = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        r.dropped += self.dropped;
        r
    }
}

/// The request for one profile of `p`.
pub fn request(base: &str, p: &Period, profile: &proto::Profile) -> std::io::Result<Request> {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let url = format!(
        "{}/ingest?name={}&from={}&until={}&format=pprof&sampleRate={}&spyName={SPY_NAME}",
        base.trim_end_matches('/'),
        encode(&app_name(&p.app)),
        secs(p.from),
        // A period shorter than a second still covers one.
        secs(p.until).max(secs(p.from) + 1),
        p.sample_hz,
    );
    Ok(Request {
        url,
        body: pprof::encode_gz(profile)?,
    })
}

/// An application name the ingest API takes as it is: `{`, `}`, `=` and `,` would be read as a
/// label list, so anything but letters, digits, `.`, `-` and `_` becomes `_`.
pub fn app_name(raw: &str) -> String {
    let s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "slowtrace".into()
    } else {
        s
    }
}

/// Percent-encoding of a query value (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    use std::fmt::Write as _;
    s.bytes()
        .fold(String::with_capacity(s.len()), |mut out, b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
            out
        })
}

fn run(base: &str, rx: &Receiver<Period>) -> PushReport {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    let mut report = PushReport {
        url: base.to_owned(),
        ..PushReport::default()
    };
    let mut pending: VecDeque<Request> = VecDeque::new();
    let queue = |pending: &mut VecDeque<Request>, report: &mut PushReport, p: Period| {
        for profile in &p.profiles {
            match request(base, &p, profile) {
                Ok(r) => pending.push_back(r),
                Err(e) => {
                    report.dropped += 1;
                    report.last_error = Some(format!("encoding a profile: {e}"));
                }
            }
        }
        while pending.len() > MAX_PENDING {
            pending.pop_front();
            report.dropped += 1;
        }
    };
    while let Ok(p) = rx.recv() {
        queue(&mut pending, &mut report, p);
        send_pending(&agent, &mut pending, &mut report);
    }
    // Exit: one more try for what failed; whatever still fails is dropped.
    send_pending(&agent, &mut pending, &mut report);
    report.dropped += pending.len() as u64;
    report
}

/// Send the queued requests oldest first; stop at the first failure (the others would most
/// likely fail the same way), keeping it and the rest for the next period.
fn send_pending(agent: &ureq::Agent, pending: &mut VecDeque<Request>, report: &mut PushReport) {
    while let Some(r) = pending.front() {
        match send(agent, r) {
            Ok(()) => {
                report.pushed += 1;
                pending.pop_front();
            }
            Err(e) => {
                report.failed += 1;
                log::debug!("pyroscope push failed: {e}");
                report.last_error = Some(e);
                return;
            }
        }
    }
}

fn send(agent: &ureq::Agent, r: &Request) -> Result<(), String> {
    agent
        .post(&r.url)
        .header("Content-Type", "application/octet-stream")
        .send(&r.body[..])
        .map(drop)
        .map_err(|e| match e {
            ureq::Error::StatusCode(code) => format!("the server answered HTTP {code}"),
            e => e.to_string(),
        })
}

/// What `--pyroscope` did.
pub fn summary_line(r: &PushReport) -> String {
    let mut line = format!(
        "pyroscope: {} profiles pushed to {}, {} pushes failed (retried next period), {} profiles \
         dropped",
        r.pushed, r.url, r.failed, r.dropped
    );
    if let Some(e) = &r.last_error {
        line.push_str(&format!("\nWARNING: pyroscope push failed: {e}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period(app: &str) -> Period {
        Period {
            profiles: vec![proto::Profile::default()],
            from: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            until: UNIX_EPOCH + Duration::from_secs(1_700_000_015),
            app: app.into(),
            sample_hz: 99,
        }
    }

    #[test]
    fn builds_the_ingest_request() {
        let p = period("gunicorn");
        let r = request("http://pyro:4040/", &p, &p.profiles[0]).unwrap();
        assert_eq!(
            r.url,
            "http://pyro:4040/ingest?name=gunicorn&from=1700000000&until=1700000015\
             &format=pprof&sampleRate=99&spyName=slowtrace"
        );
        // The body is a gzipped profile.proto.
        assert_eq!(&r.body[..2], &[0x1f, 0x8b]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut raw)
            .unwrap();
        let back: proto::Profile = prost::Message::decode(&raw[..]).unwrap();
        assert_eq!(back, p.profiles[0]);
    }

    #[test]
    fn keeps_a_base_path_and_a_short_period_covers_a_second() {
        let mut p = period("app");
        p.until = p.from;
        let r = request("https://h/pyroscope", &p, &p.profiles[0]).unwrap();
        assert!(r
            .url
            .starts_with("https://h/pyroscope/ingest?name=app&from=1700000000&until=1700000001&"));
    }

    #[test]
    fn app_names_cannot_inject_labels() {
        assert_eq!(app_name("my app{env=prod}"), "my_app_env_prod_");
        assert_eq!(app_name("python3.11"), "python3.11");
        assert_eq!(app_name(""), "slowtrace");
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }

    /// Nothing listens on the port: every attempt fails, is counted, and at exit what never went
    /// out is dropped. (There is no Pyroscope server to test a successful push against here.)
    #[test]
    fn failures_are_retried_then_dropped_and_counted() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut pusher = Pusher::spawn(&PushConfig {
            url: format!("http://127.0.0.1:{port}"),
            every: Duration::from_secs(15),
            app: None,
        })
        .unwrap();
        pusher.push(period("a"));
        let r = pusher.finish();
        // Tried when handed over, and once more at exit.
        assert_eq!((r.pushed, r.failed, r.dropped), (0, 2, 1), "{r:?}");
        assert!(r.last_error.is_some());
    }
}
