//! `stack()` against fake address spaces: what a live target does to us, without root.

use super::{
    fake::{Builder, FrameSpec, FRAME_SIZE},
    layout::OWNED_BY_THREAD,
    PyError, PyFrame, MAX_FRAMES,
};

const VERSIONS: [(u8, u8); 5] = [(3, 9), (3, 10), (3, 11), (3, 12), (3, 13)];
/// Versions whose frames live in data-stack chunks.
const CHUNKED: [(u8, u8); 3] = [(3, 11), (3, 12), (3, 13)];

fn frame(function: &str, file: &str, line: u32) -> PyFrame {
    PyFrame {
        function: function.into(),
        file: file.into(),
        line: Some(line),
    }
}

/// main() → handler() → inner_sleep(), on thread 100.
fn three_frames(b: &mut Builder) -> (u64, [u64; 3]) {
    let main = b.code("main", "/app/server.py", 10, 20);
    let handler = b.code("Handler.get", "/app/views.py", 40, 20);
    let inner = b.code("inner_sleep", "/app/views/über.py", 7, 20);
    let ts = b.thread(
        100,
        &[
            FrameSpec {
                code: main,
                unit: 3,
            },
            FrameSpec {
                code: handler,
                unit: 5,
            },
            FrameSpec {
                code: inner,
                unit: 1,
            },
        ],
    );
    (ts, [main, handler, inner])
}

#[test]
fn reads_every_version() {
    for v in VERSIONS {
        let mut b = Builder::new(v);
        three_frames(&mut b);
        let mut p = b.process(None);
        assert_eq!(p.version(), v);
        let got = p.stack(100).unwrap();
        assert_eq!(
            got,
            vec![
                frame("inner_sleep", "/app/views/über.py", 8),
                frame("Handler.get", "/app/views.py", 45),
                frame("main", "/app/server.py", 13),
            ],
            "{v:?}"
        );
        let first = p.last_syscalls();
        // Again: names and tables come from the cache, so one read fewer.
        assert_eq!(p.stack(100).unwrap(), got);
        let second = p.last_syscalls();
        assert!(second < first, "{v:?}: {second} !< {first}");
        // Thread state; the chunk and the innermost pointer, twice; the shim frame the eval
        // loop's entry leaves on the C stack (3.12+); code headers. 3.9/3.10: thread state and
        // its pthread's TID; the thread state twice; each frame object; all frames again; code
        // headers.
        let want = match v {
            (3, 9) | (3, 10) => 7,
            (3, 11) => 3,
            _ => 4,
        };
        assert_eq!(second, want, "{v:?}");
    }
}

#[test]
fn unknown_thread_and_idle_thread_are_empty() {
    for v in VERSIONS {
        let mut b = Builder::new(v);
        let (ts, _) = three_frames(&mut b);
        let mut p = b.process(None);
        assert_eq!(p.stack(999).unwrap(), vec![], "not a Python thread");
        b.set_innermost(ts, 0);
        assert_eq!(
            p.stack(100).unwrap(),
            vec![],
            "between two calls into Python"
        );
    }
}

#[test]
fn finds_threads_by_native_id() {
    let mut b = Builder::new((3, 12));
    let a = b.code("a", "a.py", 1, 4);
    let c = b.code("c", "c.py", 1, 4);
    b.thread(200, &[FrameSpec { code: a, unit: 0 }]);
    b.thread(201, &[FrameSpec { code: c, unit: 2 }]);
    let mut p = b.process(None);
    assert_eq!(p.stack(200).unwrap(), vec![frame("a", "a.py", 1)]);
    assert_eq!(p.stack(201).unwrap(), vec![frame("c", "c.py", 3)]);
    assert_eq!(p.stack(200).unwrap(), vec![frame("a", "a.py", 1)]);
}

