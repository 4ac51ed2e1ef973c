//! Where the fields we read live in each CPython version.
//!
//! 3.9–3.12 publish nothing, so their tables (`offsets39.rs` … `offsets312.rs`) are measured.
//! 3.13 publishes its layout in `_Py_DebugOffsets` at the start of `_PyRuntime`, and that is
//! what a 3.13 process is read with ([`from_debug_offsets`]); `offsets313.rs` is kept only as
//! the reference the tests compare the parsed struct against.

use super::{memory::Fields as _, PyError};

/// `struct pthread.tid` in glibc 2.36 on x86_64 (`_thread_db_pthread_tid` says 720): the
/// fallback when the target's libc does not publish its own (see [`ThreadId::Pthread`]).
pub const GLIBC_PTHREAD_TID: u64 = 720;

/// Byte offsets (and a few sizes) of every field the stack reader touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `_PyRuntime.interpreters.head`
    pub runtime_interpreters_head: u64,
    /// `PyInterpreterState.next`
    pub interp_next: u64,
    /// `PyInterpreterState.threads.head` (3.9/3.10: `tstate_head`)
    pub interp_threads_head: u64,
    /// `PyThreadState.next`
    pub tstate_next: u64,
    /// What `tstate_native_thread_id` holds.
    pub thread_id: ThreadId,
    /// `PyThreadState.native_thread_id` (the kernel TID in the target's PID namespace); 3.9/3.10:
    /// `thread_id`, the thread's `pthread_t`.
    pub tstate_native_thread_id: u64,
    /// Where the innermost frame pointer hangs off the thread state.
    pub current_frame: CurrentFrame,
    /// `PyThreadState.datastack_chunk`; `datastack_top` and `datastack_limit` follow it.
    /// 0 for 3.9/3.10 (no data stack).
    pub tstate_datastack_chunk: u64,
    pub tstate_datastack_top: u64,
    pub tstate_datastack_limit: u64,
    /// What a frame is, and what `frame_instr` holds.
    pub frames: Frames,
    /// `_PyInterpreterFrame.previous` (3.9/3.10: `PyFrameObject.f_back`)
    pub frame_previous: u64,
    /// `_PyInterpreterFrame.f_code` (3.9–3.12) or `f_executable` (3.13)
    pub frame_code: u64,
    /// `_PyInterpreterFrame.prev_instr` (3.11/3.12), `instr_ptr` (3.13), `f_lasti` (3.9/3.10)
    pub frame_instr: u64,
    /// `_PyInterpreterFrame.owner` (a `char`); unused for 3.9/3.10 frame objects.
    pub frame_owner: u64,
    /// Bytes of a frame up to `localsplus` (3.9/3.10: through `f_lasti`): all we read of one.
    pub frame_header: u64,
    /// `PyObject.ob_type`
    pub ob_type: u64,
    /// `PyCodeObject.ob_size`: number of code units in `co_code_adaptive` (3.11+; 3.9/3.10 keep
    /// the bytecode in a separate `co_code` object and we do not need its length).
    pub code_size: Option<u64>,
    /// The format of the table at `code_linetable`.
    pub lines: LineFormat,
    pub code_firstlineno: u64,
    pub code_filename: u64,
    /// `co_qualname`; 3.9/3.10 have none and this is `co_name`.
    pub code_qualname: u64,
    /// `co_linetable` (3.9: `co_lnotab`)
    pub code_linetable: u64,
    /// `PyCodeObject.co_code_adaptive`: bytecode, and the end of the header we read (3.9/3.10:
    /// just the header length).
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

/// How a thread state names its thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadId {
    /// 3.11+: `native_thread_id` is the kernel TID.
    Native,
    /// 3.9/3.10: `thread_id` is the `pthread_t`, i.e. the address of glibc's `struct pthread`,
    /// whose `tid` field (at this offset, from the target libc's `_thread_db_pthread_tid`) is the
    /// kernel TID.
    Pthread { tid: u64 },
}

/// What the frame chain is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frames {
    /// 3.11+: `_PyInterpreterFrame`s, mostly in the thread's data-stack chunks; `frame_instr` is
    /// a pointer into `co_code_adaptive`.
    Interpreter,
    /// 3.9/3.10: heap `PyFrameObject`s, every one a Python call of its own eval loop;
    /// `frame_instr` is `int f_lasti`, counting bytes (3.9) or code units (3.10), -1 before the
    /// first instruction.
    Objects { lasti_in_bytes: bool },
}

/// Formats of the instruction → line table (see linetable.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    /// 3.9 `co_lnotab`
    Lnotab,
    /// 3.10 `co_linetable`
    Linetable310,
    /// 3.11+ location table
    Locations,
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

/// What `slowtrace` reads, for error messages.
pub const SUPPORTED: &str = "CPython 3.9-3.13";

