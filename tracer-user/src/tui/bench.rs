//! Does the dashboard keep up with a busy server? A benchmark, compiled with the tests only (it is
//! not in the `slowtrace` binary); `cargo xtask bench` runs it in a release build:
//!
//! ```text
//! cargo test --release -p tracer-user --bin slowtrace -- tui::bench::flood_50k --exact --ignored --nocapture
//! ```
//!
//! A generator thread stands in for the agent thread: it makes synthetic requests at `rate`
//! (spread over `endpoints`, 1 in 2000 slow with captures, a scan tick every 250 ms) and offers
//! them over the same bounded channel as `feed`, counting what does not fit. This thread runs the
//! dashboard's frame as `top` does: `drain` (the same function), `prepare`, `ui::draw` into a
//! 160×48 `TestBackend`, then a 250 ms wait. No terminal, no root, no eBPF: what is measured is
//! the dashboard's own cost. It prints one JSON line (field names are read by `cargo xtask bench`):
//!
//! - `apply_ns_per_event_p50`: per frame, the drain time over the events it applied (the
//!   channel receive included); the median over frames that applied any.
//! - `render_ms_p50`, `render_ms_max`: `prepare` + `draw`, per frame.
//! - `max_lag_ms`: when a frame has been drawn, how far the newest event it shows is behind the
//!   newest one the generator has made. Grows without bound if the screen falls behind.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ratatui::{backend::TestBackend, Terminal};
use tracer_common::Counter;

use super::{
    app::App,
    feed::{Ended, Source, CAPACITY},
    state::{Meta, Update},
    TICK,
};
use crate::{
    agent::{AgentEvent, Counters},
    model::{
        slow::{Capture, Frame, SlowRequest},
        Request,
    },
};

/// One in this many requests is slow (1.2-3 s) and comes with captures: 25/s at 50k/s.
const SLOW_EVERY: u64 = 2000;

/// What the generator makes.
#[derive(Debug, Clone, Copy)]
struct Flood {
    /// Requests per second.
    rate: u64,
    /// How long to generate for.
    seconds: f64,
    /// Distinct endpoints the requests are spread over.
    endpoints: usize,
}

#[derive(Debug, Clone, PartialEq)]
struct Report {
    rate: u64,
    /// Requests the dashboard applied.
    events: u64,
    seconds: f64,
    apply_ns_per_event_p50: f64,
    render_ms_p50: f64,
    render_ms_max: f64,
    max_lag_ms: f64,
    /// Not in the JSON line (its fields are fixed): said on stderr when not zero.
    generated: u64,
    overflow: u64,
}

impl Report {
    fn json(&self) -> String {
        format!(
            "{{\"rate\":{},\"events\":{},\"seconds\":{:.3},\"apply_ns_per_event_p50\":{:.1},\
             \"render_ms_p50\":{:.3},\"render_ms_max\":{:.3},\"max_lag_ms\":{:.3}}}",
            self.rate,
            self.events,
            self.seconds,
            self.apply_ns_per_event_p50,
            self.render_ms_p50,
            self.render_ms_max,
            self.max_lag_ms
        )
    }
}

/// What the render side reads: the channel, with the generation time of each request.
struct Stamped {
    rx: Receiver<(u64, Update)>,
    overflow: Arc<AtomicU64>,
    /// Generation time (µs since the start) of the newest request applied.
    newest: u64,
    requests: u64,
}

impl Source for Stamped {
    fn try_next(&mut self) -> Option<Update> {
        let (at, u) = self.rx.try_recv().ok()?;
        if let Update::Agent(AgentEvent::Request(_)) = &u {
            self.newest = self.newest.max(at);
            self.requests += 1;
        }
        Some(u)
    }
    fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }
    fn written(&self) -> u64 {
        0
    }
    fn ended(&mut self) -> Option<Ended> {
        None
    }
}

