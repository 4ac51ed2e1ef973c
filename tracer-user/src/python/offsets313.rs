//! CPython 3.13 layout (x86_64/aarch64, default build, GIL).
//!
//! At attach the target's own `_Py_DebugOffsets` overrides the fields it publishes (see
//! `layout::from_debug_offsets`); this table supplies the rest — unicode/bytes internals and
//! `datastack_top`/`datastack_limit` — and is the reference the debug-offsets test checks.
//! Measured with `testdata/offsets.c` against pyenv 3.13.0's headers; the published fields were
//! also dumped from a live 3.13.0 (`_PyRuntime` via ctypes) and agree.

use super::layout::{CurrentFrame, Frames, Layout, LineFormat, ThreadId};

pub const LAYOUT: Layout = Layout {
    runtime_interpreters_head: 632,
    interp_next: 7264,
    interp_threads_head: 7344,
    tstate_next: 8,
    thread_id: ThreadId::Native,
    tstate_native_thread_id: 160,
    current_frame: CurrentFrame::Direct {
        tstate_current_frame: 72,
    },
    tstate_datastack_chunk: 232,
    tstate_datastack_top: 240,
    tstate_datastack_limit: 248,
    frames: Frames::Interpreter,
    frame_previous: 8,
    // f_executable: a code object, or None for a shim frame
    frame_code: 0,
    frame_instr: 56,
    frame_owner: 70,
    frame_header: 72,
    ob_type: 8,
    code_size: Some(16),
    lines: LineFormat::Locations,
    code_firstlineno: 68,
    code_filename: 112,
    code_qualname: 128,
    code_linetable: 136,
    code_adaptive: 200,
    bytes_size: 16,
    bytes_data: 32,
    unicode_length: 16,
    unicode_state: 32,
    ascii_size: 40,
    compact_size: 56,
};
