extern crate std;
use std::vec::Vec;

use super::*;

/// Drives a connection the way the kernel programs do and collects what they would emit.
struct Harness {
    conn: ConnState,
    out: Vec<RequestRecord>,
}

impl Harness {
    fn new() -> Self {
        Self {
            conn: ConnState::accepted(10, 5, 3, 1),
            out: Vec::new(),
        }
    }
    fn read(&mut self, now: u64, n: u64) -> Step {
        let out = &mut self.out;
        self.conn.inbound(now, n, |r| out.push(*r))
    }
    fn write(&mut self, now: u64, n: u64, status_line: bool) -> Step {
        let out = &mut self.out;
        self.conn.outbound(now, n, status_line, |r| out.push(*r))
    }
    fn close(&mut self, now: u64) {
        let out = &mut self.out;
        self.conn.close(now, EndReason::Close, |r| out.push(*r));
    }
}

#[test]
fn one_request_then_close() {
    let mut h = Harness::new();
    assert_eq!(h.read(100, 80), Step::RequestStarted);
    assert_eq!(h.read(110, 20), Step::Continue);
    assert_eq!(h.write(200, 50, true), Step::ResponseStarted);
    assert_eq!(h.write(250, 1000, false), Step::Continue);
    assert!(
        h.out.is_empty(),
        "nothing is emitted before the request ends"
    );
    h.close(300);
    assert_eq!(h.out.len(), 1);
    let r = &h.out[0];
    assert_eq!((r.start_ns, r.resp_ns, r.end_ns), (100, 200, 250));
    assert_eq!((r.bytes_in, r.bytes_out), (100, 1050));
    assert_eq!(EndReason::from_u8(r.end_reason), EndReason::Close);
    assert_eq!(h.conn.phase(), Phase::Idle);
}

#[test]
fn keep_alive_requests_end_at_next_request() {
    let mut h = Harness::new();
    for i in 0..3u64 {
        let t = i * 1000;
        h.read(t + 1, 10);
        h.write(t + 5, 20, true);
        h.write(t + 7, 20, false);
    }
    assert_eq!(h.out.len(), 2, "the third is still open");
    assert_eq!(h.out[0].end_ns, 7);
    assert_eq!(h.out[1].seq, 1);
    assert_eq!(h.out[1].start_ns, 1001);
    assert_eq!(
        EndReason::from_u8(h.out[1].end_reason),
        EndReason::NextRequest
    );
    h.close(5000);
    assert_eq!(h.out.len(), 3);
    assert_eq!(h.out[2].seq, 2);
    assert_eq!(
        h.out[2].end_ns, 2007,
        "end is the last response byte, not the close"
    );
}

#[test]
fn pipelined_requests_are_counted_one_by_one() {
    let mut h = Harness::new();
    h.read(10, 300); // three requests in one read
    h.write(20, 40, true);
    h.write(21, 100, false);
    h.write(30, 40, true);
    h.write(40, 40, true);
    h.close(50);
    assert_eq!(h.out.len(), 3);
    let idx: Vec<u16> = h.out.iter().map(|r| r.pipeline_index).collect();
    assert_eq!(idx, [0, 1, 2]);
    assert_eq!(h.out[0].bytes_out, 140);
    assert_eq!(
        h.out[1].start_ns, 21,
        "a pipelined request starts when the previous response ended"
    );
    assert_eq!(h.out[1].flags & FLAG_PIPELINED, FLAG_PIPELINED);
    assert_eq!(
        h.out[2].bytes_in, 0,
        "the read's bytes belong to the first request"
    );
}

#[test]
fn close_without_response_still_emits() {
    let mut h = Harness::new();
    h.read(10, 5);
    h.close(99);
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.out[0].resp_ns, 0);
    assert_eq!(h.out[0].end_ns, 99);
}

#[test]
fn idle_connection_emits_nothing() {
    let mut h = Harness::new();
    assert_eq!(
        h.write(5, 10, false),
        Step::Continue,
        "server greeting is not a request"
    );
    h.close(10);
    assert!(h.out.is_empty());
}

#[test]
fn status_line_detection() {
    assert!(is_status_line(b"HTTP/1.1"));
    assert!(!is_status_line(b"<html>\n\n"));
}
