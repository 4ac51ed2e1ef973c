//! Memory that stays flat: what is kept per process is dropped when the process exits, and the
//! caches that are not per process are capped (`crate::bounded`), every eviction counted here
//! and shown in the run summary.
//!
//! Each component that keeps something per process implements [`PerProcess`]. Dead processes
//! are found two ways: the agent's scan sees connections of dead processes (immediately), and a
//! sweep every [`SWEEP_EVERY`] checks every pid any component holds (a /proc read each), which
//! catches the processes that exit between requests with no connection open (a pre-fork
//! server recycling workers). The agent's components are reaped from its scan
//! (`Agent::reap`); the profiler and the stack resolver threads sweep their own.

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// How often every known pid is checked.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Something that keeps state per process.
pub trait PerProcess {
    /// The processes it holds anything for.
    fn pids(&self) -> Vec<u32>;
    /// Drop everything it holds for `pid`; true if there was anything.
    fn forget_process(&mut self, pid: u32) -> bool;
}

/// Forget `dead` (known dead) and, when `sweep`, every pid a part holds that `alive` says is
/// gone, in every part. Returns the pids forgotten that some part held something for.
pub fn reap(
    parts: &mut [&mut dyn PerProcess],
    dead: &[u32],
    sweep: bool,
    alive: impl Fn(u32) -> bool,
) -> Vec<u32> {
    let mut gone: BTreeSet<u32> = dead.iter().copied().collect();
    if sweep {
        let held: BTreeSet<u32> = parts.iter().flat_map(|p| p.pids()).collect();
        gone.extend(held.into_iter().filter(|p| !alive(*p)));
    }
    gone.into_iter()
        .filter(|&pid| {
            parts
                .iter_mut()
                .fold(false, |held, p| p.forget_process(pid) | held)
        })
        .collect()
}

/// A timer for sweeps on a thread with no other clock.
pub struct Sweep {
    every: Duration,
    last: Instant,
}

impl Sweep {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: Instant::now(),
        }
    }

    /// True at most once per period.
    pub fn due(&mut self) -> bool {
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            true
        } else {
            false
        }
    }
}

/// What was freed and evicted, over the whole run (all threads).
pub struct MemoryStats {
    /// Exited processes whose state was dropped: by the agent (request tracking, ports,
    /// downstream connections, signals), the profiler (its open requests' own samples) and the
    /// stack resolver (Python readers, process maps, symbols, symbolizer files).
    pub forgotten_agent: AtomicU64,
    pub forgotten_profiler: AtomicU64,
    pub forgotten_stacks: AtomicU64,
    /// Resolved native and kernel addresses evicted from the stack resolver's caches.
    pub symbols: AtomicU64,
    /// Process memory maps evicted (more live processes than the cap).
    pub maps: AtomicU64,
    /// Python code objects (names, files, line tables) evicted from a process's cache.
    pub code_objects: AtomicU64,
    /// ELF files the symbolizer let go (of exited processes, replaced on disk, over the cap).
    pub symbolizer_files: AtomicU64,
    /// Downstream connections (peer, protocol) evicted.
    pub downstream_conns: AtomicU64,
    /// Served requests whose downstream calls were dropped because too many were open: their
    /// `downstream` summary is missing or short.
    pub downstream_requests: AtomicU64,
    /// Requests whose own profile was dropped because too many were open (no slow/<id>.svg).
    pub request_profiles: AtomicU64,
    /// Samples whose stack did not fit in the profile's capped frame/stack tables: counted under
    /// a `[profile table full]` frame instead of their own stack.
    pub profile_samples_folded: AtomicU64,
}

