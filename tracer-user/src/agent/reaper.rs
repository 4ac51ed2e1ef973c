//! The agent's side of keeping memory flat: every scan, what its components keep for processes
//! that exited is dropped (see `crate::reaper`). The profiler and capture threads sweep their own
//! state on their own clocks.

use super::Agent;
use crate::{
    model::tracker::Scan,
    procfs,
    reaper::{self, PerProcess, STATS},
};

impl Agent {
    /// Forget the processes this scan found dead on a connection and, on the periodic sweep,
    /// every process any component holds something for that no longer exists. Called once per
    /// scan, after the scan's requests were finished (they still need their process's state).
    pub(super) fn reap(&mut self, scan: &Scan) {
        let mut parts: Vec<&mut dyn PerProcess> = vec![
            &mut self.tracker,
            &mut self.ports,
            &mut self.calls,
            &mut self.cgroup_labels,
        ];
        if let Some(a) = self.actor.as_mut() {
            parts.push(a);
        }
        if let Some(p) = self.profiler.as_mut() {
            parts.push(p);
        }
        let gone = reaper::reap(&mut parts, &scan.exited, scan.sweep, procfs::alive);
        reaper::add(&STATS.forgotten_agent, gone.len() as u64);
    }
}
