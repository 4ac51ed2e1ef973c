//! CPython 3.12 layout (x86_64/aarch64, default build).
//!
//! Measured with `testdata/offsets.c` against pyenv 3.12.1's headers and cross-checked against
//! the v3.12.1 sources. Moved since 3.11: `threads.head` (16 → 72), `native_thread_id`
//! (160 → 144), the data stack (296 → 232), `_PyCFrame.current_frame` (8 → 0, `use_tracing`
//! is gone), and the frame now starts with `f_code, previous`.

use super::layout::{CurrentFrame, Frames, Layout, LineFormat, ThreadId};

pub const LAYOUT: Layout = Layout {
    runtime_interpreters_head: 40,
    interp_next: 0,
    interp_threads_head: 72,
    tstate_next: 8,
    thread_id: ThreadId::Native,
    tstate_native_thread_id: 144,
    current_frame: CurrentFrame::ViaCFrame {
        tstate_cframe: 56,
        cframe_current: 0,
    },
    tstate_datastack_chunk: 232,
    tstate_datastack_top: 240,
    tstate_datastack_limit: 248,
    frames: Frames::Interpreter,
    frame_previous: 8,
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
    code_adaptive: 192,
    bytes_size: 16,
    bytes_data: 32,
    unicode_length: 16,
    unicode_state: 32,
    ascii_size: 40,
    compact_size: 56,
};
