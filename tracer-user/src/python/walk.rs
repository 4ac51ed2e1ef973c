//! Following one thread's frame chain.
//!
//! 3.11+ frames mostly live in the thread's data-stack chunks, copied whole; 3.9/3.10 frames are
//! heap `PyFrameObject`s, read one per system call while following `f_back` (as py-spy does),
//! then re-read in one batch to see which held still.

use std::collections::HashSet;

use super::{
    layout::{CurrentFrame, Frames, Layout, OWNED_BY_CSTACK, OWNED_BY_THREAD},
    memory::{AddressSpace, Fields as _, Read},
    PyError, PyFrame, PythonProcess, MAX_FRAMES,
};

/// `_PyStackChunk` (3.11–3.13): `previous`, `size` (bytes, header included), `top`, `data[]`.
const CHUNK_PREVIOUS: usize = 0;
const CHUNK_SIZE: usize = 8;
/// Read this much past the data-stack top: frames pushed between our read of the thread state
/// and the copy are then still in it (a frame is ~100 bytes; a fast recursive function pushes
/// dozens in the microseconds between the two), instead of costing a read each.
const TOP_SLACK: u64 = 4096;
/// CPython's first chunk size (`DATA_STACK_CHUNK_SIZE`), our guess for an older chunk.
const CHUNK_GUESS: usize = 16 * 1024;
/// Largest chunk we copy; a frame beyond it is read on its own.
const MAX_CHUNK: u64 = 1 << 20;
/// Older chunks we are willing to load for one stack.
const MAX_CHUNKS: usize = 8;

/// Copies of data-stack chunks: most frames are found here without another read.
struct Chunks {
    regions: Vec<(u64, Vec<u8>)>,
    /// The next older chunk not loaded yet (0: none).
    older: u64,
}

impl Chunks {
    /// The `frame_header` bytes of the frame at `addr`, if a copied chunk holds them.
    fn frame(&self, addr: u64, len: u64) -> Option<&[u8]> {
        self.regions.iter().find_map(|(start, bytes)| {
            let off = addr.checked_sub(*start)?;
            let end = off.checked_add(len)?;
            bytes.get(off as usize..end as usize)
        })
    }

    /// Load the next older chunk (speculatively its usual size, then the rest if it is bigger).
    fn load_older(&mut self, mem: &mut dyn AddressSpace) -> Result<(), PyError> {
        let addr = std::mem::take(&mut self.older);
        if addr == 0 || self.regions.len() > MAX_CHUNKS {
            return Ok(());
        }
        let mut buf = vec![0u8; CHUNK_GUESS];
        let mut r = [Read::new(addr, &mut buf)];
        mem.read_batch(&mut r)?;
        let got = r[0].got;
        buf.truncate(got);
        let (Some(size), Some(previous)) = (buf.u64_at(CHUNK_SIZE), buf.u64_at(CHUNK_PREVIOUS))
        else {
            return Ok(());
        };
        let size = size.min(MAX_CHUNK) as usize;
        if size > buf.len() {
            buf.resize(size, 0);
            mem.read_exact(addr.wrapping_add(got as u64), &mut buf[got..])
                .map_err(|_| PyError::Torn("data-stack chunk unreadable"))?;
        } else {
            buf.truncate(size);
        }
        self.older = previous;
        self.regions.push((addr, buf));
        Ok(())
    }
}

/// A frame as found on the stack, before its code object is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hop {
    addr: u64,
    previous: u64,
    code: u64,
    instr: u64,
    owner: u8,
    /// 3.9/3.10: the frame object's reference count is not 0. A freed frame object stays
    /// readable (kept as its code's "zombie" frame or on the frame free list, which is linked
    /// through `f_back`), so without this a walk that follows a link the thread just dropped
    /// would report a chain of dead frames. Always true for 3.11+ frames.
    live: bool,
}

/// `PyObject.ob_refcnt`, first in every object of a default (not free-threaded) build.
const OB_REFCNT: usize = 0;

impl Hop {
    fn parse(l: &Layout, addr: u64, header: &[u8]) -> Option<Hop> {
        Some(Hop {
            addr,
            previous: header.u64_at(l.frame_previous as usize)?,
            code: header.u64_at(l.frame_code as usize)?,
            instr: header.u64_at(l.frame_instr as usize)?,
            owner: match l.frames {
                Frames::Interpreter => header.u8_at(l.frame_owner as usize)?,
                // Frame objects: every one is a Python call.
                Frames::Objects { .. } => OWNED_BY_THREAD,
            },
            live: match l.frames {
                Frames::Interpreter => true,
                Frames::Objects { .. } => header.u64_at(OB_REFCNT)? != 0,
            },
        })
    }

