//! Ends the requests the kernel cannot: a keep-alive connection that goes quiet after a response
//! (the kernel only learns the request ended when the next one arrives), requests of processes
//! that died, and requests still open when tracing stops.
//!
//! User space reads the connection map on a timer; when it ends a request itself it remembers the
//! request's identity, so the kernel's own record of it, arriving later, is not counted twice.

use std::collections::HashSet;

use tracer_common::{ConnKey, ConnState, EndReason, Phase, RequestRecord};

/// (tgid, connection id, request index): names one request for its whole life.
type RequestId = (u32, u64, u32);

fn id(r: &RequestRecord) -> RequestId {
    (r.tgid, r.conn_id, r.seq)
}

/// What one scan of the connection map found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Requests user space ends now, with the reason.
    pub finished: Vec<(RequestRecord, EndReason)>,
    /// Connections of dead processes, to delete from the map.
    pub dead: Vec<ConnKey>,
    /// Requests still running (for slow-request tracking and in-flight reporting).
    pub in_flight: Vec<RequestRecord>,
    /// Processes found dead on a connection: everything kept for them can go.
    pub exited: Vec<u32>,
    /// Time for the periodic sweep of every pid anything holds (processes that exit with no
    /// connection open are found only by it).
    pub sweep: bool,
}

#[derive(Debug)]
pub struct Tracker {
    idle_ns: u64,
    ended_here: HashSet<RequestId>,
    /// Kernel records of requests already ended here (expected, not an error).
    pub late_records: u64,
    /// When the next scan says `sweep` (0: the first scan does).
    next_sweep_ns: u64,
}

impl Tracker {
    pub fn new(idle_ns: u64) -> Self {
        Self {
            idle_ns,
            ended_here: HashSet::new(),
            late_records: 0,
            next_sweep_ns: 0,
        }
    }

    /// A record from the kernel: false if user space already reported this request.
    pub fn accept(&mut self, r: &RequestRecord) -> bool {
        if self.ended_here.remove(&id(r)) {
            self.late_records += 1;
            false
        } else {
            true
        }
    }

    /// Look at every connection. `alive` says whether a process still exists.
    pub fn scan(
        &mut self,
        conns: impl IntoIterator<Item = (ConnKey, ConnState)>,
        now_ns: u64,
        alive: impl Fn(u32) -> bool,
    ) -> Scan {
        let mut out = Scan::default();
        let mut dead_tgids = HashSet::new();
        for (key, c) in conns {
            let r = c.rec;
            let open = c.phase() != Phase::Idle && !self.ended_here.contains(&id(&r));
            if !alive(key.tgid) {
                dead_tgids.insert(key.tgid);
                out.dead.push(key);
                if open {
                    out.finished.push((r, EndReason::ProcessExit));
                }
                continue;
            }
            if !open {
                continue;
            }
            if self.quiet(&c, now_ns) {
                self.ended_here.insert(id(&r));
                out.finished.push((r, EndReason::Idle));
            } else {
                out.in_flight.push(r);
            }
        }
        if !dead_tgids.is_empty() {
            self.ended_here
                .retain(|(tgid, _, _)| !dead_tgids.contains(tgid));
        }
        out.exited = dead_tgids.into_iter().collect();
        out.exited.sort_unstable();
        if now_ns >= self.next_sweep_ns {
            out.sweep = true;
            self.next_sweep_ns = now_ns + crate::reaper::SWEEP_EVERY.as_nanos() as u64;
        }
        out
    }

    /// Tracing stops: every open request is either done (quiet) or reported in flight.
    pub fn finish_all(
        &mut self,
        conns: impl IntoIterator<Item = (ConnKey, ConnState)>,
        now_ns: u64,
    ) -> Vec<(RequestRecord, EndReason)> {
        conns
            .into_iter()
            .filter(|(_, c)| c.phase() != Phase::Idle && !self.ended_here.contains(&id(&c.rec)))
            .map(|(_, c)| {
                let why = if self.quiet(&c, now_ns) {
                    EndReason::Idle
                } else {
                    EndReason::InFlight
                };
                (c.rec, why)
            })
            .collect()
    }

