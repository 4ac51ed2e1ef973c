//! The agent driven by a fake kernel: synthetic records in, enriched requests out, no root.

use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    os::fd::BorrowedFd,
    rc::Rc,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use tracer_common::{
    ConnKey, ConnState, Counter, DownstreamRecord, HandlerRecord, HandlerStack, Phase,
    ProfileRecord, RequestRecord, SignalNote,
};

use super::*;
use crate::{
    capture::{watchdog::Job, worker::CaptureResult},
    events::{self, encode, ShortRecord},
    model::slow::Capture,
    tui::captures::tests::{capture, py},
};

/// What the test puts in "the kernel" and reads back from it.
#[derive(Default)]
struct FakeState {
    requests: VecDeque<Vec<u8>>,
    downstream: VecDeque<Vec<u8>>,
    conns: Vec<(ConnKey, ConnState)>,
    watched: Vec<(u32, bool)>,
    forgotten: Vec<ConnKey>,
}

#[derive(Clone, Default)]
struct FakeKernel(Rc<RefCell<FakeState>>);

impl Kernel for FakeKernel {
    fn remark(&mut self, _tgid: u32) -> bool {
        false
    }

    fn next_request(&mut self) -> Option<Result<RequestRecord, ShortRecord>> {
        let bytes = self.0.borrow_mut().requests.pop_front()?;
        Some(events::decode(&bytes))
    }

    fn next_downstream(&mut self) -> Option<Result<DownstreamRecord, ShortRecord>> {
        let bytes = self.0.borrow_mut().downstream.pop_front()?;
        Some(events::decode(&bytes))
    }

    fn next_sample(&mut self) -> Option<Result<ProfileRecord, ShortRecord>> {
        None
    }

    fn next_handler_call(&mut self) -> Option<Result<HandlerRecord, ShortRecord>> {
        None
    }

    fn conns(&self) -> Vec<(ConnKey, ConnState)> {
        self.0.borrow().conns.clone()
    }

    fn forget_conn(&mut self, key: &ConnKey) {
        let mut s = self.0.borrow_mut();
        s.conns.retain(|(k, _)| k != key);
        s.forgotten.push(*key);
    }

    fn handler_stacks(&self) -> Vec<(u32, HandlerStack)> {
        Vec::new()
    }

    fn counters(&self) -> std::collections::HashMap<Counter, u64> {
        std::collections::HashMap::new()
    }

    fn watch(&mut self, tid: u32, on: bool) {
        self.0.borrow_mut().watched.push((tid, on));
    }