    /// The same frame (address, link, code, owner), whatever its instruction.
    fn same_but_instr(&self, other: &Hop) -> bool {
        Hop {
            instr: self.instr,
            ..*other
        } == *self
    }

    /// Shim frames mark an entry into the eval loop from C; they run no Python code.
    fn is_python(&self) -> bool {
        self.owner != OWNED_BY_CSTACK
    }
}

pub fn stack(p: &mut PythonProcess, tid: u32) -> Result<Vec<PyFrame>, PyError> {
    let layout = p.layout;
    let mem = p.mem.as_mut();
    let Some((tstate, ts)) = p.threads.find(mem, &layout, p.runtime, tid)? else {
        return Ok(Vec::new());
    };
    let Some(mut snap) = snapshot(mem, &layout, tstate, &ts)? else {
        return Ok(Vec::new());
    };
    let hops = frames(mem, &layout, &mut snap.chunks, snap.innermost)?;
    let hops = settle(mem, &layout, tstate, &snap, hops)?;
    let python: Vec<&Hop> = hops.iter().filter(|h| h.is_python()).collect();
    let mut addrs: Vec<u64> = python.iter().map(|f| f.code).collect();
    addrs.sort_unstable();
    addrs.dedup();
    let codes = p.codes.resolve(mem, &layout, p.code_type, &addrs)?;
    python
        .iter()
        .map(|f| {
            let code = codes
                .get(&f.code)
                .ok_or(PyError::Torn("code object vanished"))?;
            Ok(PyFrame {
                function: code.qualname.clone(),
                file: code.filename.clone(),
                line: code.line(&layout, f.code, f.instr),
            })
        })
        .collect()
}

/// Two copies of the thread's current chunk, each followed by the innermost-frame pointer, all
/// in one system call.
struct Snapshot {
    /// The first copy (and older chunks, loaded later as the walk needs them).
    chunks: Chunks,
    /// The second copy, made right after the first, covering the same range.
    second: Vec<u8>,
    chunk: u64,
    /// Innermost frame after the first copy, and after the second.
    innermost: u64,
    now: u64,
    /// 3.11/3.12: the `_PyCFrame` holding the innermost-frame pointer.
    cframe: Option<u64>,
    ts_len: usize,
}

