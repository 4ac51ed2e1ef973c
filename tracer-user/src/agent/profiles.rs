//! Slow requests waiting for their own samples (their flamegraph) from the profiler thread.
//! The agent asks and goes on; the answer comes back on a channel polled every drain. Waiting
//! in place held the event loop behind the profiler's backlog, and every capture due
//! meanwhile was taken late (seen: 50-70 ms on 2 busy cores, a 300 ms threshold captured at
//! 372 ms).

use std::time::{Duration, Instant};

use super::{Agent, Consumer};
use crate::{
    capture::watchdog::RequestKey,
    model::{slow::SlowRequest, Request},
};

/// Longest a slow request waits for its own samples while tracing: the profiler thread is
/// that far behind only under a backlog that is dropping samples anyway.
const PROFILE_WAIT: Duration = Duration::from_secs(5);
/// At the end: longest wait for the last answers.
const FINAL_WAIT: Duration = Duration::from_secs(2);

pub(super) struct Awaiting {
    key: RequestKey,
    req: Box<Request>,
    slow: SlowRequest,
    since: Instant,
}

impl Agent {
    /// Hand `req` out once its own samples are in; right away when the profiler cannot be
    /// asked (its queue is full: counted).
    pub(super) fn await_profile(
        &mut self,
        key: RequestKey,
        req: Box<Request>,
        slow: SlowRequest,
        out: &mut dyn Consumer,
    ) -> anyhow::Result<()> {
        if !self.profiler.as_mut().is_some_and(|p| p.ask_request(key)) {
            return self.emit(req, Some(slow), out);
        }
        self.awaiting.push(Awaiting {
            key,
            req,
            slow,
            since: Instant::now(),
        });
        Ok(())
    }

    /// Slow requests whose samples came back go out, and those that waited `PROFILE_WAIT`
    /// without them; when `all`, every one, after waiting up to `FINAL_WAIT` for the last
    /// answers.
    pub(super) fn profiles_in(&mut self, all: bool, out: &mut dyn Consumer) -> anyhow::Result<()> {
        let Some(p) = self.profiler.as_mut() else {
            return Ok(());
        };
        if self.awaiting.is_empty() {
            return Ok(());
        }
        let mut answers = p.taken();
        if all {
            let end = Instant::now() + FINAL_WAIT;
            while answers.len() < self.awaiting.len() {
                let left = end.saturating_duration_since(Instant::now());
                match p.wait_taken(left) {
                    Some(a) => answers.push(a),
                    None => break,
                }
            }
        }
        let mut ready = Vec::new();
        for (key, profile) in answers {
            // An answer for a request that stopped waiting is dropped with it.
            if let Some(i) = self.awaiting.iter().position(|a| a.key == key) {
                let mut a = self.awaiting.swap_remove(i);
                a.slow.profile = profile;
                ready.push(a);
            }
        }
        let now = Instant::now();
        let (late, keep): (Vec<Awaiting>, Vec<Awaiting>) = std::mem::take(&mut self.awaiting)
            .into_iter()
            .partition(|a| all || now.duration_since(a.since) >= PROFILE_WAIT);
        self.awaiting = keep;
        p.gave_up(late.len() as u64);
        ready.extend(late);
        // In the order they ended.
        ready.sort_by_key(|a| a.since);
        for a in ready {
            self.emit(a.req, Some(a.slow), out)?;
        }
        Ok(())
    }
}
