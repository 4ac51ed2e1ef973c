//! CPython 3.11 layout (x86_64/aarch64, default build: no Py_TRACE_REFS, not a debug build).
//!
//! Measured with `testdata/offsets.c` compiled against pyenv 3.11.7's own headers
//! (`offsetof` on `_PyRuntimeState`, `PyInterpreterState`, `PyThreadState`, `_PyCFrame`,
//! `_PyInterpreterFrame`, `PyCodeObject`, `PyBytesObject`, `PyASCIIObject`), and cross-checked
//! against the v3.11.7 headers (Include/cpython/pystate.h, Include/internal/pycore_frame.h,
//! Include/cpython/code.h). These structs do not change within a minor version.

use super::layout::{CurrentFrame, Frames, Layout, LineFormat, ThreadId};

pub const LAYOUT: Layout = Layout {
    runtime_interpreters_head: 40,
    interp_next: 0,
    interp_threads_head: 16,
    tstate_next: 8,
    thread_id: ThreadId::Native,
    tstate_native_thread_id: 160,
    current_frame: CurrentFrame::ViaCFrame {
        tstate_cframe: 56,
        // after `uint8_t use_tracing`
        cframe_current: 8,
    },
    tstate_datastack_chunk: 296,
    tstate_datastack_top: 304,
    tstate_datastack_limit: 312,
    // 3.11 frames start with f_func, f_globals, f_builtins, f_locals, f_code.
    frames: Frames::Interpreter,
    frame_previous: 48,
    frame_code: 32,
    frame_instr: 56,
    frame_owner: 69,
    frame_header: 72,
    ob_type: 8,
    code_size: Some(16),
    lines: LineFormat::Locations,
    code_firstlineno: 72,
    code_filename: 112,
    code_qualname: 128,
    code_linetable: 136,
    code_adaptive: 184,
    bytes_size: 16,
    bytes_data: 32,
    unicode_length: 16,
    unicode_state: 32,
    // 3.11 still has the `wstr` pointer (and `wstr_length`), removed in 3.12.
    ascii_size: 48,
    compact_size: 72,
};
