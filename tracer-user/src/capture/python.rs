//! Python frames of a thread, through the out-of-process CPython reader (`crate::python`),
//! one reader per process, attached on first use.

use std::collections::HashMap;

use crate::{model::slow::Frame, python::PythonProcess};

#[derive(Default)]
pub struct PythonStacks {
    /// None: the process has no supported CPython (remembered, not retried).
    procs: HashMap<u32, Option<PythonProcess>>,
}

impl PythonStacks {
    /// Frames innermost first; empty when the process is not Python or the thread runs none now.
    pub fn stack(&mut self, pid: u32, tid: u32) -> Result<Vec<Frame>, String> {
        let entry = match self.procs.get_mut(&pid) {
            Some(e) => e,
            None => {
                let p = PythonProcess::attach(pid).map_err(|e| format!("python: {e}"))?;
                self.procs.entry(pid).or_insert(p)
            }
        };
        let Some(proc) = entry else {
            return Ok(Vec::new());
        };
        // A thread that keeps running can move under a read; the reader rejects such a torn
        // read, and a retry a moment later usually gets a consistent one.
        let mut tries = 0;
        let frames = loop {
            match proc.stack(tid) {
                Ok(f) => break f,
                Err(e) if tries < 3 && matches!(e, crate::python::PyError::Torn(..)) => tries += 1,
                Err(e) => return Err(format!("python: {e}")),
            }
        };
        Ok(frames
            .into_iter()
            .map(|f| Frame {
                function: f.function,
                file: Some(f.file),
                line: f.line,
                module: None,
            })
            .collect())
    }

    /// The process is gone (its pid may be reused).
    pub fn forget(&mut self, pid: u32) -> bool {
        self.procs.remove(&pid).is_some()
    }
}

impl crate::reaper::PerProcess for PythonStacks {
    fn pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    fn forget_process(&mut self, pid: u32) -> bool {
        self.forget(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reaper::PerProcess as _;

    #[test]
    fn forgets_one_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (other, me) = (child.id(), std::process::id());
        let mut p = PythonStacks::default();
        // Neither runs Python: remembered as such (the real attach path), no frames.
        for pid in [me, other] {
            assert_eq!(p.stack(pid, pid).map(|f| f.len()), Ok(0));
        }
        let mut pids = p.pids();
        pids.sort_unstable();
        assert_eq!(pids.len(), 2);
        child.kill().unwrap();
        child.wait().unwrap();
        let gone = crate::reaper::reap(&mut [&mut p], &[], true, crate::procfs::alive);
        assert_eq!(gone, [other]);
        assert_eq!(p.pids(), [me]);
    }
}