    fn quiet(&self, c: &ConnState, now_ns: u64) -> bool {
        c.phase() == Phase::Response
            && c.writing == 0
            && now_ns.saturating_sub(c.rec.end_ns) >= self.idle_ns
    }
}

/// Requests ended here whose kernel record has not come: a process that exits before sending it
/// would leave them forever.
impl crate::reaper::PerProcess for Tracker {
    fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.ended_here.iter().map(|r| r.0).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn forget_process(&mut self, pid: u32) -> bool {
        let before = self.ended_here.len();
        self.ended_here.retain(|r| r.0 != pid);
        self.ended_here.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(phase: Phase, seq: u32, end_ns: u64) -> (ConnKey, ConnState) {
        let mut c = ConnState::accepted(10, 4, 3, 1);
        c.phase = phase as u8;
        c.rec.seq = seq;
        c.rec.start_ns = 100;
        c.rec.end_ns = end_ns;
        (ConnKey { tgid: 10, fd: 4 }, c)
    }

    #[test]
    fn quiet_response_is_ended_once() {
        let mut t = Tracker::new(500);
        let s = t.scan([conn(Phase::Response, 0, 1000)], 1600, |_| true);
        assert_eq!(s.finished.len(), 1);
        assert_eq!(s.finished[0].1, EndReason::Idle);
        // Still in the map on the next scan: not reported again.
        assert!(t
            .scan([conn(Phase::Response, 0, 1000)], 1900, |_| true)
            .finished
            .is_empty());
        // The kernel's record arrives when the next request comes: dropped as a duplicate.
        assert!(!t.accept(&conn(Phase::Idle, 0, 1000).1.rec));
        assert_eq!(t.late_records, 1);
        // The next request on the connection is new.
        assert!(t.accept(&conn(Phase::Idle, 1, 3000).1.rec));
    }

    #[test]
    fn busy_or_writing_is_in_flight() {
        let mut t = Tracker::new(500);
        let (k, mut c) = conn(Phase::Response, 0, 1000);
        c.writing = 1;
        let s = t.scan([(k, c), conn(Phase::Request, 1, 0)], 5000, |_| true);
        assert!(s.finished.is_empty());
        assert_eq!(s.in_flight.len(), 2);
    }

    #[test]
    fn dead_process_ends_its_requests() {
        let mut t = Tracker::new(500);
        let s = t.scan(
            [conn(Phase::Request, 0, 0), conn(Phase::Idle, 0, 0)],
            5000,
            |_| false,
        );
        assert_eq!(s.finished.len(), 1);
        assert_eq!(s.finished[0].1, EndReason::ProcessExit);
        assert_eq!(s.dead.len(), 2);
        assert_eq!(s.exited, [10]);
    }

    #[test]
    fn forgets_the_requests_of_an_exited_process_and_sweeps_periodically() {
        use crate::reaper::PerProcess as _;
        let mut t = Tracker::new(500);
        let mut other = conn(Phase::Response, 0, 1000);
        other.0.tgid = 11;
        other.1.rec.tgid = 11;
        // Both end here (quiet); their kernel records would be awaited forever.
        let s = t.scan([conn(Phase::Response, 0, 1000), other], 1600, |_| true);
        assert_eq!(s.finished.len(), 2);
        assert!(s.sweep, "the first scan sweeps");
        assert_eq!(t.pids(), [10, 11]);
        assert!(t.forget_process(10));
        assert_eq!(t.pids(), [11]);
        assert!(!t.forget_process(10), "nothing left for it");
        let sweep_ns = crate::reaper::SWEEP_EVERY.as_nanos() as u64;
        assert!(!t.scan([], 1700, |_| true).sweep);
        assert!(t.scan([], 1600 + sweep_ns, |_| true).sweep);
    }

    #[test]
    fn finish_all_splits_done_and_running() {
        let mut t = Tracker::new(500);
        let mut a = conn(Phase::Response, 0, 1000);
        a.0.fd = 5;
        let done = t.finish_all([a, conn(Phase::Request, 0, 0)], 2000);
        let whys: Vec<EndReason> = done.iter().map(|d| d.1).collect();
        assert_eq!(whys, [EndReason::Idle, EndReason::InFlight]);
    }
}
