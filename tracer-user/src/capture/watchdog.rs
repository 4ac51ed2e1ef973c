//! Which running requests to capture, and when: dogslow's rule from outside. A request older than
//! the threshold is captured, then again every resample interval until it ends, up to a bound.
//! Pure: in-flight requests and time in, a plan out.

use std::collections::HashMap;

use crate::model::slow::Capture;

/// (tgid, connection id, request index): one request for its whole life.
pub type RequestKey = (u32, u64, u32);

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub threshold_ns: u64,
    pub resample_ns: u64,
    pub max_captures: u32,
}

impl Policy {
    /// Threads are watched (stack samples recorded in the kernel) from half the threshold on, so
    /// the first capture has a fresh on-CPU sample or switch-out stack to use.
    fn watch_from_ns(&self) -> u64 {
        self.threshold_ns / 2
    }
}

/// A running request as the scan sees it.
#[derive(Debug, Clone, Copy)]
pub struct Running {
    pub key: RequestKey,
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
}

/// Ask the capture worker for one capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub key: RequestKey,
    pub pid: u32,
    pub tid: u32,
    pub offset_ms: u64,
    /// Kernel stack samples older than this belong to an earlier request of the thread.
    pub start_ns: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Threads to start watching in the kernel.
    pub watch: Vec<u32>,
    /// Threads no watched request uses any more.
    pub unwatch: Vec<u32>,
    pub jobs: Vec<Job>,
}

/// What we know about a watched request.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    pub tid: u32,
    pub taken: u32,
    next_ns: u64,
    pub captures: Vec<Capture>,
    pub missed: u32,
}

impl Watched {
    /// Captures asked for whose result has not come back yet.
    pub fn pending(&self) -> u32 {
        self.taken
            .saturating_sub(self.captures.len() as u32 + self.missed)
    }
}

#[derive(Debug)]
pub struct Watchdog {
    policy: Policy,
    watched: HashMap<RequestKey, Watched>,
    /// Results that arrived after their request ended.
    pub late: u64,
}

impl Watchdog {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            watched: HashMap::new(),
            late: 0,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn plan(&mut self, running: &[Running], now_ns: u64) -> Plan {
        let p = self.policy;
        let mut plan = Plan::default();
        for r in running {
            let age = now_ns.saturating_sub(r.start_ns);
            if age < p.watch_from_ns() {
                continue;
            }
            let w = self.watched.entry(r.key).or_insert_with(|| {
                plan.watch.push(r.tid);
                Watched {
                    tid: r.tid,
                    next_ns: r.start_ns + p.threshold_ns,
                    ..Watched::default()
                }
            });
            if now_ns >= w.next_ns && w.taken < p.max_captures {
                w.taken += 1;
                // On the schedule, not from now: a late timer does not delay every later capture.
                w.next_ns = (w.next_ns + p.resample_ns).max(now_ns + p.resample_ns / 2);
                plan.jobs.push(Job {
                    key: r.key,
                    pid: r.pid,
                    tid: r.tid,
                    offset_ms: age / 1_000_000,
                    start_ns: r.start_ns,
                });
            }
        }
        // Requests gone from the running set ended without us hearing (their record is late or
        // lost): stop watching them.
        let gone: Vec<RequestKey> = self
            .watched
            .keys()
            .filter(|k| !running.iter().any(|r| r.key == **k))
            .copied()
            .collect();
        for key in gone {
            if let Some(tid) = self
                .finish(&key)
                .and_then(|(w, unwatch)| unwatch.then_some(w.tid))
            {
                plan.unwatch.push(tid);
            }
        }
        plan
    }

    /// When `plan` next has something to do for these running requests (a thread to watch, a
    /// capture due): the agent's deadline timer fires then, so captures happen at the threshold
    /// rather than on the next scan.
    pub fn next_due(&self, running: &[Running]) -> Option<u64> {
        let p = self.policy;
        running
            .iter()
            .filter_map(|r| match self.watched.get(&r.key) {
                None => Some(r.start_ns + p.watch_from_ns()),
                Some(w) if w.taken < p.max_captures => Some(w.next_ns),
                Some(_) => None,
            })
            .min()
    }

