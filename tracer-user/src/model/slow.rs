//! Slow requests: a request over the threshold, with where its thread was while it ran.

use serde::Serialize;

use super::Request;

/// One symbolized frame.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct Frame {
    pub function: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Shared object or executable, for native frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// Where a slow request's thread was at one moment.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Capture {
    /// Time since the request started, in ms.
    pub offset_ms: u64,
    /// `running` (on a CPU), `runnable` (waiting for one), `blocked`, or `unknown`.
    pub state: String,
    /// The syscall the thread is in, when blocked (e.g. `clock_nanosleep`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// Python frames, innermost first (reports print them outermost first, as Python does).
    pub python: Vec<Frame>,
    /// Native user frames, innermost first.
    pub native: Vec<Frame>,
    /// Kernel frames, innermost first.
    pub kernel: Vec<Frame>,
    /// Where the native frames came from: `on-cpu sample`, `switch-out`, `syscall pc` or `none`.
    pub native_source: String,
    /// How long taking this capture took, in µs (reads and symbolization).
    pub took_us: u64,
    /// Whose stack this is when it is not simply the request's thread: `event_loop` for an
    /// asyncio loop thread, which serves many requests at once, so the stack is whatever the
    /// loop ran at that instant (this request's task, another's, or the loop waiting in its
    /// selector), not necessarily this request's code. Absent for a thread serving one request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_of: Option<&'static str>,
    /// What could not be read, and why (a capture is still useful when one part fails).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// A signal that ended (or hit) a request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Killed {
    pub signal: String,
    pub signo: u32,
    /// Sender process (e.g. the gunicorn master).
    pub sender_pid: u32,
    /// When the signal was generated, since request start.
    pub at_ms: u64,
    /// Whether the serving process died with the request open (otherwise the request still
    /// ended, e.g. gunicorn's SIGABRT handler answering 500).
    pub process_died: bool,
}

/// One line of slow.jsonl.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlowRequest {
    /// `slow` or `killed`.
    pub kind: &'static str,
    pub threshold_ms: u64,
    #[serde(flatten)]
    pub request: Request,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub killed: Option<Killed>,
    pub captures: Vec<Capture>,
    /// Captures that could not be taken (queue full, thread gone).
    #[serde(skip_serializing_if = "is_zero")]
    pub captures_missed: u32,
    /// The request's own profile samples, when profiling: the files sink draws them as
    /// slow/<report>.svg with `--flamegraph`. Not a field of slow.jsonl.
    #[serde(skip)]
    pub profile: Option<crate::model::profile::RequestProfile>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Signal names for the numbers x86-64 and arm64 share.
pub fn signal_name(sig: u32) -> String {
    const NAMES: [&str; 32] = [
        "0",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    NAMES
        .get(sig as usize)
        .map_or_else(|| format!("SIG{sig}"), |n| (*n).to_owned())
}

/// Signals whose default action ends the process: the ones that explain a dead worker.
pub fn is_fatal(sig: u32) -> bool {
    matches!(sig, 1..=4 | 6..=9 | 11 | 13..=15 | 24..=27 | 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(signal_name(6), "SIGABRT");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(64), "SIG64");
        assert!(is_fatal(9) && is_fatal(6) && !is_fatal(17) && !is_fatal(28));
    }
}
