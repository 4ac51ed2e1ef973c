//! Python stacks of a live process, read from outside without pausing it.
//!
//! CPython 3.9 and 3.10 link heap frame objects (`PyFrameObject.f_back`) from
//! `tstate->frame`; see offsets39.rs. The rest of this describes 3.11+.
//!
//! CPython 3.11–3.13 keep each thread's frames in a per-thread "data stack" (chunks of
//! `_PyInterpreterFrame`s linked by `previous`), and each frame points at its code object. We
//! find the runtime (`_PyRuntime`) from the ELF symbols, walk interpreters → thread states to the
//! thread whose `native_thread_id` is the one asked for, and follow its frames:
//!
//! ```text
//! _PyRuntime.interpreters.head → PyInterpreterState.threads.head → PyThreadState (…next)
//!   → current frame (3.11/3.12: tstate->cframe->current_frame; 3.13: tstate->current_frame)
//!   → _PyInterpreterFrame.previous → …   each with f_code/f_executable → PyCodeObject
//! ```
//!
//! All reads are `process_vm_readv` (memory.rs). Per `stack()` call, once warm: one read of the
//! thread state; one call copying the thread's current data-stack chunk twice, each copy followed
//! by the innermost-frame pointer (most frames are in it); one read per frame outside it (3.12+
//! shim frames on the C stack, generator and coroutine frames, plus one more to re-read those);
//! and one batched read of every code object's header, which also validates the code-object
//! cache. Measured: 3 system calls and ~14 µs for a 30-frame stack, 4 on 3.12/3.13.
//!
//! The thread keeps running while we read, so anything read can be stale or half-written. Every
//! pointer is checked, loops are bounded (256 frames, 1 KiB strings, 64 KiB location tables),
//! and the frames are compared between the two copies: only the part of the stack that held
//! still is returned (walk.rs). An inconsistency nothing can be salvaged from is
//! [`PyError::Torn`]: read again.

mod cli;
mod codes;
mod discover;
#[cfg(test)]
mod fake;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
mod layout;
mod linetable;
mod memory;
mod offsets310;
mod offsets311;
mod offsets312;
// Only a reference for the tests: a live 3.13 is read through its `_Py_DebugOffsets`.
#[cfg(test)]
mod offsets313;
mod offsets39;
#[cfg(test)]
mod recorded;
mod strings;
#[cfg(test)]
mod tests;
mod threads;
mod walk;

use std::io;

pub use cli::{cli_main, PyStackArgs};

use codes::CodeCache;
use layout::Layout;
use memory::{AddressSpace, ProcessMemory};
use threads::Threads;

/// Most frames returned for one thread; deeper stacks are cut (outermost frames dropped).
pub const MAX_FRAMES: usize = 256;

/// One Python frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyFrame {
    /// `co_qualname`, e.g. `Handler.get`.
    pub function: String,
    /// `co_filename`.
    pub file: String,
    /// Line being executed, from the location table; `None` for compiler-generated code.
    pub line: Option<u32>,
}

