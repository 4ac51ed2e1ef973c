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
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }
}
