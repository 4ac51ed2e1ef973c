//! One stack from three: native frames (frame-pointer unwound), Python frames (walked in the
//! kernel) and kernel frames, merged root to leaf the way the thread really nests.
//!
//! CPython 3.11+ runs a chain of Python calls inside one `_PyEval_EvalFrameDefault` call, and
//! enters a new one only when C code calls back into Python. The Python frames therefore come in
//! segments, one per eval-loop call: 3.11 flags a segment's outermost frame `is_entry`, 3.12+
//! push a shim frame (owner "C stack") below it. Each native `_PyEval_EvalFrameDefault` frame,
//! innermost first, is replaced by the next segment, innermost first; C frames in between stay
//! where they were.
//!
//! The interpreters this runs against are often built without frame pointers, so the native
//! unwind may stop (or go astray) right after the leaf. When it found no eval-loop frame, only
//! the leaf native frame (its pc is exact) is kept, under all the Python frames. Native frames
//! outside the outermost eval-loop call (`main`, `Py_RunMain`) are dropped for Python threads,
//! so every sample of a request has the same Python root whatever the unwinder managed.

use tracer_common::profile::{PY_FLAG_ENTRY, PY_OWNER_MASK};

use crate::{
    model::{
        profile::{FrameInfo, FrameKind},
        slow::Frame,
    },
    python::PyFrame,
};

/// 3.12+: `_PyInterpreterFrame.owner` of the shim frame that marks an eval-loop entry.
const OWNED_BY_CSTACK: u8 = 3;
const EVAL_LOOP: &str = "_PyEval_EvalFrameDefault";

/// A Python frame as the kernel walked it, resolved when its code object could be read.
pub struct PyRaw {
    pub frame: Option<PyFrame>,
    pub flags: u8,
}

fn python(f: &PyRaw) -> FrameInfo {
    match &f.frame {
        Some(p) => FrameInfo {
            name: p.function.clone(),
            file: Some(p.file.clone()),
            line: p.line,
            kind: FrameKind::Python,
        },
        None => FrameInfo::new(FrameKind::Python, "[unreadable python frame]"),
    }
}

pub fn native(f: &Frame) -> FrameInfo {
    FrameInfo {
        name: f.function.clone(),
        file: f.file.as_ref().map(|p| {
            std::path::Path::new(p)
                .file_name()
                .map_or_else(|| p.clone(), |n| n.to_string_lossy().into_owned())
        }),
        // The line of a native pc splits one function into many leaves; the function is the
        // useful unit in a flamegraph (Python frames keep theirs: it is the statement).
        line: None,
        kind: FrameKind::Native,
    }
}

/// Python frames split per eval-loop call, innermost segment first, each innermost first.
fn segments(py: &[PyRaw]) -> Vec<Vec<FrameInfo>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for f in py {
        if f.flags & PY_OWNER_MASK == OWNED_BY_CSTACK {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        cur.push(python(f));
        if f.flags & PY_FLAG_ENTRY != 0 {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// All inputs innermost first; the result root to leaf.
pub fn merge(native_frames: &[Frame], py: &[PyRaw], kernel: &[Frame]) -> Vec<FrameInfo> {
    let mut leaf_first: Vec<FrameInfo> = kernel
        .iter()
        .map(|k| FrameInfo::new(FrameKind::Kernel, k.function.clone()))
        .collect();
    let segs = segments(py);
    if segs.is_empty() {
        leaf_first.extend(native_frames.iter().map(native));
    } else if native_frames.iter().any(|n| n.function == EVAL_LOOP) {
        let mut segs = segs.into_iter();
        let last_eval = native_frames
            .iter()
            .rposition(|n| n.function == EVAL_LOOP)
            .unwrap_or(0);
        for n in &native_frames[..=last_eval] {
            if n.function == EVAL_LOOP {
                match segs.next() {
                    Some(seg) => leaf_first.extend(seg),
                    None => leaf_first.push(native(n)),
                }
            } else {
                leaf_first.push(native(n));
            }
        }
        // The native unwind ended before the outermost eval-loop calls.
        leaf_first.extend(segs.flatten());
    } else {
        leaf_first.extend(native_frames.first().map(native));
        leaf_first.extend(segs.into_iter().flatten());
    }
    leaf_first.reverse();
    leaf_first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str) -> Frame {
        Frame {
            function: name.into(),
            file: None,
            line: None,
            module: None,
        }
    }

    fn p(name: &str, flags: u8) -> PyRaw {
        PyRaw {
            frame: Some(PyFrame {
                function: name.into(),
                file: "app.py".into(),
                line: Some(1),
            }),
            flags,
        }
    }

    fn shim() -> PyRaw {
        PyRaw {
            frame: None,
            flags: OWNED_BY_CSTACK,
        }
    }

    fn names(v: &[FrameInfo]) -> Vec<&str> {
        v.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn python_segments_replace_eval_loop_frames_312() {
        // view → sorted(key=k) → k, where sorted is C calling back into Python.
        let native_frames = [
            n(EVAL_LOOP),
            n("PyObject_Call"),
            n("list_sort"),
            n(EVAL_LOOP),
            n("Py_RunMain"),
            n("main"),
        ];
        let py = [p("k", 0), shim(), p("view", 0), p("app", 0), shim()];
        let got = merge(&native_frames, &py, &[n("do_syscall_64")]);
        assert_eq!(
            names(&got),
            [
                "app",
                "view",
                "list_sort",
                "PyObject_Call",
                "k",
                "do_syscall_64"
            ]
        );
    }

    #[test]
    fn entry_flag_splits_segments_311() {
        let native_frames = [n("sre_match"), n(EVAL_LOOP), n("call"), n(EVAL_LOOP)];
        let py = [
            p("inner", PY_FLAG_ENTRY),
            p("outer", 0),
            p("main", PY_FLAG_ENTRY),
        ];
        assert_eq!(
            names(&merge(&native_frames, &py, &[])),
            ["main", "outer", "call", "inner", "sre_match"]
        );
    }

    #[test]
    fn broken_native_unwind_keeps_the_leaf_under_python() {
        let native_frames = [n("PyLong_Add"), n("0x1234")];
        let py = [p("f", 0), p("view", 0)];
        assert_eq!(
            names(&merge(&native_frames, &py, &[])),
            ["view", "f", "PyLong_Add"]
        );
    }

    #[test]
    fn leftover_segments_go_to_the_root() {
        let native_frames = [n(EVAL_LOOP)];
        let py = [p("f", 0), shim(), p("outer", 0), shim()];
        assert_eq!(names(&merge(&native_frames, &py, &[])), ["outer", "f"]);
    }

    #[test]
    fn native_only_threads_keep_every_frame() {
        assert_eq!(
            names(&merge(&[n("spin"), n("handle"), n("main")], &[], &[])),
            ["main", "handle", "spin"]
        );
    }
}
