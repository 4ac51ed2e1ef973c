//! Explicit targets the kernel forgot while they live on.
//!
//! The kernel's exit program unmarks a process when a task whose tid equals its pid exits. An
//! exec from a thread other than the main one makes the old main thread exit exactly that way
//! (the kernel's de_thread), and the process, its pid unchanged, was traced no more. Each scan
//! marks the `--pid` targets (and a launched command) again when they are still the same
//! process (same start time) but no longer marked; requests in between (≤ one scan) are not
//! seen. The stack resolver forgets what it knew of the old image. Counted: the summary's
//! user-space line says how often it happened.

use crate::probes::kernel::Kernel;

#[derive(Default)]
pub struct Retarget {
    /// (pid, start time in clock ticks since boot): a reused pid is not ours.
    pids: Vec<(u32, u64)>,
    pub remarked: u64,
    /// The stack resolver: what it keeps for a pid (its CPython reader's addresses, its
    /// mappings) belongs to the old image and is dropped.
    pub stacks: Option<crate::symbols::Stacks>,
}

impl Retarget {
    pub fn add(&mut self, pid: u32) {
        if let Some(t) = start_time(pid) {
            self.pids.push((pid, t));
        }
    }

    /// Mark again the targets still alive that the kernel forgot; their pids.
    pub fn check(&mut self, kernel: &mut dyn Kernel) -> Vec<u32> {
        let mut again = Vec::new();
        for &(pid, started) in &self.pids {
            if start_time(pid) == Some(started) && kernel.remark(pid) {
                if let Some(s) = &self.stacks {
                    // Counted with the exited processes' state in the summary's memory line.
                    s.try_run(move |r| crate::symbols::forget_exited(r, &[pid], false));
                }
                again.push(pid);
            }
        }
        self.remarked += again.len() as u64;
        again
    }
}

fn start_time(pid: u32) -> Option<u64> {
    start_time_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of /proc/PID/stat (starttime), counted after the command's closing parenthesis
/// (the command may hold spaces and parentheses). A zombie has none to offer: None.
fn start_time_of(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": field 3 (state) is the first; starttime is field 22.
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(22 - 4)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::start_time_of;

    #[test]
    fn start_time_after_an_awkward_command_name() {
        let stat = "4126 (py (x) 1) S 1 4126 4126 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 3 0 \
                    987654 0 0";
        assert_eq!(start_time_of(stat), Some(987654));
        let zombie = "4126 (python) Z 1 4126 4126 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 3 0 5 0";
        assert_eq!(start_time_of(zombie), None);
        assert_eq!(start_time_of("garbage"), None);
    }
}