impl Layout {
    /// The measured table of a version without `_Py_DebugOffsets` (3.9–3.12). In tests, also
    /// 3.13's, the reference its debug offsets are checked against.
    pub fn for_version(major: u8, minor: u8) -> Result<Layout, PyError> {
        match (major, minor) {
            (3, 9) => Ok(super::offsets39::LAYOUT),
            (3, 10) => Ok(super::offsets310::LAYOUT),
            (3, 11) => Ok(super::offsets311::LAYOUT),
            (3, 12) => Ok(super::offsets312::LAYOUT),
            #[cfg(test)]
            (3, 13) => Ok(super::offsets313::LAYOUT),
            _ => Err(PyError::Unsupported(format!(
                "Python {major}.{minor} (supported: {SUPPORTED})"
            ))),
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

/// The start of `_Py_DebugOffsets` (Include/internal/pycore_runtime.h in 3.13): an 8-byte
/// cookie, then `uint64_t` fields grouped per struct, each group starting with its `size`.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// Field indices (in u64 words, the cookie being word 0) inside 3.13's `_Py_DebugOffsets`.
///
/// Only the cookie, `version` and `free_threaded` are where they are in every version: 3.14
/// inserts fields in the middle of the groups (`interpreter_state.threads_main`,
/// `interpreter_frame.stackpointer`, new groups before `gc`), so the word of each field is known
/// per minor version, and a version whose struct we have not read is refused rather than
/// guessed at.
mod dbg313 {
    pub const VERSION: usize = 1;
    pub const FREE_THREADED: usize = 2;
    // runtime_state {size, finalizing, interpreters_head}
    pub const RUNTIME_INTERPRETERS_HEAD: usize = 5;
    // interpreter_state {size, id, next, threads_head, ...13 fields} at word 6
    pub const INTERP_NEXT: usize = 8;
    pub const INTERP_THREADS_HEAD: usize = 9;
    // thread_state {size, prev, next, interp, current_frame, thread_id, native_thread_id,
    //               datastack_chunk, status} at word 19
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
    // type_object (4 words) at 46; tuple_object {size, ob_item, ob_size} at 50: the ob_size of
    // every variable-size object, a code object's included.
    pub const VAR_OB_SIZE: usize = 52;
    // list, dict, float, long (11 words) at 53; bytes_object {size, ob_size, ob_sval} at 64
    pub const BYTES_OB_SIZE: usize = 65;
    pub const BYTES_OB_SVAL: usize = 66;
    // unicode_object {size, state, length, asciiobject_size} at 67
    pub const UNICODE_STATE: usize = 68;
    pub const UNICODE_LENGTH: usize = 69;
    pub const UNICODE_ASCII_SIZE: usize = 70;
    // gc {size, collecting} at 71
    /// Words in the struct.
    pub const WORDS: usize = 73;
}

/// Bytes of `_Py_DebugOffsets` to read from the target.
pub const DEBUG_OFFSETS_LEN: usize = dbg313::WORDS * 8;

/// What `_Py_DebugOffsets` says.
#[derive(Debug)]
pub struct FromDebugOffsets {
    pub layout: Layout,
    /// `PY_VERSION_HEX` of the running interpreter.
    pub version_hex: u64,
}

/// Parse `_Py_DebugOffsets` (the first [`DEBUG_OFFSETS_LEN`] bytes of `_PyRuntime`) into a
/// whole layout: every offset the reader uses comes from the target itself.
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
    let (major, minor) = (version_hex >> 24, (version_hex >> 16) & 0xff);
    if (major, minor) != (3, 13) {
        return Err(PyError::Unsupported(format!(
            "Python {major}.{minor}: the layout of its _Py_DebugOffsets is not known to this \
             slowtrace (supported: {SUPPORTED})"
        )));
    }
    if w(dbg313::FREE_THREADED)? != 0 {
        // Free-threaded objects have a different header (ob_tid, ob_ref_local, ...).
        return Err(PyError::Unsupported(
            "free-threaded (3.13t) builds of Python".into(),
        ));
    }
    let datastack_chunk = w(dbg313::TSTATE_DATASTACK_CHUNK)?;
    let ascii_size = w(dbg313::UNICODE_ASCII_SIZE)?;
    let l = Layout {
        runtime_interpreters_head: w(dbg313::RUNTIME_INTERPRETERS_HEAD)?,
        interp_next: w(dbg313::INTERP_NEXT)?,
        interp_threads_head: w(dbg313::INTERP_THREADS_HEAD)?,
        tstate_next: w(dbg313::TSTATE_NEXT)?,
        thread_id: ThreadId::Native,
        tstate_native_thread_id: w(dbg313::TSTATE_NATIVE_THREAD_ID)?,
        current_frame: CurrentFrame::Direct {
            tstate_current_frame: w(dbg313::TSTATE_CURRENT_FRAME)?,
        },
        tstate_datastack_chunk: datastack_chunk,
        // Not published, but declared right after datastack_chunk in every version since 3.11.
        // Saturating: a garbage offset must reach the sanity check below, not overflow.
        tstate_datastack_top: datastack_chunk.saturating_add(8),
        tstate_datastack_limit: datastack_chunk.saturating_add(16),
        frames: Frames::Interpreter,
        frame_previous: w(dbg313::FRAME_PREVIOUS)?,
        frame_code: w(dbg313::FRAME_EXECUTABLE)?,
        frame_instr: w(dbg313::FRAME_INSTR_PTR)?,
        frame_owner: w(dbg313::FRAME_OWNER)?,
        frame_header: w(dbg313::FRAME_LOCALSPLUS)?,
        ob_type: w(dbg313::OB_TYPE)?,
        code_size: Some(w(dbg313::VAR_OB_SIZE)?),
        lines: LineFormat::Locations,
        code_firstlineno: w(dbg313::CODE_FIRSTLINENO)?,
        code_filename: w(dbg313::CODE_FILENAME)?,
        code_qualname: w(dbg313::CODE_QUALNAME)?,
        code_linetable: w(dbg313::CODE_LINETABLE)?,
        code_adaptive: w(dbg313::CODE_ADAPTIVE)?,
        bytes_size: w(dbg313::BYTES_OB_SIZE)?,
        bytes_data: w(dbg313::BYTES_OB_SVAL)?,
        unicode_length: w(dbg313::UNICODE_LENGTH)?,
        unicode_state: w(dbg313::UNICODE_STATE)?,
        ascii_size,
        // PyCompactUnicodeObject = PyASCIIObject + utf8_length + utf8 (3.12+).
        compact_size: ascii_size.saturating_add(16),
    };
    // Sanity: a corrupted or foreign table must not send us reading megabytes per field.
    let current_frame = match l.current_frame {
        CurrentFrame::Direct {
            tstate_current_frame,
        } => tstate_current_frame,
        CurrentFrame::ViaCFrame { tstate_cframe, .. } => tstate_cframe,
    };
    let small = [
        current_frame,
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
        l.ob_type,
        l.code_size.unwrap_or(0),
        l.code_filename,
        l.code_qualname,
        l.code_linetable,
        l.code_firstlineno,
        l.code_adaptive,
        l.bytes_size,
        l.bytes_data,
        l.unicode_length,
        l.unicode_state,
        l.ascii_size,
    ];
    if small.iter().any(|&o| o > 64 * 1024) || l.runtime_interpreters_head > 1 << 20 {
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
pub(super) mod tests {
    use super::*;

    /// 3.13.0's whole `_Py_DebugOffsets`, dumped from a live pyenv 3.13.0 with
    /// `(ctypes.c_char * 584).in_dll(ctypes.pythonapi, "_PyRuntime")`.
    pub fn raw_313() -> Vec<u8> {
        let words: [u64; 72] = [
            51183856, 0, // version 0x030d00f0, free_threaded
            283320, 608, 632, // runtime_state
            194968, 7272, 7264, 7344, 7400, 7656, 7640, 7648, 16, 7752, 0, 7768,
            7760, // interp
            304, 0, 8, 16, 72, 152, 160, 232, 32, // thread_state
            80, 8, 0, 56, 72, 70, // interpreter_frame
            208, 112, 120, 128, 136, 68, 52, 96, 104, 200, // code_object
            16, 8, // pyobject
            416, 24, 88, 168, // type_object
            32, 24, 16, // tuple_object
            40, 24, 16, // list_object
            48, 32, 40, // dict_object
            24, 16, // float_object
            32, 16, 24, // long_object
            40, 16, 32, // bytes_object
            64, 32, 16, 40, // unicode_object
            240, 200, // gc
        ];
        let mut raw = DEBUG_COOKIE.to_vec();
        for w in words {
            raw.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(raw.len(), DEBUG_OFFSETS_LEN);
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
        let err = from_debug_offsets(&raw).unwrap_err().to_string();
        assert!(err.contains("Python 3.14"), "{err}");
        assert!(err.contains("supported: CPython 3.9-3.13"), "{err}");
        let mut raw = raw_313();
        raw[16..24].copy_from_slice(&1u64.to_le_bytes());
        assert!(from_debug_offsets(&raw).is_err(), "free-threaded");
        let mut raw = raw_313();
        raw[dbg313::CODE_QUALNAME * 8..][..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(from_debug_offsets(&raw).is_err(), "implausible");
        // Offsets the layout adds to (found by fuzzing: an overflow before the check).
        // And one the check forgot: the thread state's size (one read of it) grew without bound.
        for word in [
            dbg313::TSTATE_DATASTACK_CHUNK,
            dbg313::UNICODE_ASCII_SIZE,
            dbg313::TSTATE_CURRENT_FRAME,
        ] {
            let mut raw = raw_313();
            raw[word * 8..][..8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
            assert!(from_debug_offsets(&raw).is_err(), "word {word}");
        }
        assert!(from_debug_offsets(&raw_313()[..100]).is_err(), "short");
    }

    #[test]
    fn tstate_span_covers_every_field() {
        for (maj, min) in [(3, 9), (3, 10), (3, 11), (3, 12), (3, 13)] {
            let l = Layout::for_version(maj, min).unwrap();
            assert!(l.tstate_span() > l.tstate_datastack_limit);
            assert!(l.tstate_span() > l.tstate_native_thread_id);
        }
        assert!(Layout::for_version(3, 8).is_err());
        assert!(Layout::for_version(3, 14).is_err());
    }
}