#[test]
fn code_cache_notices_a_reused_address() {
    for v in VERSIONS {
        let mut b = Builder::new(v);
        let (_, [_, _, inner]) = three_frames(&mut b);
        let mut p = b.process(None);
        assert_eq!(p.stack(100).unwrap()[0].function, "inner_sleep");
        let misses = p.codes.misses;
        assert_eq!(p.stack(100).unwrap()[0].function, "inner_sleep");
        assert_eq!(p.codes.misses, misses, "{v:?}: a hit reads nothing");
        // The code object is freed and another allocated at the same address.
        let q = b.string("Other.replacement");
        let f = b.string("/app/other.py");
        let t = b.bytes_object(&super::fake::linear_table(b.layout.lines, 20));
        let fresh = b.code_with(q, f, t, 100, 20);
        let bytes = b.regions.borrow()[&fresh].clone();
        b.write(inner, &bytes);
        let got = p.stack(100).unwrap();
        assert_eq!(
            got[0],
            frame("Other.replacement", "/app/other.py", 101),
            "{v:?}"
        );
        assert_eq!(p.codes.misses, misses + 1);
    }
}

#[test]
fn a_frame_that_points_at_non_code_is_torn() {
    for v in VERSIONS {
        let mut b = Builder::new(v);
        let (_, [_, handler, _]) = three_frames(&mut b);
        let mut p = b.process(None);
        p.stack(100).unwrap();
        // Freed and reused for something else: its type is no longer PyCode_Type.
        b.write_u64(handler + b.layout.ob_type, 0xdead_beef);
        assert!(
            matches!(p.stack(100), Err(PyError::Torn(_))),
            "{v:?}: {:?}",
            p.stack(100)
        );
    }
}

#[test]
fn a_caller_that_moved_on_while_read_ends_the_stack() {
    use std::{cell::Cell, rc::Rc};
    for v in CHUNKED {
        let mut b = Builder::new(v);
        let (_, [main, ..]) = three_frames(&mut b);
        // The outermost frame is the chunk's first; between our copy of the chunk and our second
        // look at the chain, it moves to another instruction (a call returned, another began).
        let first_frame = b.last_chunk + super::fake::CHUNK_HEADER;
        let instr_field = first_frame + b.layout.frame_instr;
        let moved = main + b.layout.code_adaptive + 2 * 9;
        let armed = Rc::new(Cell::new(None::<u32>));
        let hook_armed = Rc::clone(&armed);
        let hook = Box::new(
            move |call: u32, read: usize, map: &mut std::collections::BTreeMap<u64, Vec<u8>>| {
                // Call 1 after arming reads the thread state, call 2 copies the chunk twice: strike
                // between the two copies.
                if read == 0 && hook_armed.get().is_some_and(|start| call == start + 2) {
                    let (start, region) = map.range_mut(..=instr_field).next_back().unwrap();
                    let off = (instr_field - start) as usize;
                    region[off..off + 8].copy_from_slice(&moved.to_le_bytes());
                }
            },
        );
        let mut p = b.process(Some(hook));
        assert_eq!(p.stack(100).unwrap().len(), 3);
        armed.set(Some(p.mem.syscalls()));
        // Its callees may belong to the call before: left out; it is kept on its new line.
        assert_eq!(
            p.stack(100).unwrap(),
            vec![frame("main", "/app/server.py", 19)],
            "{v:?}"
        );
        // Read again: all three, with the caller on its new line.
        let got = p.stack(100).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], frame("main", "/app/server.py", 19), "{v:?}");
    }
}