impl MemoryStats {
    pub const fn new() -> Self {
        Self {
            forgotten_agent: AtomicU64::new(0),
            forgotten_profiler: AtomicU64::new(0),
            forgotten_stacks: AtomicU64::new(0),
            symbols: AtomicU64::new(0),
            maps: AtomicU64::new(0),
            code_objects: AtomicU64::new(0),
            symbolizer_files: AtomicU64::new(0),
            downstream_conns: AtomicU64::new(0),
            downstream_requests: AtomicU64::new(0),
            request_profiles: AtomicU64::new(0),
            profile_samples_folded: AtomicU64::new(0),
        }
    }

    /// Lines for the summary of `record` and `top`: always one saying what was freed, and a
    /// warning when a cap cost data (not just a re-read).
    pub fn report(&self) -> Vec<String> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut lines = vec![format!(
            "memory: state of exited processes freed ({} agent, {} profiler, {} stack resolver); \
             capped caches evicted {} resolved addresses, {} process maps, {} code objects, \
             {} symbolizer files, {} downstream connections",
            g(&self.forgotten_agent),
            g(&self.forgotten_profiler),
            g(&self.forgotten_stacks),
            g(&self.symbols),
            g(&self.maps),
            g(&self.code_objects),
            g(&self.symbolizer_files),
            g(&self.downstream_conns),
        )];
        let (requests, profiles, folded) = (
            g(&self.downstream_requests),
            g(&self.request_profiles),
            g(&self.profile_samples_folded),
        );
        if requests + profiles + folded > 0 {
            lines.push(format!(
                "WARNING: memory caps cost data: {requests} open requests' downstream calls and \
                 {profiles} open requests' own profiles evicted (a slow one among them lacks its \
                 downstream summary or slow/<id>.svg); {folded} samples counted under \
                 [profile table full]"
            ));
        }
        lines
    }
}

impl Default for MemoryStats {
    fn default() -> Self {
        Self::new()
    }
}

pub static STATS: MemoryStats = MemoryStats::new();

/// Count `n` in `counter`.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A component with a few entries per pid.
    #[derive(Default)]
    struct Held(HashMap<u32, u32>);

    impl PerProcess for Held {
        fn pids(&self) -> Vec<u32> {
            self.0.keys().copied().collect()
        }
        fn forget_process(&mut self, pid: u32) -> bool {
            self.0.remove(&pid).is_some()
        }
    }

    #[test]
    fn known_dead_are_forgotten_at_once_others_at_the_sweep() {
        let mut a = Held([(1, 0), (2, 0)].into());
        let mut b = Held([(2, 0), (3, 0)].into());
        let alive = |p: u32| p == 1;
        // No sweep: only the pid the scan found dead.
        let gone = reap(&mut [&mut a, &mut b], &[2, 99], false, alive);
        assert_eq!(gone, [2], "99 held nothing: not counted");
        assert_eq!(b.pids(), [3]);
        // The sweep finds 3 (dead, no connection) and keeps 1.
        let gone = reap(&mut [&mut a, &mut b], &[], true, alive);
        assert_eq!(gone, [3]);
        assert_eq!(a.pids(), [1]);
        assert!(b.pids().is_empty());
    }

    #[test]
    fn a_real_dead_process_is_swept() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (dead, me) = (child.id(), std::process::id());
        let mut a = Held([(dead, 0), (me, 0)].into());
        assert!(reap(&mut [&mut a], &[], true, crate::procfs::alive).is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        let gone = reap(&mut [&mut a], &[], true, crate::procfs::alive);
        assert_eq!(gone, [dead]);
        assert_eq!(a.pids(), [me]);
    }

    #[test]
    fn the_report_warns_only_when_data_was_lost() {
        let s = MemoryStats::new();
        add(&s.forgotten_profiler, 812);
        add(&s.symbols, 5);
        let lines = s.report();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("812 profiler"), "{lines:?}");
        assert!(lines[0].contains("5 resolved addresses"), "{lines:?}");
        add(&s.profile_samples_folded, 3);
        let lines = s.report();
        assert!(lines[1].starts_with("WARNING") && lines[1].contains("3 samples"));
    }
}