    /// A capture result came back.
    pub fn record(&mut self, key: &RequestKey, c: Result<Capture, ()>) {
        match (self.watched.get_mut(key), c) {
            (Some(w), Ok(c)) => w.captures.push(c),
            (Some(w), Err(())) => w.missed += 1,
            (None, _) => self.late += 1,
        }
    }

    /// The request ended: its captures, and whether its thread is no longer watched by any request.
    pub fn finish(&mut self, key: &RequestKey) -> Option<(Watched, bool)> {
        let w = self.watched.remove(key)?;
        let still_used = self.watched.values().any(|o| o.tid == w.tid);
        Some((w, !still_used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn dog() -> Watchdog {
        Watchdog::new(Policy {
            threshold_ns: 1000 * MS,
            resample_ns: 500 * MS,
            max_captures: 3,
        })
    }

    fn run(start_ms: u64) -> Running {
        Running {
            key: (1, 2, 3),
            pid: 1,
            tid: 7,
            start_ns: start_ms * MS,
        }
    }

    #[test]
    fn watch_early_capture_at_threshold_then_resample() {
        let mut d = dog();
        assert_eq!(
            d.plan(&[run(0)], 400 * MS),
            Plan::default(),
            "young requests are left alone"
        );
        let p = d.plan(&[run(0)], 600 * MS);
        assert_eq!(p.watch, [7]);
        assert!(p.jobs.is_empty(), "watched, not yet captured");
        let p = d.plan(&[run(0)], 1010 * MS);
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.jobs[0].offset_ms, 1010);
        assert!(
            d.plan(&[run(0)], 1200 * MS).jobs.is_empty(),
            "resample interval not over"
        );
        assert_eq!(d.plan(&[run(0)], 1510 * MS).jobs.len(), 1);
        assert_eq!(d.plan(&[run(0)], 2020 * MS).jobs.len(), 1);
        assert!(
            d.plan(&[run(0)], 9000 * MS).jobs.is_empty(),
            "bounded count per request"
        );
    }

    #[test]
    fn next_due_is_the_watch_then_each_capture() {
        let mut d = dog();
        assert_eq!(d.next_due(&[]), None);
        assert_eq!(
            d.next_due(&[run(0)]),
            Some(500 * MS),
            "watch from half the threshold"
        );
        d.plan(&[run(0)], 500 * MS);
        assert_eq!(d.next_due(&[run(0)]), Some(1000 * MS), "then the threshold");
        // The timer fires 3 ms late: the capture's offset says so, the next one keeps the beat.
        let p = d.plan(&[run(0)], 1003 * MS);
        assert_eq!(p.jobs[0].offset_ms, 1003);
        assert_eq!(d.next_due(&[run(0)]), Some(1500 * MS));
        d.plan(&[run(0)], 1500 * MS);
        d.plan(&[run(0)], 2000 * MS);
        assert_eq!(d.next_due(&[run(0)]), None, "max captures taken");
        // A very late timer (a stalled loop) does not fire a burst of catch-up captures.
        let mut d = dog();
        d.plan(&[run(0)], 1000 * MS);
        d.plan(&[run(0)], 3000 * MS);
        assert_eq!(d.next_due(&[run(0)]), Some(3250 * MS));
    }

    #[test]
    fn finish_returns_captures_and_unwatches() {
        let mut d = dog();
        d.plan(&[run(0)], 1100 * MS);
        d.record(
            &(1, 2, 3),
            Ok(Capture {
                offset_ms: 1100,
                ..Capture::default()
            }),
        );
        d.record(&(1, 2, 3), Err(()));
        let (w, unwatch) = d.finish(&(1, 2, 3)).unwrap();
        assert!(unwatch);
        assert_eq!((w.captures.len(), w.missed), (1, 1));
        d.record(&(1, 2, 3), Ok(Capture::default()));
        assert_eq!(d.late, 1);
        assert!(
            d.finish(&(1, 2, 3)).is_none(),
            "fast or unknown requests have nothing"
        );
    }

    #[test]
    fn vanished_requests_are_unwatched() {
        let mut d = dog();
        d.plan(&[run(0)], 1100 * MS);
        let p = d.plan(&[], 1200 * MS);
        assert_eq!(p.unwatch, [7]);
    }
}