#[test]
fn frames_the_thread_returned_from_are_left_out() {
    use std::{cell::Cell, rc::Rc};
    for v in CHUNKED {
        let mut b = Builder::new(v);
        let (ts, _) = three_frames(&mut b);
        let handler_frame = b.last_chunk + super::fake::CHUNK_HEADER + super::fake::FRAME_SIZE;
        let armed = Rc::new(Cell::new(None::<u32>));
        let hook_armed = Rc::clone(&armed);
        let l = b.layout;
        let cframe_or_ts = match l.current_frame {
            super::layout::CurrentFrame::Direct {
                tstate_current_frame,
            } => ts + tstate_current_frame,
            super::layout::CurrentFrame::ViaCFrame {
                tstate_cframe,
                cframe_current,
            } => {
                let regions = b.regions.borrow();
                let (start, r) = regions.range(..=ts + tstate_cframe).next_back().unwrap();
                let off = (ts + tstate_cframe - start) as usize;
                u64::from_le_bytes(r[off..off + 8].try_into().unwrap()) + cframe_current
            }
        };
        // Between the two chunk copies, inner_sleep returns into Handler.get.
        let hook = Box::new(
            move |call: u32, read: usize, map: &mut std::collections::BTreeMap<u64, Vec<u8>>| {
                if read == 0 && hook_armed.get().is_some_and(|start| call == start + 2) {
                    let (start, region) = map.range_mut(..=cframe_or_ts).next_back().unwrap();
                    let off = (cframe_or_ts - start) as usize;
                    region[off..off + 8].copy_from_slice(&handler_frame.to_le_bytes());
                }
            },
        );
        let mut p = b.process(Some(hook));
        assert_eq!(p.stack(100).unwrap().len(), 3);
        armed.set(Some(p.mem.syscalls()));
        let got = p.stack(100).unwrap();
        assert_eq!(
            got,
            vec![
                frame("Handler.get", "/app/views.py", 45),
                frame("main", "/app/server.py", 13)
            ],
            "{v:?}"
        );
    }
}

#[test]
fn loops_and_garbage_in_the_chain_are_torn() {
    let mut b = Builder::new((3, 13));
    let (ts, [main, ..]) = three_frames(&mut b);
    // A frame whose `previous` is itself.
    let looped = b.put(&vec![0u8; FRAME_SIZE as usize]);
    let bytes = b.frame_bytes(main, 0, looped, OWNED_BY_THREAD);
    b.write(looped, &bytes);
    b.set_innermost(ts, looped);
    let mut p = b.process(None);
    assert!(matches!(
        p.stack(100),
        Err(PyError::Torn("frame chain loops"))
    ));
    // An owner no CPython writes.
    let bytes = b.frame_bytes(main, 0, 0, 9);
    b.write(looped, &bytes);
    assert!(matches!(p.stack(100), Err(PyError::Torn(_))));
    // A pointer into unmapped memory.
    b.set_innermost(ts, 0x7777_0000);
    assert!(matches!(p.stack(100), Err(PyError::Torn(_))));
    // A misaligned one.
    b.set_innermost(ts, looped + 3);
    assert!(matches!(p.stack(100), Err(PyError::Torn(_))));
}

#[test]
fn thread_moving_on_mid_read_is_torn_or_consistent() {
    // At each point of our reading, the "thread" returns from its innermost call and the code
    // object of that call is freed and its memory unmapped. Whatever we return must be a valid
    // stack or Torn: never a panic or a hang.
    for v in VERSIONS {
        for (after, at_read) in (1..8u32).flat_map(|c| (0..3usize).map(move |r| (c, r))) {
            let mut b = Builder::new(v);
            let (_, [_, _, inner]) = three_frames(&mut b);
            let hook = Box::new(
                move |call: u32,
                      read: usize,
                      map: &mut std::collections::BTreeMap<u64, Vec<u8>>| {
                    if call == after && read == at_read {
                        map.remove(&inner);
                    }
                },
            );
            let mut p = b.process(Some(hook));
            match p.stack(100) {
                Ok(frames) => assert!(frames.len() == 3, "{v:?} at {after}/{at_read}: {frames:?}"),
                Err(PyError::Torn(_)) => {}
                Err(e) => panic!("{v:?} at {after}/{at_read}: {e}"),
            }
        }
    }
}

#[test]
fn deep_stacks_span_chunks_and_are_cut() {
    for v in CHUNKED {
        let mut b = Builder::new(v);
        let f = b.code("recurse", "r.py", 1, 8);
        let specs = |n| vec![FrameSpec { code: f, unit: 2 }; n];
        // 150 frames in an older chunk, 150 in the current one.
        let (old_chunk, old_innermost, old_top, _) = b.chunk(&specs(150), 0, 0);
        let (chunk, innermost, top, limit) = b.chunk(&specs(150), old_innermost, old_chunk);
        b.write_u64(old_chunk + 16, old_top - old_chunk);
        b.thread_state(100, innermost, chunk, top, limit);
        let mut p = b.process(None);
        let got = p.stack(100).unwrap();
        assert_eq!(got.len(), MAX_FRAMES, "{v:?}");
        assert!(got.iter().all(|f| f == &frame("recurse", "r.py", 3)));
        // Warm: thread state, the chunk (twice), the first older frame, the older chunk copied
        // whole (not a frame at a time), the older frames' second reading, code headers.
        p.stack(100).unwrap();
        assert!(p.last_syscalls() <= 6, "{v:?}: {}", p.last_syscalls());
    }
}

