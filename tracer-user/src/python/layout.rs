//! Where the fields we read live in each CPython version.
//!
//! 3.11 and 3.12 publish nothing, so their tables (`offsets311.rs`, `offsets312.rs`) are measured.
//! 3.13 publishes most of them in `_Py_DebugOffsets` at the start of `_PyRuntime`; the few it
//! leaves out (unicode and bytes internals, the data-stack top) come from `offsets313.rs`.

use super::{memory::Fields as _, PyError};

/// Byte offsets (and a few sizes) of every field the stack reader touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `_PyRuntime.interpreters.head`
    pub runtime_interpreters_head: u64,
    /// `PyInterpreterState.next`
    pub interp_next: u64,
    /// `PyInterpreterState.threads.head`
    pub interp_threads_head: u64,
    /// `PyThreadState.next`
    pub tstate_next: u64,
    /// `PyThreadState.native_thread_id` (the kernel TID in the target's PID namespace)
    pub tstate_native_thread_id: u64,
    /// Where the innermost frame pointer hangs off the thread state.
    pub current_frame: CurrentFrame,
    /// `PyThreadState.datastack_chunk`; `datastack_top` and `datastack_limit` follow it.
    pub tstate_datastack_chunk: u64,
    pub tstate_datastack_top: u64,
    pub tstate_datastack_limit: u64,
    /// `_PyInterpreterFrame.previous`
    pub frame_previous: u64,
    /// `_PyInterpreterFrame.f_code` (3.11/3.12) or `f_executable` (3.13)
    pub frame_code: u64,
    /// `_PyInterpreterFrame.prev_instr` (3.11/3.12) or `instr_ptr` (3.13)
    pub frame_instr: u64,
    /// `_PyInterpreterFrame.owner` (a `char`)
    pub frame_owner: u64,
    /// Bytes of a frame up to `localsplus`: all we read of one.
    pub frame_header: u64,
    /// `PyObject.ob_type`
    pub ob_type: u64,
    /// `PyCodeObject.ob_size`: number of code units in `co_code_adaptive`
    pub code_size: u64,
    pub code_firstlineno: u64,
    pub code_filename: u64,
    pub code_qualname: u64,
    pub code_linetable: u64,
    /// `PyCodeObject.co_code_adaptive`: bytecode, and the end of the header we read.
    pub code_adaptive: u64,
    /// `PyBytesObject.ob_size` / `ob_sval`
    pub bytes_size: u64,
    pub bytes_data: u64,
    /// `PyASCIIObject.length` / `.state` and the compact struct sizes (data follows them).
    pub unicode_length: u64,
    pub unicode_state: u64,
    pub ascii_size: u64,
    pub compact_size: u64,
}

/// How to get from a thread state to its innermost `_PyInterpreterFrame`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurrentFrame {
    /// 3.11/3.12: `tstate->cframe` points to a `_PyCFrame` (on the C stack) holding `current_frame`.
    ViaCFrame {
        tstate_cframe: u64,
        cframe_current: u64,
    },
    /// 3.13: `tstate->current_frame`.
    Direct { tstate_current_frame: u64 },
}

/// `_PyInterpreterFrame.owner` values (pycore_frame.h, same numbers in 3.11–3.13; 1 and 2 are
/// generator- and frame-object-owned frames, which we follow like any other).
pub const OWNED_BY_THREAD: u8 = 0;
/// 3.12+: a shim frame on the C stack marking an entry into the eval loop; not Python code.
pub const OWNED_BY_CSTACK: u8 = 3;

impl Layout {
    /// The measured table for a version we support.
    pub fn for_version(major: u8, minor: u8) -> Result<Layout, PyError> {
        match (major, minor) {
            (3, 11) => Ok(super::offsets311::LAYOUT),
            (3, 12) => Ok(super::offsets312::LAYOUT),
            (3, 13) => Ok(super::offsets313::LAYOUT),
            _ => Err(PyError::Unsupported(format!("Python {major}.{minor}"))),
        }
    }