fn measure(args: &Flood) -> anyhow::Result<Report> {
    let (tx, rx) = mpsc::sync_channel(CAPACITY);
    let overflow = Arc::new(AtomicU64::new(0));
    let newest_made = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let generator = {
        let g = Generator {
            tx,
            overflow: overflow.clone(),
            newest: newest_made.clone(),
            rate: args.rate,
            endpoints: args.endpoints,
            rng: 0x9e37_79b9_7f4a_7c15,
            made: 0,
        };
        let (done, length) = (done.clone(), Duration::from_secs_f64(args.seconds));
        std::thread::Builder::new()
            .name("bench-generator".into())
            .spawn(move || {
                let made = g.run(start, length);
                done.store(true, Ordering::Release);
                made
            })
            .context("starting the generator")?
    };
    let mut source = Stamped {
        rx,
        overflow: overflow.clone(),
        newest: 0,
        requests: 0,
    };
    let mut app = App::new(Meta {
        targets: format!("bench-ui ({} endpoints)", args.endpoints),
        attach_mode: "synthetic".into(),
        threshold: Duration::from_secs(1),
        sample_hz: 0,
        sampling_note: None,
        n_plus_one: 10,
    });
    let mut term = Terminal::new(TestBackend::new(160, 48))?;
    let (mut apply_ns, mut render_ms, mut max_lag_us) = (Vec::new(), Vec::new(), 0u64);
    loop {
        // Read before draining: once set, everything the generator made is in the channel.
        let finished = done.load(Ordering::Acquire);
        let now = start.elapsed();
        let t = Instant::now();
        let n = super::drain(&mut app, &mut source, now);
        if n > 0 {
            apply_ns.push(t.elapsed().as_nanos() as f64 / n as f64);
        }
        let t = Instant::now();
        app.prepare(now);
        term.draw(|f| super::ui::draw(f, &app))?;
        render_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let lag = newest_made
            .load(Ordering::Acquire)
            .saturating_sub(source.newest);
        max_lag_us = max_lag_us.max(lag);
        if finished && n < super::MAX_EVENTS_PER_FRAME {
            break;
        }
        // `top` waits up to one tick for a key after each frame.
        std::thread::sleep(TICK);
    }
    let generated = generator
        .join()
        .map_err(|_| anyhow::anyhow!("the generator panicked"))?;
    Ok(Report {
        rate: args.rate,
        events: source.requests,
        seconds: args.seconds,
        apply_ns_per_event_p50: median(&mut apply_ns),
        render_ms_p50: median(&mut render_ms.clone()),
        render_ms_max: render_ms.iter().copied().fold(0.0, f64::max),
        max_lag_ms: max_lag_us as f64 / 1e3,
        generated,
        overflow: overflow.load(Ordering::Relaxed),
    })
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Stands in for the agent thread.
struct Generator {
    tx: SyncSender<(u64, Update)>,
    overflow: Arc<AtomicU64>,
    newest: Arc<AtomicU64>,
    rate: u64,
    endpoints: usize,
    rng: u64,
    made: u64,
}

impl Generator {
    /// Make requests on schedule (checked every millisecond) for `length`; returns how many.
    fn run(mut self, start: Instant, length: Duration) -> u64 {
        let mut next_tick = TICK;
        loop {
            let at = start.elapsed().min(length);
            let due = (self.rate as f64 * at.as_secs_f64()) as u64;
            let at_us = at.as_micros() as u64;
            while self.made < due {
                self.request(at_us);
            }
            if at >= next_tick {
                next_tick += TICK;
                let tick = self.tick();
                self.offer(at_us, tick);
            }
            self.newest.store(at_us, Ordering::Release);
            if at >= length {
                return self.made;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn offer(&self, at_us: u64, u: Update) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send((at_us, u)) {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// xorshift64*: cheap, deterministic.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn request(&mut self, at_us: u64) {
        self.made += 1;
        let n = self.made;
        let e = (self.next() % self.endpoints as u64) as usize;
        let slow = n.is_multiple_of(SLOW_EVERY);
        let ms = if slow {
            1200 + self.next() % 1800
        } else {
            1 + self.next() % 50
        };
        let status = if self.next().is_multiple_of(100) {
            500
        } else {
            200
        };
        let r = synthetic(n, e, ms * 1000, status);
        if slow {
            let s = self.slow(r.clone());
            self.offer(at_us, Update::Agent(AgentEvent::Request(Box::new(r))));
            self.offer(at_us, Update::Slow(Box::new(s)));
        } else {
            self.offer(at_us, Update::Agent(AgentEvent::Request(Box::new(r))));
        }
    }

    /// Three captures of a deep Django-like stack, leaves drawn from a few dozen sites.
    fn slow(&mut self, request: Request) -> SlowRequest {
        let captures = (0..3)
            .map(|i| {
                let leaf = self.next() % 40;
                let mut python: Vec<Frame> = (0..25)
                    .map(|d| frame(&format!("view_layer_{d}"), "/srv/app/views.py", d))
                    .collect();
                python.insert(0, frame(&format!("query_{leaf}"), "/srv/app/db.py", leaf));
                Capture {
                    offset_ms: 1000 + 500 * i,
                    state: "blocked".into(),
                    syscall: Some("recvfrom".into()),
                    python,
                    native: (0..20)
                        .map(|d| frame(&format!("native_{d}"), "libpython3.12.so", d))
                        .collect(),
                    kernel: (0..8)
                        .map(|d| frame(&format!("kernel_{d}"), "", 0))
                        .collect(),
                    native_source: "switch-out".into(),
                    took_us: 800,
                    errors: vec![],
                    stack_of: None,
                }
            })
            .collect();
        SlowRequest {
            kind: "slow",
            threshold_ms: 1000,
            request,
            killed: None,
            captures,
            captures_missed: 0,
            profile: None,
        }
    }

    fn tick(&mut self) -> Update {
        // A few requests running, two of them past the threshold.
        let in_flight = (0..10)
            .map(|i| {
                // Numbered apart from the finished requests, so they are distinct requests.
                let mut r = synthetic(1 << 40 | i, i as usize % self.endpoints, 0, 0);
                r.duration_us = if i < 2 { 1_500_000 } else { 20_000 };
                r.status = None;
                r.end = "in_flight";
                r
            })
            .collect();
        let mut counters = Counters::default();
        counters.kernel.insert(Counter::Events, self.made);
        Update::Agent(AgentEvent::Tick {
            in_flight,
            counters,
        })
    }
}

fn frame(function: &str, file: &str, line: u64) -> Frame {
    Frame {
        function: function.to_owned(),
        file: (!file.is_empty()).then(|| file.to_owned()),
        line: (line > 0).then_some(line as u32),
        module: None,
    }
}

/// Request number `n` to endpoint `e`, as the agent would make it (the same allocations).
fn synthetic(n: u64, e: usize, duration_us: u64, status: u16) -> Request {
    let path = format!("/api/v1/resource{e}/{}", n % 1000);
    Request {
        start_us: 1_700_000_000_000_000 + n,
        start: "2024-05-01T10:00:00.000000Z".into(),
        pid: 1000 + (n % 8) as u32,
        tid: 2000 + (n % 64) as u32,
        comm: "gunicorn".into(),
        fd: 10 + (n % 100) as u32,
        local_port: Some(8000),
        peer: Some("10.0.0.7:51234".into()),
        protocol: "http/1.1",
        method: Some("GET".into()),
        endpoint: format!("GET /api/v1/resource{e}/:int"),
        path: Some(path),
        host: Some("shop.example".into()),
        status: (status > 0).then_some(status),
        duration_us,
        ttfb_us: Some(duration_us),
        bytes_in: 300,
        bytes_out: 4000,
        end: "close",
        ..crate::model::request::test_request()
    }
}

/// The run `cargo xtask bench` reports: 50k requests/s over 200 endpoints for 5 s.
#[test]
#[ignore = "benchmark: cargo xtask bench runs it in a release build"]
fn flood_50k() {
    let flood = Flood {
        rate: 50_000,
        seconds: 5.0,
        endpoints: 200,
    };
    let r = measure(&flood).unwrap();
    println!("{}", r.json());
    let wanted = (flood.rate as f64 * flood.seconds) as u64;
    if r.generated < wanted * 95 / 100 {
        eprintln!(
            "bench: the generator made {} of {wanted} requests (it was short of CPU)",
            r.generated
        );
    }
    if r.overflow > 0 {
        eprintln!(
            "bench: the dashboard fell behind: {} events did not fit the channel",
            r.overflow
        );
    }
}

#[test]
fn a_short_run_reports_every_field() {
    let r = measure(&Flood {
        rate: 4000,
        seconds: 0.6,
        endpoints: 20,
    })
    .unwrap();
    assert_eq!(r.overflow, 0, "{r:?}");
    assert_eq!(r.events, r.generated, "everything made was shown: {r:?}");
    assert!(r.generated >= 2000, "{r:?}");
    assert!(r.render_ms_max >= r.render_ms_p50 && r.render_ms_p50 > 0.0);
    let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    for k in [
        "rate",
        "events",
        "seconds",
        "apply_ns_per_event_p50",
        "render_ms_p50",
        "render_ms_max",
        "max_lag_ms",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {}", r.json());
    }
    assert_eq!(keys.len(), 7);
    assert_eq!(v["rate"], 4000);
}