#[test]
fn random_memory_never_panics() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for v in VERSIONS {
        for _ in 0..300 {
            let mut b = Builder::new(v);
            let (ts, codes) = three_frames(&mut b);
            // Scribble over the thread state, a frame or a code object.
            let targets = [ts, codes[0], codes[1], codes[2]];
            let target = targets[(rnd() % 4) as usize];
            let len = b.regions.borrow()[&target].len() as u64;
            for _ in 0..4 {
                let off = rnd() % (len - 8).min(200);
                let val = match rnd() % 3 {
                    0 => rnd(),
                    1 => targets[(rnd() % 4) as usize] + rnd() % 256,
                    _ => rnd() % 300,
                };
                b.write_u64(target + (off & !7), val);
            }
            let mut p = b.process(None);
            let _ = p.stack(100);
        }
    }
}

#[test]
fn code_cache_is_capped_and_counts_evictions() {
    let mut b = Builder::new((3, 12));
    let codes: Vec<u64> = (0..10)
        .map(|i| b.code(&format!("f{i}"), "/app/many.py", i * 10, 4))
        .collect();
    let mut p = b.process(None);
    p.codes = super::codes::CodeCache::with_cap(4);
    for &c in &codes {
        let got = p.resolve(&[(c, 0)]);
        assert!(got[0].is_some());
    }
    // Ten code objects through a cache of four: six evicted, and each still resolves (again
    // read from the target: a miss, not a wrong name).
    assert_eq!(p.codes.evicted(), 6);
    let misses = p.codes.misses;
    let first = p.resolve(&[(codes[0], 0)]);
    assert_eq!(first[0].as_ref().unwrap().function, "f0");
    assert_eq!(p.codes.misses, misses + 1);
}

#[test]
fn old_pythons_count_f_lasti_in_their_own_units() {
    // The same code unit 5 is f_lasti 10 in 3.9 (bytes) and 5 in 3.10 (code units); both must
    // land on line 45 of Handler.get. Before its first instruction f_lasti is -1: the first line.
    for v in [(3, 9), (3, 10)] {
        let mut b = Builder::new(v);
        let (ts, [_, handler, _]) = three_frames(&mut b);
        let mut p = b.process(None);
        assert_eq!(
            p.stack(100).unwrap()[1],
            frame("Handler.get", "/app/views.py", 45)
        );
        let fresh = b.frame_bytes(handler, 0, 0, OWNED_BY_THREAD);
        let f = b.put(&fresh);
        b.write(f + b.layout.frame_instr, &(-1i32).to_le_bytes());
        b.set_innermost(ts, f);
        assert_eq!(
            p.stack(100).unwrap(),
            vec![frame("Handler.get", "/app/views.py", 40)],
            "{v:?}"
        );
        // What the kernel walker hands over: f_lasti with f_lineno in the upper half.
        let lasti = if v == (3, 9) { 10u64 } else { 5 };
        let got = p.resolve(&[(handler, lasti | (77 << 32))]);
        assert_eq!(got[0].as_ref().unwrap().line, Some(45), "{v:?}");
    }
}