/// Copy the live part of the thread's current chunk (up to a little past the data-stack top),
/// then the innermost-frame pointer; then both again.
///
/// The pointer is read after the copy, not before: read first, the thread could return below it
/// before the copy and the stale frames above its real top would be reported as live. The
/// second copy, made a microsecond later, shows which frames held still (see [`settle`]).
/// (Comparing the pointer with `datastack_top` does not work: 3.11/3.12 keep `current_frame` in
/// a `_PyCFrame` whose stores the compiler may delay, so it can lag the top; measured: most
/// reads of a `fib()` loop were refused that way.)
fn snapshot(
    mem: &mut dyn AddressSpace,
    l: &Layout,
    tstate: u64,
    ts: &[u8],
) -> Result<Option<Snapshot>, PyError> {
    let (chunk, top, limit) = match l.frames {
        Frames::Interpreter => (
            field(ts, l.tstate_datastack_chunk)?,
            field(ts, l.tstate_datastack_top)?,
            field(ts, l.tstate_datastack_limit)?,
        ),
        // 3.9/3.10 frames are heap objects: each is read on its own.
        Frames::Objects { .. } => (0, 0, 0),
    };
    let cframe = match l.current_frame {
        CurrentFrame::ViaCFrame { tstate_cframe, .. } => match field(ts, tstate_cframe)? {
            0 => return Ok(None),
            c => Some(c),
        },
        CurrentFrame::Direct { .. } => None,
    };
    // No data stack yet, or fields caught mid-update: frames then get read one by one.
    let chunk_len = if chunk != 0 && chunk <= top && top <= limit {
        (top.saturating_add(TOP_SLACK).min(limit) - chunk).min(MAX_CHUNK) as usize
    } else {
        0
    };
    let mut first = vec![0u8; chunk_len];
    let mut second = vec![0u8; chunk_len];
    let mut ts_first = vec![0u8; ts.len()];
    let mut ts_second = vec![0u8; ts.len()];
    let (mut cur_first, mut cur_second) = ([0u8; 8], [0u8; 8]);
    let (got_first, got_second) = {
        let mut reads = Vec::with_capacity(6);
        for (copy, ts_buf, cur) in [
            (&mut first, &mut ts_first, &mut cur_first),
            (&mut second, &mut ts_second, &mut cur_second),
        ] {
            reads.push(Read::new(chunk, copy));
            reads.push(Read::new(tstate, ts_buf));
            if let (Some(c), CurrentFrame::ViaCFrame { cframe_current, .. }) =
                (cframe, l.current_frame)
            {
                // The cframe lives on the thread's C stack; one that was just unwound reads as
                // stale data, which the walk's checks catch.
                reads.push(Read::new(c.wrapping_add(cframe_current), cur));
            }
        }
        mem.read_batch(&mut reads)?;
        let per = reads.len() / 2;
        if !reads[1..per]
            .iter()
            .chain(&reads[per + 1..])
            .all(Read::complete)
        {
            return Err(PyError::Torn("thread state or cframe unreadable"));
        }
        (reads[0].got, reads[per].got)
    };
    first.truncate(got_first);
    second.truncate(got_second.min(got_first));
    let pointer = |ts_buf: &[u8], cur: [u8; 8]| -> Result<u64, PyError> {
        match l.current_frame {
            CurrentFrame::Direct {
                tstate_current_frame,
            } => field(ts_buf, tstate_current_frame),
            CurrentFrame::ViaCFrame { tstate_cframe, .. } => {
                if Some(field(ts_buf, tstate_cframe)?) != cframe {
                    return Err(PyError::Torn("thread entered or left the eval loop"));
                }
                Ok(u64::from_le_bytes(cur))
            }
        }
    };
    let innermost = pointer(&ts_first, cur_first)?;
    let now = pointer(&ts_second, cur_second)?;
    if innermost == 0 {
        return Ok(None);
    }
    let mut chunks = Chunks {
        regions: Vec::new(),
        older: first.u64_at(CHUNK_PREVIOUS).unwrap_or(0),
    };
    if !first.is_empty() {
        chunks.regions.push((chunk, first));
    }
    Ok(Some(Snapshot {
        chunks,
        second,
        chunk,
        innermost,
        now,
        cframe,
        ts_len: ts.len(),
    }))
}

fn field(buf: &[u8], off: u64) -> Result<u64, PyError> {
    buf.u64_at(off as usize)
        .ok_or(PyError::Torn("short thread state"))
}