    /// Largest thread-state offset we read, plus the field: one read covers them all.
    pub fn tstate_span(&self) -> u64 {
        let frame = match self.current_frame {
            CurrentFrame::ViaCFrame { tstate_cframe, .. } => tstate_cframe,
            CurrentFrame::Direct {
                tstate_current_frame,
            } => tstate_current_frame,
        };
        [
            self.tstate_next,
            self.tstate_native_thread_id,
            frame,
            self.tstate_datastack_chunk,
            self.tstate_datastack_top,
            self.tstate_datastack_limit,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 8
    }
}

/// The start of `_Py_DebugOffsets` (3.13.0, Include/internal/pycore_runtime.h): an 8-byte
/// cookie, then `uint64_t` fields grouped per struct, each group starting with its `size`.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// Field indices (in u64 words) inside 3.13's `_Py_DebugOffsets`.
mod dbg313 {
    pub const VERSION: usize = 1;
    pub const FREE_THREADED: usize = 2;
    // runtime_state {size, finalizing, interpreters_head}
    pub const RUNTIME_INTERPRETERS_HEAD: usize = 5;
    // interpreter_state {size, id, next, threads_head, ...13 fields}
    pub const INTERP_NEXT: usize = 8;
    pub const INTERP_THREADS_HEAD: usize = 9;
    // thread_state {size, prev, next, interp, current_frame, thread_id, native_thread_id,
    //               datastack_chunk, status} starts at word 19
    pub const TSTATE_NEXT: usize = 21;
    pub const TSTATE_CURRENT_FRAME: usize = 23;
    pub const TSTATE_NATIVE_THREAD_ID: usize = 25;
    pub const TSTATE_DATASTACK_CHUNK: usize = 26;
    // interpreter_frame {size, previous, executable, instr_ptr, localsplus, owner} at word 28
    pub const FRAME_PREVIOUS: usize = 29;
    pub const FRAME_EXECUTABLE: usize = 30;
    pub const FRAME_INSTR_PTR: usize = 31;
    pub const FRAME_LOCALSPLUS: usize = 32;
    pub const FRAME_OWNER: usize = 33;
    // code_object {size, filename, name, qualname, linetable, firstlineno, argcount,
    //              localsplusnames, localspluskinds, co_code_adaptive} at word 34
    pub const CODE_FILENAME: usize = 35;
    pub const CODE_QUALNAME: usize = 37;
    pub const CODE_LINETABLE: usize = 38;
    pub const CODE_FIRSTLINENO: usize = 39;
    pub const CODE_ADAPTIVE: usize = 43;
    // pyobject {size, ob_type} at word 44
    pub const OB_TYPE: usize = 45;
    /// Words we need to read.
    pub const WORDS: usize = 46;
}

/// Bytes of `_Py_DebugOffsets` to read from the target.
pub const DEBUG_OFFSETS_LEN: usize = dbg313::WORDS * 8;

/// What `_Py_DebugOffsets` says, merged over the measured 3.13 table.
#[derive(Debug)]
pub struct FromDebugOffsets {
    pub layout: Layout,
    /// `PY_VERSION_HEX` of the running interpreter.
    pub version_hex: u64,
}

/// Parse 3.13's `_Py_DebugOffsets` (the first bytes of `_PyRuntime`).
pub fn from_debug_offsets(raw: &[u8]) -> Result<FromDebugOffsets, PyError> {
    if raw.get(..8) != Some(DEBUG_COOKIE.as_slice()) {
        return Err(PyError::Unsupported(
            "_PyRuntime does not start with the _Py_DebugOffsets cookie".into(),
        ));
    }
    let w = |i: usize| {
        raw.u64_at(i * 8)
            .ok_or(PyError::Torn("short _Py_DebugOffsets"))
    };
    let version_hex = w(dbg313::VERSION)?;
    if (version_hex >> 16) != 0x030d {
        return Err(PyError::Unsupported(format!(
            "_Py_DebugOffsets layout of version {version_hex:#x} (only 3.13 is known)"
        )));
    }
    if w(dbg313::FREE_THREADED)? != 0 {
        // Free-threaded objects have a different header (ob_tid, ob_ref_local, ...).
        return Err(PyError::Unsupported("free-threaded (3.13t) builds".into()));
    }
    let mut l = super::offsets313::LAYOUT;
    l.runtime_interpreters_head = w(dbg313::RUNTIME_INTERPRETERS_HEAD)?;
    l.interp_next = w(dbg313::INTERP_NEXT)?;
    l.interp_threads_head = w(dbg313::INTERP_THREADS_HEAD)?;
    l.tstate_next = w(dbg313::TSTATE_NEXT)?;
    l.current_frame = CurrentFrame::Direct {
        tstate_current_frame: w(dbg313::TSTATE_CURRENT_FRAME)?,
    };
    l.tstate_native_thread_id = w(dbg313::TSTATE_NATIVE_THREAD_ID)?;
    l.tstate_datastack_chunk = w(dbg313::TSTATE_DATASTACK_CHUNK)?;
    // Not published, but declared right after datastack_chunk in every version since 3.11.
    l.tstate_datastack_top = l.tstate_datastack_chunk + 8;
    l.tstate_datastack_limit = l.tstate_datastack_chunk + 16;
    l.frame_previous = w(dbg313::FRAME_PREVIOUS)?;
    l.frame_code = w(dbg313::FRAME_EXECUTABLE)?;
    l.frame_instr = w(dbg313::FRAME_INSTR_PTR)?;
    l.frame_header = w(dbg313::FRAME_LOCALSPLUS)?;
    l.frame_owner = w(dbg313::FRAME_OWNER)?;
    l.code_filename = w(dbg313::CODE_FILENAME)?;
    l.code_qualname = w(dbg313::CODE_QUALNAME)?;
    l.code_linetable = w(dbg313::CODE_LINETABLE)?;
    l.code_firstlineno = w(dbg313::CODE_FIRSTLINENO)?;
    l.code_adaptive = w(dbg313::CODE_ADAPTIVE)?;
    l.ob_type = w(dbg313::OB_TYPE)?;
    // Sanity: a corrupted or foreign table must not send us reading megabytes per field.
    let all = [
        l.interp_next,
        l.interp_threads_head,
        l.tstate_next,
        l.tstate_native_thread_id,
        l.tstate_datastack_chunk,
        l.frame_previous,
        l.frame_code,
        l.frame_instr,
        l.frame_header,
        l.frame_owner,
        l.code_filename,
        l.code_qualname,
        l.code_linetable,
        l.code_firstlineno,
        l.code_adaptive,
    ];
    if all.iter().any(|&o| o > 64 * 1024) || l.runtime_interpreters_head > 1 << 20 {
        return Err(PyError::Unsupported(
            "_Py_DebugOffsets has implausible offsets".into(),
        ));
    }
    Ok(FromDebugOffsets {
        layout: l,
        version_hex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 46 words of 3.13.0's `_Py_DebugOffsets`, dumped from a live pyenv 3.13.0 with
    /// `(ctypes.c_char * 368).in_dll(ctypes.pythonapi, "_PyRuntime")`.
    fn raw_313() -> Vec<u8> {
        let words: [u64; 45] = [
            51183856, 0, // version 0x030d00f0, free_threaded
            283320, 608, 632, // runtime_state
            194968, 7272, 7264, 7344, 7400, 7656, 7640, 7648, 16, 7752, 0, 7768, 7760, 304, 0, 8,
            16, 72, 152, 160, 232, 32, // thread_state
            80, 8, 0, 56, 72, 70, // interpreter_frame
            208, 112, 120, 128, 136, 68, 52, 96, 104, 200, // code_object
            16, 8, // pyobject
        ];
        let mut raw = DEBUG_COOKIE.to_vec();
        for w in words {
            raw.extend_from_slice(&w.to_le_bytes());
        }
        raw
    }

    #[test]
    fn debug_offsets_match_the_measured_313_table() {
        let got = from_debug_offsets(&raw_313()).unwrap();
        assert_eq!(got.version_hex, 0x030d00f0);
        assert_eq!(got.layout, super::super::offsets313::LAYOUT);
    }

    #[test]
    fn debug_offsets_rejects_foreign_tables() {
        let mut raw = raw_313();
        raw[0] = b'X';
        assert!(from_debug_offsets(&raw).is_err(), "bad cookie");
        let mut raw = raw_313();
        raw[8..16].copy_from_slice(&0x030e00f0u64.to_le_bytes());
        assert!(from_debug_offsets(&raw).is_err(), "3.14 layout differs");
        let mut raw = raw_313();
        raw[16..24].copy_from_slice(&1u64.to_le_bytes());
        assert!(from_debug_offsets(&raw).is_err(), "free-threaded");
        let mut raw = raw_313();
        raw[dbg313::CODE_QUALNAME * 8..][..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(from_debug_offsets(&raw).is_err(), "implausible");
        assert!(from_debug_offsets(&raw_313()[..100]).is_err(), "short");
    }

    #[test]
    fn tstate_span_covers_every_field() {
        for (maj, min) in [(3, 11), (3, 12), (3, 13)] {
            let l = Layout::for_version(maj, min).unwrap();
            assert!(l.tstate_span() > l.tstate_datastack_limit);
            assert!(l.tstate_span() > l.tstate_native_thread_id);
        }
        assert!(Layout::for_version(3, 10).is_err());
        assert!(Layout::for_version(3, 14).is_err());
    }
}