#[test]
fn old_pythons_find_threads_through_their_pthread() {
    for v in [(3, 9), (3, 10)] {
        let mut b = Builder::new(v);
        let a = b.code("a", "a.py", 1, 4);
        let c = b.code("c", "c.py", 1, 4);
        let ta = b.thread(200, &[FrameSpec { code: a, unit: 0 }]);
        b.thread(201, &[FrameSpec { code: c, unit: 2 }]);
        let mut p = b.process(None);
        assert_eq!(p.stack(200).unwrap(), vec![frame("a", "a.py", 1)]);
        assert_eq!(p.stack(201).unwrap(), vec![frame("c", "c.py", 3)]);
        // Thread 200 exits and its pthread struct is reused by a new thread 202 that has no
        // thread state: the cached state no longer names 200, and nothing else does.
        let pthread = {
            let regions = b.regions.borrow();
            let (start, r) = regions
                .range(..=ta + b.layout.tstate_native_thread_id)
                .next_back()
                .unwrap();
            let off = (ta + b.layout.tstate_native_thread_id - start) as usize;
            u64::from_le_bytes(r[off..off + 8].try_into().unwrap())
        };
        let super::layout::ThreadId::Pthread { tid } = b.layout.thread_id else {
            panic!("{v:?} names threads by pthread_t");
        };
        b.write(pthread + tid, &202u32.to_le_bytes());
        assert_eq!(p.stack(200).unwrap(), vec![], "{v:?}");
        assert_eq!(p.stack(201).unwrap(), vec![frame("c", "c.py", 3)]);
    }
}

#[test]
fn old_pythons_cut_deep_stacks() {
    for v in [(3, 9), (3, 10)] {
        let mut b = Builder::new(v);
        let f = b.code("recurse", "r.py", 1, 8);
        b.thread(100, &vec![FrameSpec { code: f, unit: 2 }; 300]);
        let mut p = b.process(None);
        let got = p.stack(100).unwrap();
        assert_eq!(got.len(), MAX_FRAMES, "{v:?}");
        assert!(got.iter().all(|f| f == &frame("recurse", "r.py", 3)));
    }
}

#[test]
fn old_pythons_refuse_a_chain_into_freed_frames() {
    // The thread returned from Handler.get meanwhile: its frame object went back to the free
    // list (ob_refcnt 0, f_back now the list's next) — readable, but not a stack any more.
    for v in [(3, 9), (3, 10)] {
        let mut b = Builder::new(v);
        three_frames(&mut b);
        let mut p = b.process(None);
        assert_eq!(p.stack(100).unwrap().len(), 3);
        let regions = b.regions.borrow().clone();
        let handler_frame = regions
            .iter()
            .find(|(_, r)| {
                r.len() >= b.layout.frame_header as usize
                    && r[..8] == 1u64.to_le_bytes()
                    && r[b.layout.frame_previous as usize..][..8] != [0; 8]
                    && regions.keys().any(|k| {
                        r[b.layout.frame_previous as usize..][..8] == k.to_le_bytes()
                            && regions[k][b.layout.frame_previous as usize..][..8] == [0; 8]
                    })
            })
            .map(|(a, _)| *a)
            .expect("the middle frame");
        b.write_u64(handler_frame, 0);
        assert!(
            matches!(p.stack(100), Err(PyError::Torn(_))),
            "{v:?}: {:?}",
            p.stack(100)
        );
    }
}

/// Found by fuzzing (fuzz/fuzz_targets/python_reader.rs): addresses read from the target near
/// the top of the address space overflowed when a field offset was added (a panic with overflow
/// checks on; `cargo test` without --release shows it). They are just unreadable addresses.
#[test]
fn pointers_at_the_top_of_the_address_space_are_unreadable_not_overflows() {
    for v in VERSIONS {
        let mut b = Builder::new(v);
        let (ts, _) = three_frames(&mut b);
        let l = b.layout;
        // An interpreter list pointing at the last bytes.
        b.write_u64(b.runtime + l.runtime_interpreters_head, u64::MAX - 7);
        let mut p = b.process(None);
        assert!(matches!(p.stack(100), Err(PyError::Torn(_))), "{v:?}");
        // A cframe there (3.11/3.12), or a chunk whose older chunk is there (3.11+).
        let mut b = Builder::new(v);
        let (ts2, _) = three_frames(&mut b);
        if let super::layout::CurrentFrame::ViaCFrame { tstate_cframe, .. } = l.current_frame {
            b.write_u64(ts2 + tstate_cframe, u64::MAX - 3);
        }
        if l.frames == super::layout::Frames::Interpreter {
            b.write_u64(b.last_chunk, u64::MAX - 15);
        }
        let _ = b.process(None).stack(100);
        let _ = ts;
    }
}