/// Keep the part of the stack that held still between two reads of it.
///
/// The chunk copy is not atomic: for a thread that calls and returns millions of times a second
/// (a recursive function), a frame copied early can belong to a call that had already returned
/// by the time its callee, copied later, was. Measured on a `fib(18)` loop: about one read in
/// ten showed a caller on a line that calls nothing. So every frame is compared with its second
/// reading — from the second chunk copy, or for frames outside the chunk (generators, older
/// chunks) from one more read — and so is the innermost-frame pointer.
///
/// Kept: from the outermost frame inwards, the frames identical in both readings (a frame that
/// only moved to another instruction is kept, at its newer instruction, and ends the run); and
/// if the thread returned into one of our frames meanwhile, nothing above that frame. Such a
/// stack existed at the second reading. Only when nothing held still is the read
/// [`PyError::Torn`].
fn settle(
    mem: &mut dyn AddressSpace,
    l: &Layout,
    tstate: u64,
    snap: &Snapshot,
    mut hops: Vec<Hop>,
) -> Result<Vec<Hop>, PyError> {
    let len = l.frame_header;
    let in_second = |addr: u64| {
        let off = addr.checked_sub(snap.chunk)?;
        snap.second
            .get(off as usize..off.checked_add(len)? as usize)
    };
    let mut again: Vec<Option<Hop>> = hops
        .iter()
        .map(|h| match in_second(h.addr) {
            Some(buf) => Hop::parse(l, h.addr, buf),
            // A shim frame only links two eval loops: nothing in it to change.
            None if !h.is_python() => Some(*h),
            None => None,
        })
        .collect();
    let mut now = snap.now;
    let missing: Vec<usize> = (0..hops.len()).filter(|&i| again[i].is_none()).collect();
    if !missing.is_empty() {
        let mut headers = vec![vec![0u8; len as usize]; missing.len()];
        let mut ts = vec![0u8; snap.ts_len];
        let mut current = [0u8; 8];
        {
            let mut reads: Vec<Read<'_>> = missing
                .iter()
                .zip(headers.iter_mut())
                .map(|(&i, buf)| Read::new(hops[i].addr, buf))
                .collect();
            reads.push(Read::new(tstate, &mut ts));
            if let (Some(c), CurrentFrame::ViaCFrame { cframe_current, .. }) =
                (snap.cframe, l.current_frame)
            {
                reads.push(Read::new(c.wrapping_add(cframe_current), &mut current));
            }
            mem.read_batch(&mut reads)?;
            if !reads.iter().all(Read::complete) {
                return Err(PyError::Torn("stack memory went away while read"));
            }
        }
        for (&i, buf) in missing.iter().zip(&headers) {
            again[i] = Hop::parse(l, hops[i].addr, buf);
        }
        now = match l.current_frame {
            CurrentFrame::Direct {
                tstate_current_frame,
            } => field(&ts, tstate_current_frame)?,
            CurrentFrame::ViaCFrame { .. } => u64::from_le_bytes(current),
        };
    }
    let again: Vec<Hop> = again
        .into_iter()
        .collect::<Option<_>>()
        .ok_or(PyError::Torn("short frame"))?;
    // `hops` is innermost first: scan from the outermost end for the first change.
    let mut keep_from = 0;
    for i in (0..hops.len()).rev() {
        let (a, b) = (hops[i], again[i]);
        if a == b || (i == 0 && a.same_but_instr(&b)) {
            continue;
        }
        if a.same_but_instr(&b) {
            // Same frame, same code, later instruction: it ran on; keep it where it is now.
            hops[i].instr = b.instr;
            keep_from = i;
        } else {
            keep_from = i + 1;
        }
        break;
    }
    if now != snap.innermost {
        if let Some(j) = hops.iter().position(|h| h.addr == now) {
            // The thread returned into frame j: the frames above it are gone.
            hops[j].instr = again[j].instr;
            keep_from = keep_from.max(j);
        }
        // Otherwise it went deeper than our innermost frame, which is then still live.
    }
    if keep_from > 0 {
        log::debug!(
            "stack changed while read: {keep_from} innermost frames left out of {}",
            hops.len()
        );
        hops.drain(..keep_from);
    }
    if !hops.iter().any(Hop::is_python) {
        return Err(PyError::Torn("stack changed while read"));
    }
    Ok(hops)
}

/// Follow `previous` from the innermost frame (shim frames included; the caller skips them).
fn frames(
    mem: &mut dyn AddressSpace,
    l: &Layout,
    chunks: &mut Chunks,
    innermost: u64,
) -> Result<Vec<Hop>, PyError> {
    let mut out: Vec<Hop> = Vec::new();
    let mut python = 0;
    let mut seen = HashSet::new();
    let mut addr = innermost;
    let mut single = vec![0u8; l.frame_header as usize];
    while addr != 0 {
        if python >= MAX_FRAMES {
            log::debug!("stack deeper than {MAX_FRAMES} frames: outermost frames dropped");
            break;
        }
        if !addr.is_multiple_of(8) {
            return Err(PyError::Torn("misaligned frame pointer"));
        }
        if !seen.insert(addr) || seen.len() > 4 * MAX_FRAMES {
            return Err(PyError::Torn("frame chain loops"));
        }
        let in_chunk = chunks.frame(addr, l.frame_header).is_some();
        if !in_chunk {
            mem.read_exact(addr, &mut single)
                .map_err(|_| PyError::Torn("frame pointer into unmapped memory"))?;
            // A thread-owned frame outside the copied chunk is in an older chunk: copy that one
            // whole, for the frames after this one.
            if l.frames == Frames::Interpreter
                && single.u8_at(l.frame_owner as usize) == Some(OWNED_BY_THREAD)
            {
                chunks.load_older(mem)?;
            }
        }
        let header: &[u8] = match chunks.frame(addr, l.frame_header) {
            Some(h) if in_chunk => h,
            _ => &single,
        };
        let hop = Hop::parse(l, addr, header).ok_or(PyError::Torn("short frame"))?;
        if !hop.live {
            return Err(PyError::Torn("the chain led to a freed frame"));
        }
        if hop.owner > OWNED_BY_CSTACK {
            return Err(PyError::Torn("frame with an unknown owner"));
        }
        if hop.is_python() {
            if hop.code == 0 || !hop.code.is_multiple_of(8) {
                return Err(PyError::Torn("frame without a code object"));
            }
            python += 1;
        }
        out.push(hop);
        addr = hop.previous;
    }
    Ok(out)
}
