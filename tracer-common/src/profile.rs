//! Profiling samples: where a target thread was when the sampler fired (on CPU) or when it left
//! the CPU inside a request (off CPU), with its native and kernel stacks, the Python frames the
//! kernel walked at that moment, and the request it was serving.

/// Native user frames kept per sample (frame-pointer unwinding by `bpf_get_stack`).
pub const USER_FRAMES: usize = 32;
/// Kernel frames kept per sample.
pub const KERN_FRAMES: usize = 24;
/// Python frames walked per sample; deeper stacks keep their innermost frames.
pub const PY_FRAMES: usize = 64;
/// Bytes of the enclosing request's start (its request line) kept per sample.
pub const SAMPLE_REQ_PREFIX: usize = 96;

/// A field a Python version does not have.
pub const NO_FIELD: u32 = u32::MAX;

/// `ProfileRecord::kind`.
pub mod sample_kind {
    /// The perf-event sampler found the thread running.
    pub const ON_CPU: u8 = 1;
    /// The thread left the CPU while serving a request; `off_ns` is how long until it ran again.
    pub const OFF_CPU: u8 = 2;
}

/// `ProfileRecord::py_status`.
pub mod py_status {
    /// No Python layout registered for the process (not Python, or not yet discovered).
    pub const NOT_PYTHON: u8 = 0;
    pub const OK: u8 = 1;
    /// The thread has no thread state (a native thread of a Python process).
    pub const NO_THREAD: u8 = 2;
    /// A read of the interpreter's memory failed (paged out, or torn mid-update).
    pub const READ_FAILED: u8 = 3;
    /// More than `PY_FRAMES` frames: the outermost ones are missing.
    pub const TRUNCATED: u8 = 4;
}

/// `ProfileRecord::py_flags` bit: 3.11's `is_entry` (first frame of one eval-loop call).
pub const PY_FLAG_ENTRY: u8 = 0x80;
/// `ProfileRecord::py_flags` low bits: the frame's `owner` (3 = a 3.12+ C-stack shim frame).
pub const PY_OWNER_MASK: u8 = 0x0f;

/// Where a CPython 3.9–3.13 process keeps what the in-kernel frame walker reads: user space
/// fills one per process from its layout tables, the kernel copies it to forked children.
///
/// 3.9/3.10 (`frame_objects` = 1): `tstate_frame` is `tstate->frame`, frames are
/// `PyFrameObject`s (`frame_previous` = `f_back`, `frame_instr` = `f_lasti`), there is no owner,
/// and thread states are found by their `pthread_t` (see `pthread_tid`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProcLayout {
    /// Address of `_PyRuntime`.
    pub runtime: u64,
    pub runtime_interp_head: u32,
    pub interp_threads_head: u32,
    pub tstate_next: u32,
    pub tstate_native_thread_id: u32,
    /// `tstate->cframe` (3.11/3.12) or `tstate->current_frame` (3.13).
    pub tstate_frame: u32,
    /// `_PyCFrame.current_frame`, or `NO_FIELD` when `tstate_frame` is the frame itself.
    pub cframe_current: u32,
    pub frame_previous: u32,
    pub frame_code: u32,
    pub frame_instr: u32,
    pub frame_owner: u32,
    /// 3.11's `is_entry`, or `NO_FIELD`.
    pub frame_is_entry: u32,
    /// `NO_FIELD` when `tstate_native_thread_id` holds the TID (3.11+). Otherwise (3.9/3.10)
    /// that field is the thread's `pthread_t`, and the TID is the `u32` this far into it (glibc's
    /// `struct pthread.tid`).
    pub pthread_tid: u32,
    /// 1 for 3.9/3.10 frame objects: every frame is its own eval-loop call (flagged as an entry).
    pub frame_objects: u32,
    pub _pad: u32,
    /// The process's PID namespace (device and inode of /proc/PID/ns/pid) when it is not
    /// slowtrace's own, else 0 and 0. Thread states record the TID the process itself sees
    /// (`gettid()` inside a container), so the walker must compare them with the current
    /// thread's TID in that namespace (`bpf_get_ns_current_pid_tgid`), not the host TID.
    pub pidns_dev: u64,
    pub pidns_ino: u64,
}

/// One Python frame as the kernel found it: resolved to function and line in user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrameRaw {
    /// Address of the code object.
    pub code: u64,
    /// `prev_instr` (3.11/3.12) or `instr_ptr` (3.13).
    pub instr: u64,
}

/// One profiling sample (ring buffer `SAMPLES`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProfileRecord {
    pub kind: u8,
    pub py_status: u8,
    pub _pad: [u8; 2],
    pub tgid: u32,
    pub tid: u32,
    /// Off CPU: the scheduler's `prev_state` (0x100 = preempted, else blocked).
    pub state: u32,
    /// When the sample was taken (off CPU: when the thread left the CPU).
    pub ts: u64,
    /// Off CPU: ns until the thread ran again.
    pub off_ns: u64,
    /// The request the thread was serving (0: none).
    pub conn_id: u64,
    pub seq: u32,
    pub fd: u32,
    /// Bytes `bpf_get_stack` wrote (negative: error).
    pub user_len: i32,
    pub kern_len: i32,
    pub py_n: u32,
    pub req_len: u32,
    pub user: [u64; USER_FRAMES],
    pub kern: [u64; KERN_FRAMES],
    /// Innermost first.
    pub py: [PyFrameRaw; PY_FRAMES],
    pub py_flags: [u8; PY_FRAMES],
    pub req: [u8; SAMPLE_REQ_PREFIX],
}

impl ProfileRecord {
    pub const fn zeroed() -> Self {
        Self {
            kind: 0,
            py_status: 0,
            _pad: [0; 2],
            tgid: 0,
            tid: 0,
            state: 0,
            ts: 0,
            off_ns: 0,
            conn_id: 0,
            seq: 0,
            fd: 0,
            user_len: 0,
            kern_len: 0,
            py_n: 0,
            req_len: 0,
            user: [0; USER_FRAMES],
            kern: [0; KERN_FRAMES],
            py: [PyFrameRaw { code: 0, instr: 0 }; PY_FRAMES],
            py_flags: [0; PY_FRAMES],
            req: [0; SAMPLE_REQ_PREFIX],
        }
    }
}