/// Why a stack could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PyError {
    #[error("process {0} is gone")]
    ProcessGone(u32),
    #[error("thread {tid} is not a thread of process {pid}")]
    NoSuchThread { pid: u32, tid: u32 },
    #[error("not allowed to read the memory of process {0} (needs root or CAP_SYS_PTRACE)")]
    Permission(u32),
    #[error("reading {len} bytes at {addr:#x} in the target faulted")]
    Fault { addr: u64, len: usize },
    /// The thread changed its stack while we read it; reading again usually succeeds.
    #[error("inconsistent read, the thread moved on while we read it: {0}")]
    Torn(&'static str),
    #[error("unsupported Python: {0}")]
    Unsupported(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl PyError {
    /// An error reading /proc/PID/...: a vanished process is not an I/O problem.
    fn from_proc(pid: u32, what: &str, e: io::Error) -> PyError {
        match e.kind() {
            io::ErrorKind::NotFound => PyError::ProcessGone(pid),
            io::ErrorKind::PermissionDenied => PyError::Permission(pid),
            _ => PyError::Io {
                what: format!("/proc/{pid}/{what}"),
                source: e,
            },
        }
    }
}

/// Where `struct pthread.tid` is in `pid`'s libc: from its `_thread_db_pthread_tid` descriptor,
/// or glibc's x86_64 value when the libc publishes none.
fn pthread_tid(pid: u32, mem: &mut ProcessMemory) -> u64 {
    let from_libc = discover::pthread_tid_descriptor(pid).and_then(|addr| {
        let mut desc = [0u8; 12];
        mem.read_exact(addr, &mut desc).ok()?;
        discover::pthread_tid_offset(&desc)
    });
    from_libc.unwrap_or_else(|| {
        log::debug!(
            "pid {pid}: its libc does not say where a thread's TID is; assuming glibc's {}",
            layout::GLIBC_PTHREAD_TID
        );
        layout::GLIBC_PTHREAD_TID
    })
}

/// A process running CPython 3.9–3.13, ready to have its threads' stacks read.
pub struct PythonProcess {
    version: (u8, u8),
    layout: Layout,
    /// Address of `_PyRuntime` in the target.
    runtime: u64,
    /// Address of `PyCode_Type`: what a code object's `ob_type` must be.
    code_type: u64,
    mem: Box<dyn AddressSpace>,
    threads: Threads,
    codes: CodeCache,
    last_syscalls: u32,
    /// The process's PID namespace when it is not ours (`procfs::foreign_pid_namespace`): the
    /// kernel walker then matches thread states by the TID the process sees.
    pidns: Option<(u64, u64)>,
}

impl PythonProcess {
    /// Find the CPython runtime of `pid`. `Ok(None)` if the process has no CPython runtime at
    /// all (the reason is logged at debug level); [`PyError::Unsupported`] naming the version if
    /// it has one we cannot read.
    pub fn attach(pid: u32) -> Result<Option<PythonProcess>, PyError> {
        let rt = match discover::find_runtime(pid)? {
            Ok(rt) => rt,
            Err(why) => {
                log::debug!("pid {pid}: no CPython runtime found: {}", why.join("; "));
                return Ok(None);
            }
        };
        let mut mem = ProcessMemory::new(pid);
        let version = match rt.py_version {
            // PY_VERSION_HEX: 0xMMmmPPLS
            Some(addr) => {
                let hex = mem.read_u64(addr)?;
                (((hex >> 24) & 0xff) as u8, ((hex >> 16) & 0xff) as u8)
            }
            // Py_Version only exists since 3.11: an older Python, named by its file.
            None => discover::version_from_name(&rt.path).ok_or_else(|| {
                PyError::Unsupported(format!(
                    "{}: a CPython of unknown version (no Py_Version, no version in its \
                     name; supported: {})",
                    rt.path,
                    layout::SUPPORTED
                ))
            })?,
        };
        let layout = match version {
            (3, 9..=12) => {
                let mut l = Layout::for_version(version.0, version.1)?;
                if let layout::ThreadId::Pthread { tid } = &mut l.thread_id {
                    *tid = pthread_tid(pid, &mut mem);
                }
                l
            }
            // 3.13 and later publish their layout; a later version whose `_Py_DebugOffsets` we
            // cannot read is refused there, by name.
            (3, 13..) => {
                let mut raw = vec![0u8; layout::DEBUG_OFFSETS_LEN];
                mem.read_exact(rt.runtime, &mut raw)?;
                let got = layout::from_debug_offsets(&raw)?;
                log::debug!(
                    "pid {pid}: layout from the _Py_DebugOffsets of {:#x}",
                    got.version_hex
                );
                got.layout
            }
            (major, minor) => {
                return Err(PyError::Unsupported(format!(
                    "{} is Python {major}.{minor} (supported: {})",
                    rt.path,
                    layout::SUPPORTED
                )))
            }
        };
        log::debug!(
            "pid {pid}: Python {}.{} in {}, _PyRuntime at {:#x}",
            version.0,
            version.1,
            rt.path,
            rt.runtime
        );
        Ok(Some(PythonProcess {
            version,
            layout,
            runtime: rt.runtime,
            code_type: rt.code_type,
            mem: Box::new(mem),
            threads: Threads::new(pid)?,
            codes: CodeCache::default(),
            last_syscalls: 0,
            pidns: crate::procfs::foreign_pid_namespace(pid),
        }))
    }

    /// `(major, minor)`, e.g. `(3, 12)`.
    pub fn version(&self) -> (u8, u8) {
        self.version
    }

    /// Python frames of host thread `tid`, innermost first. Empty if that thread runs no Python
    /// now. For a thread calling and returning faster than we read, the innermost frames that
    /// changed while we read are left out (what is returned existed as a whole); when nothing
    /// held still it is [`PyError::Torn`]: try again. Deeper than [`MAX_FRAMES`]: cut.
    pub fn stack(&mut self, tid: u32) -> Result<Vec<PyFrame>, PyError> {
        let before = self.mem.syscalls();
        let proc_before = self.threads.proc_syscalls();
        let result = walk::stack(self, tid);
        self.last_syscalls =
            self.mem.syscalls() - before + (self.threads.proc_syscalls() - proc_before);
        result
    }

    /// What the in-kernel frame walker needs to know about this process.
    pub fn kernel_layout(&self) -> tracer_common::PyProcLayout {
        use tracer_common::profile::NO_FIELD;
        let l = &self.layout;
        let (tstate_frame, cframe_current) = match l.current_frame {
            layout::CurrentFrame::ViaCFrame {
                tstate_cframe,
                cframe_current,
            } => (tstate_cframe as u32, cframe_current as u32),
            layout::CurrentFrame::Direct {
                tstate_current_frame,
            } => (tstate_current_frame as u32, NO_FIELD),
        };
        let objects = matches!(l.frames, layout::Frames::Objects { .. });
        tracer_common::PyProcLayout {
            runtime: self.runtime,
            runtime_interp_head: l.runtime_interpreters_head as u32,
            interp_threads_head: l.interp_threads_head as u32,
            tstate_next: l.tstate_next as u32,
            tstate_native_thread_id: l.tstate_native_thread_id as u32,
            tstate_frame,
            cframe_current,
            frame_previous: l.frame_previous as u32,
            frame_code: l.frame_code as u32,
            frame_instr: l.frame_instr as u32,
            frame_owner: if objects {
                NO_FIELD
            } else {
                l.frame_owner as u32
            },
            // 3.11 marks the first frame of each eval-loop call with `is_entry`, just before
            // `owner`; 3.12+ push a shim frame instead; 3.9/3.10 frames are each their own call.
            frame_is_entry: if self.version == (3, 11) {
                l.frame_owner as u32 - 1
            } else {
                NO_FIELD
            },
            pthread_tid: match l.thread_id {
                layout::ThreadId::Native => NO_FIELD,
                layout::ThreadId::Pthread { tid } => tid as u32,
            },
            frame_objects: u32::from(objects),
            _pad: 0,
            pidns_dev: self.pidns.map_or(0, |n| n.0),
            pidns_ino: self.pidns.map_or(0, |n| n.1),
        }
    }

    /// Resolve frames the kernel walked, `(code object, instruction pointer)` innermost first,
    /// to function, file and line. A frame whose code object cannot be read (freed since, or a
    /// torn walk) comes back `None`.
    pub fn resolve(&mut self, frames: &[(u64, u64)]) -> Vec<Option<PyFrame>> {
        let mut addrs: Vec<u64> = frames.iter().map(|f| f.0).filter(|a| *a != 0).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let layout = self.layout;
        let mem = self.mem.as_mut();
        let codes = match self.codes.resolve(mem, &layout, self.code_type, &addrs) {
            Ok(c) => c,
            // One bad address must not cost the others.
            Err(_) => addrs
                .iter()
                .filter_map(|a| {
                    self.codes
                        .resolve(mem, &layout, self.code_type, &[*a])
                        .ok()
                        .and_then(|mut m| m.remove(a).map(|c| (*a, c)))
                })
                .collect(),
        };
        frames
            .iter()
            .map(|(code, instr)| {
                let c = codes.get(code)?;
                Some(PyFrame {
                    function: c.qualname.clone(),
                    file: c.filename.clone(),
                    line: c.line(&layout, *code, *instr),
                })
            })
            .collect()
    }

    /// System calls made by the last [`stack`](Self::stack) call: `process_vm_readv`s, plus
    /// three per /proc file read (open, read, close) when a thread's namespace TID had to be
    /// looked up.
    pub fn last_syscalls(&self) -> u32 {
        self.last_syscalls
    }
}
