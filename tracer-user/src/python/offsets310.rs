//! CPython 3.10 layout (x86_64, default build).
//!
//! Measured with `testdata/offsets_old.c` against pyenv 3.10.13's headers. Frames are heap
//! `PyFrameObject`s as in 3.9 (see `offsets39.rs`); what changed: `f_lasti` counts code units
//! (not bytes) and sits 8 bytes lower, and `co_linetable` replaces `co_lnotab` with another
//! format. The thread state keeps `frame` (3.10's new `cframe` only holds `use_tracing`).

use super::layout::{CurrentFrame, Frames, Layout, LineFormat, ThreadId, GLIBC_PTHREAD_TID};

/// `sizeof(PyCodeObject)` is 176; we read it up to `co_linetable`.
const CODE_HEADER: u64 = 128;

pub const LAYOUT: Layout = Layout {
    runtime_interpreters_head: 32,
    interp_next: 0,
    interp_threads_head: 8,
    tstate_next: 8,
    thread_id: ThreadId::Pthread {
        tid: GLIBC_PTHREAD_TID,
    },
    tstate_native_thread_id: 176,
    current_frame: CurrentFrame::Direct {
        tstate_current_frame: 24,
    },
    tstate_datastack_chunk: 0,
    tstate_datastack_top: 0,
    tstate_datastack_limit: 0,
    frames: Frames::Objects {
        lasti_in_bytes: false,
    },
    frame_previous: 24,
    frame_code: 32,
    frame_instr: 96,
    frame_owner: 0,
    frame_header: 104,
    ob_type: 8,
    code_size: None,
    lines: LineFormat::Linetable310,
    code_firstlineno: 40,
    code_filename: 104,
    code_qualname: 112,
    code_linetable: 120,
    code_adaptive: CODE_HEADER,
    bytes_size: 16,
    bytes_data: 32,
    unicode_length: 16,
    unicode_state: 32,
    ascii_size: 48,
    compact_size: 72,
};