    fn signal_note(&self, _tid: u32) -> Option<SignalNote> {
        None
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// Capture jobs kept until the test answers them.
#[derive(Clone, Default)]
struct FakeJobs(Rc<RefCell<(Vec<Job>, Vec<CaptureResult>)>>);

impl capturing::CaptureJobs for FakeJobs {
    fn submit(&mut self, job: Job) -> bool {
        self.0.borrow_mut().0.push(job);
        true
    }

    fn results(&mut self) -> Vec<CaptureResult> {
        std::mem::take(&mut self.0.borrow_mut().1)
    }

    fn overflow(&self) -> u64 {
        0
    }
}

/// Everything the agent handed out, in order.
#[derive(Default)]
struct Outputs {
    requests: Vec<Request>,
    slow: Vec<SlowRequest>,
    /// "request GET /a" / "slow GET /a", in the order they came.
    order: Vec<String>,
}

impl Consumer for Outputs {
    fn on_event(&mut self, ev: AgentEvent) -> anyhow::Result<()> {
        if let AgentEvent::Request(r) = ev {
            self.order.push(format!("request {}", r.endpoint));
            self.requests.push(*r);
        }
        Ok(())
    }

    fn on_slow(&mut self, slow: &SlowRequest) -> anyhow::Result<()> {
        self.order.push(format!("slow {}", slow.request.endpoint));
        self.slow.push(slow.clone());
        Ok(())
    }
}

fn config(capture: Option<CaptureConfig>) -> AgentConfig {
    AgentConfig {
        targets: crate::config::Targets {
            pids: vec![],
            ports: vec![],
            cgroups: vec![],
            command: None,
        },
        keep_query: false,
        idle_flush: Duration::from_millis(500),
        capture,
        handlers: vec![],
        act: None,
        profile: None,
        n_plus_one: 10,
        command_output: None,
        keep_round_trips: false,
    }
}

/// The serving process: this test process, so that it is alive when the agent looks.
fn pid() -> u32 {
    std::process::id()
}
const CONN: u64 = 7;

/// A request record of our process on connection `CONN`.
fn record(seq: u32, path: &str, start_ns: u64, dur_ns: u64) -> RequestRecord {
    let mut r = RequestRecord::zeroed();
    r.tgid = pid();
    r.tid = pid();
    r.fd = 5;
    r.conn_id = CONN;
    r.seq = seq;
    r.local_port = 8000;
    let line = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    r.req[..line.len()].copy_from_slice(line.as_bytes());
    r.req_len = line.len() as u16;
    let status = b"HTTP/1.1 200 OK\r\n";
    r.resp[..status.len()].copy_from_slice(status);
    r.resp_len = status.len() as u16;
    r.start_ns = start_ns;
    r.resp_ns = start_ns + dur_ns;
    r.end_ns = start_ns + dur_ns;
    r.end_reason = tracer_common::EndReason::NextRequest as u8;
    r
}

/// One Redis `GET key` round trip made while serving request `seq`.
fn redis_call(seq: u32, start_ns: u64) -> DownstreamRecord {
    // SAFETY: plain data, all-zero is valid.
    let mut d: DownstreamRecord = unsafe { std::mem::zeroed() };
    d.tgid = pid();
    d.tid = pid();
    d.fd = 9;
    d.ds_conn_id = 99;
    d.start_ns = start_ns;
    d.resp_ns = start_ns + 100_000;
    d.req_conn_id = CONN;
    d.req_seq = seq;
    d.req_fd = 5;
    d.family = 2;
    d.port = 6379;
    d.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let cmd = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    d.req[..cmd.len()].copy_from_slice(cmd);
    d.req_len = cmd.len() as u16;
    d
}

fn agent(capture: Option<CaptureConfig>, jobs: &FakeJobs) -> (Agent, FakeKernel) {
    let kernel = FakeKernel::default();
    let cfg = config(capture);
    let capturing = capture.map(|c| capturing::Capturing::new(c, Box::new(jobs.clone())));
    (
        Agent::assemble(Box::new(kernel.clone()), &cfg, capturing, None),
        kernel,
    )
}

#[test]
fn requests_come_out_once_in_kernel_order_with_their_calls() {
    let (mut a, k) = agent(None, &FakeJobs::default());
    let t = mono_ns() - 1_000_000_000;
    {
        let mut s = k.0.borrow_mut();
        // The downstream record is written before the request's own record ends it.
        s.downstream
            .push_back(encode(&redis_call(1, t + 20_000_000)));
        for (seq, path) in [(0, "/a"), (1, "/b"), (2, "/c")] {
            let r = record(seq, path, t + u64::from(seq) * 10_000_000, 5_000_000);
            s.requests.push_back(encode(&r));
        }
        s.requests.push_back(vec![1, 2, 3]);
    }
    let mut out = Outputs::default();
    a.drain(&mut out).unwrap();
    assert_eq!(
        out.order,
        ["request GET /a", "request GET /b", "request GET /c"]
    );
    assert_eq!(
        a.malformed, 1,
        "the short record is counted, not handed out"
    );
    let b = &out.requests[1];
    let calls = b.downstream.as_ref().expect("/b made a call");
    assert_eq!(calls.calls, 1, "{calls:?}");
    assert!(out.requests[0].downstream.is_none());
    assert!(out.requests.iter().all(|r| r.breakdown.is_some()));
}

#[test]
fn a_request_ended_by_user_space_is_not_counted_again() {
    let (mut a, k) = agent(None, &FakeJobs::default());
    let t = mono_ns() - 2_000_000_000;
    let r = record(0, "/quiet", t, 1_000_000);
    let mut c = ConnState::accepted(pid(), 5, 3, CONN);
    c.phase = Phase::Response as u8;
    c.rec = r;
    k.0.borrow_mut()
        .conns
        .push((ConnKey { tgid: pid(), fd: 5 }, c));
    let mut out = Outputs::default();
    // The scan finds the keep-alive connection quiet and ends the request itself...
    a.scan(&mut out).unwrap();
    assert_eq!(out.order, ["request GET /quiet"]);
    assert_eq!(out.requests[0].end, "idle");
    // ...so the kernel's record of it, arriving with the next request, is not a second one.
    k.0.borrow_mut().requests.push_back(encode(&r));
    a.drain(&mut out).unwrap();
    assert_eq!(out.requests.len(), 1);
    assert_eq!(a.tracker.late_records, 1);
}

#[test]
fn the_final_drain_hands_out_every_open_request() {
    let (a, k) = agent(None, &FakeJobs::default());
    let t = mono_ns() - 2_000_000_000;
    {
        let mut s = k.0.borrow_mut();
        let mut busy = ConnState::accepted(pid(), 5, 3, CONN);
        busy.phase = Phase::Request as u8;
        busy.rec = record(0, "/running", t, 0);
        busy.rec.end_ns = 0;
        s.conns.push((ConnKey { tgid: pid(), fd: 5 }, busy));
        let mut quiet = ConnState::accepted(pid(), 6, 3, CONN + 1);
        quiet.phase = Phase::Response as u8;
        quiet.rec = record(0, "/done", t, 1_000_000);
        quiet.rec.conn_id = CONN + 1;
        quiet.rec.fd = 6;
        s.conns.push((ConnKey { tgid: pid(), fd: 6 }, quiet));
        // And one record the kernel wrote just before the stop.
        s.requests
            .push_back(encode(&record(3, "/last", t, 1_000_000)));
    }
    let mut out = Outputs::default();
    let done = a
        .run(
            &mut out,
            Some(Duration::from_millis(20)),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
    assert_eq!(done.stop, Stop::Duration);
    let ends: HashMap<&str, &str> = out
        .requests
        .iter()
        .map(|r| (r.endpoint.as_str(), r.end))
        .collect();
    assert_eq!(ends.get("GET /last"), Some(&"next_request"));
    assert_eq!(ends.get("GET /done"), Some(&"idle"));
    assert_eq!(ends.get("GET /running"), Some(&"in_flight"));
    assert_eq!(out.requests.len(), 3, "{:?}", out.order);
}

#[test]
fn a_slow_request_waits_for_its_captures_and_carries_the_site_everywhere() {
    let jobs = FakeJobs::default();
    let threshold = Duration::from_secs(1);
    let (mut a, k) = agent(
        Some(CaptureConfig {
            threshold,
            resample: Duration::from_secs(10),
            max_captures: 3,
        }),
        &jobs,
    );
    let start = mono_ns() - 1_500_000_000;
    let mut running = ConnState::accepted(pid(), 5, 3, CONN);
    running.phase = Phase::Request as u8;
    running.rec = record(0, "/slow", start, 0);
    k.0.borrow_mut()
        .conns
        .push((ConnKey { tgid: pid(), fd: 5 }, running));
    let mut out = Outputs::default();
    // 1.5 s in: the scan watches the thread and asks for a capture.
    a.scan(&mut out).unwrap();
    assert_eq!(k.0.borrow().watched, [(pid(), true)]);
    let job = jobs.0.borrow().0.first().copied().expect("a capture job");
    // It ends (with a call) before the capture comes back: held, nothing handed out yet.
    {
        let mut s = k.0.borrow_mut();
        s.conns.clear();
        s.downstream
            .push_back(encode(&redis_call(0, start + 100_000_000)));
        s.requests
            .push_back(encode(&record(0, "/slow", start, 1_600_000_000)));
    }
    a.drain(&mut out).unwrap();
    assert!(out.order.is_empty(), "held back: {:?}", out.order);
    assert!(k.0.borrow().watched.contains(&(pid(), false)), "unwatched");
    // The capture arrives: the request and its slow record come out together, once.
    let cap: Capture = capture(1000, vec![py("view", "/srv/app/views.py", 42)], vec![]);
    jobs.0.borrow_mut().1.push((job.key, Ok(cap)));
    a.scan(&mut out).unwrap();
    assert_eq!(out.order, ["request GET /slow", "slow GET /slow"]);
    let site = Some("view (/srv/app/views.py:42)".to_owned());
    let req_site = out.requests[0]
        .downstream
        .as_ref()
        .and_then(|d| d.site.clone());
    let slow_site = out.slow[0]
        .request
        .downstream
        .as_ref()
        .and_then(|d| d.site.clone());
    assert_eq!(req_site, site, "requests.jsonl and findings.jsonl");
    assert_eq!(slow_site, site, "slow.jsonl");
    assert_eq!(out.slow[0].captures.len(), 1);
    a.scan(&mut out).unwrap();
    assert_eq!(out.order.len(), 2, "nothing twice");
}

#[test]
fn a_slow_request_does_not_hold_the_loop_while_the_profiler_is_busy() {
    let stacks = crate::symbols::Stacks::spawn(None).unwrap();
    // The resolver thread is kept busy until `go` is sent, so the profiler thread is stuck in
    // the round trip for the batch of samples below: the agent must not wait for it.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    assert!(stacks.try_run(move |_| {
        let _ = wait.recv_timeout(Duration::from_secs(10));
    }));
    let profiler = Profiler::spawn(
        crate::profile::ProfilerConfig {
            sample_hz: 99,
            out_dir: None,
            endpoint: None,
            wall: false,
            labels: false,
            push: None,
        },
        stacks,
    )
    .unwrap();
    let threshold = Duration::from_secs(1);
    let capture = CaptureConfig {
        threshold,
        resample: Duration::from_secs(10),
        max_captures: 3,
    };
    let cfg = config(Some(capture));
    let jobs = FakeJobs::default();
    let kernel = FakeKernel::default();
    let capturing = capturing::Capturing::new(capture, Box::new(jobs.clone()));
    let mut a = Agent::assemble(
        Box::new(kernel.clone()),
        &cfg,
        Some(capturing),
        Some(profiler),
    );
    let start = mono_ns() - 2_000_000_000;
    if let Some(p) = a.profiler.as_mut() {
        let mut sample = ProfileRecord::zeroed();
        sample.tgid = pid();
        sample.tid = pid();
        p.submit(sample);
        p.flush_done();
    }
    kernel
        .0
        .borrow_mut()
        .requests
        .push_back(encode(&record(0, "/slow", start, 1_500_000_000)));
    let mut out = Outputs::default();
    let t = std::time::Instant::now();
    a.drain(&mut out).unwrap();
    a.profiles_in(false, &mut out).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "the loop waited for the profiler: {:?}",
        t.elapsed()
    );
    assert!(
        out.order.is_empty(),
        "held for its samples: {:?}",
        out.order
    );
    go.send(()).unwrap();
    // At the end, the answer is waited for and the request goes out once, whole.
    a.profiles_in(true, &mut out).unwrap();
    assert_eq!(out.order, ["request GET /slow", "slow GET /slow"]);
    a.profiles_in(true, &mut out).unwrap();
    assert_eq!(out.order.len(), 2, "nothing twice");
}
