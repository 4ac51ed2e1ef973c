//! CPython 3.9 layout (x86_64, default build).
//!
//! Measured with `testdata/offsets_old.c` against pyenv 3.9.18's headers. 3.9 and 3.10 predate
//! the data stack: each call is a heap `PyFrameObject` linked to its caller by `f_back`, the
//! thread state points at the innermost one (`tstate->frame`), the position in the code is
//! `int f_lasti` (a byte offset, -1 before the first instruction), and lines come from
//! `co_lnotab`. Thread states carry no `native_thread_id`, only `thread_id` (the `pthread_t`):
//! see [`ThreadId::Pthread`].

use super::layout::{CurrentFrame, Frames, Layout, LineFormat, ThreadId, GLIBC_PTHREAD_TID};

/// `sizeof(PyCodeObject)` is 176; we read it up to `co_lnotab`.
const CODE_HEADER: u64 = 128;

pub const LAYOUT: Layout = Layout {
    runtime_interpreters_head: 32,
    interp_next: 0,
    // `tstate_head`
    interp_threads_head: 8,
    tstate_next: 8,
    thread_id: ThreadId::Pthread {
        tid: GLIBC_PTHREAD_TID,
    },
    // `thread_id`: the pthread_t
    tstate_native_thread_id: 176,
    current_frame: CurrentFrame::Direct {
        tstate_current_frame: 24,
    },
    // No data stack.
    tstate_datastack_chunk: 0,
    tstate_datastack_top: 0,
    tstate_datastack_limit: 0,
    frames: Frames::Objects {
        lasti_in_bytes: true,
    },
    frame_previous: 24,
    frame_code: 32,
    frame_instr: 104,
    frame_owner: 0,
    // through `f_lasti` and `f_lineno`
    frame_header: 112,
    ob_type: 8,
    code_size: None,
    lines: LineFormat::Lnotab,
    code_firstlineno: 40,
    code_filename: 104,
    // `co_name`: 3.9 has no `co_qualname`
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
