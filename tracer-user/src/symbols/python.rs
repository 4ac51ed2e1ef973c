//! The CPython processes we know of: one out-of-process reader (`crate::python`) per process,
//! with its code-object cache, shared by captures (a live thread's stack, read now) and the
//! profiler (frames the kernel walked, resolved from their code objects). A Python process is
//! also registered with the kernel walker, when there is one.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use tracer_common::PyProcLayout;

use crate::{
    model::slow::Frame,
    python::{PyError, PyFrame, PythonProcess},
};

/// The kernel walker's table of Python processes.
pub type KernelTable = BpfHashMap<MapData, u32, PyProcLayout>;

/// A process found not to be Python (or that could not be looked at) is looked at again after
/// this (it may exec into Python, or have been probed before its runtime was mapped), at most
/// `MAX_PROBES` times.
const REPROBE: Duration = Duration::from_secs(2);
const MAX_PROBES: u32 = 5;
/// A live thread can move under a read; the reader rejects such a torn read, and reading again
/// at once usually gets a consistent one. This many more tries.
const TORN_RETRIES: u32 = 3;

enum Proc {
    Python(Box<PythonProcess>),
    NotPython {
        at: Instant,
        probes: u32,
        /// Why it could not be looked at, if that is why (told to captures).
        error: Option<String>,
    },
}

pub struct Pythons {
    procs: HashMap<u32, Proc>,
    /// None in unit tests, and when nothing is profiled (no kernel walker).
    kernel: Option<KernelTable>,
    /// Python processes found (and registered with the kernel walker, when there is one).
    pub found: u64,
}

impl Pythons {
    pub fn new(kernel: Option<KernelTable>) -> Self {
        Self {
            procs: HashMap::new(),
            kernel,
            found: 0,
        }
    }

    pub fn is_python(&self, pid: u32) -> bool {
        matches!(self.procs.get(&pid), Some(Proc::Python(_)))
    }

    /// Look for CPython in `pid` (unless known, or looked at too recently or too often) and,
    /// when found, tell the kernel walker how to read it.
    pub fn probe(&mut self, pid: u32) {
        let probes = match self.procs.get(&pid) {
            Some(Proc::NotPython { at, probes, .. }) => {
                if at.elapsed() < REPROBE || *probes >= MAX_PROBES {
                    return;
                }
                *probes
            }
            Some(Proc::Python(_)) => return,
            None => 0,
        };
        let not_python = |error: Option<String>| Proc::NotPython {
            at: Instant::now(),
            probes: probes + 1,
            error,
        };
        match PythonProcess::attach(pid) {
            Ok(Some(p)) => {
                self.register(pid, &p);
                self.procs.insert(pid, Proc::Python(Box::new(p)));
            }
            Ok(None) => {
                self.procs.insert(pid, not_python(None));
            }
            Err(e) => {
                log::debug!("pid {pid}: looking for Python: {e}");
                self.procs
                    .insert(pid, not_python(Some(format!("python: {e}"))));
            }
        }
    }

    fn register(&mut self, pid: u32, p: &PythonProcess) {
        let version = p.version();
        match self.kernel.as_mut() {
            Some(table) => match table.insert(pid, p.kernel_layout(), 0) {
                Ok(()) => {
                    self.found += 1;
                    log::info!("pid {pid}: Python {version:?}, frames walked in the kernel");
                }
                Err(e) => log::warn!("pid {pid}: registering its Python layout: {e}"),
            },
            None => {
                self.found += 1;
                log::info!("pid {pid}: Python {version:?}");
            }
        }
    }

    /// Python frames of thread `tid`, innermost first, read now; empty when the process is not
    /// Python or the thread runs none now.
    pub fn stack(&mut self, pid: u32, tid: u32) -> Result<Vec<Frame>, String> {
        self.probe(pid);
        let proc = match self.procs.get_mut(&pid) {
            Some(Proc::Python(p)) => p,
            Some(Proc::NotPython { error: Some(e), .. }) => return Err(e.clone()),
            _ => return Ok(Vec::new()),
        };
        let mut tries = 0;
        let frames = loop {
            match proc.stack(tid) {
                Ok(f) => break f,
                Err(PyError::Torn(..)) if tries < TORN_RETRIES => tries += 1,
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

    /// Frames the kernel walked, `(code object, instruction)` innermost first, resolved from
    /// their code objects (None each when unreadable); empty when `pid` is not known as Python.
    pub fn resolve(&mut self, pid: u32, raw: &[(u64, u64)]) -> Vec<Option<PyFrame>> {
        match self.procs.get_mut(&pid) {
            Some(Proc::Python(p)) => p.resolve(raw),
            _ => Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }
}

/// A process's reader (and code objects), and its registration with the kernel walker.
impl crate::reaper::PerProcess for Pythons {
    fn pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    fn forget_process(&mut self, pid: u32) -> bool {
        // The kernel drops it at exit; this covers a registration that raced the exit.
        if let Some(m) = self.kernel.as_mut() {
            let _ = m.remove(&pid);
        }
        self.procs.remove(&pid).is_some()
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
        let mut p = Pythons::new(None);
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

    #[test]
    fn a_process_not_python_is_looked_at_again_later_a_few_times() {
        let mut p = Pythons::new(None);
        let me = std::process::id();
        p.probe(me);
        let probes = |p: &Pythons| match p.procs.get(&me) {
            Some(Proc::NotPython { probes, .. }) => *probes,
            _ => panic!("not remembered as not Python"),
        };
        assert_eq!(probes(&p), 1);
        p.probe(me);
        assert_eq!(probes(&p), 1, "not again before REPROBE");
        for n in 2..=MAX_PROBES + 2 {
            if let Some(Proc::NotPython { at, .. }) = p.procs.get_mut(&me) {
                *at -= REPROBE;
            }
            p.probe(me);
            assert_eq!(probes(&p), n.min(MAX_PROBES));
        }
    }
}
