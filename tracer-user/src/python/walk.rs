//! Following one thread's frame chain.

use std::collections::HashSet;

use super::{
    layout::{CurrentFrame, Layout, OWNED_BY_CSTACK, OWNED_BY_THREAD},
    memory::{AddressSpace, Fields as _, Read},
    PyError, PyFrame, PythonProcess, MAX_FRAMES,
};

/// `_PyStackChunk` (3.11–3.13): `previous`, `size` (bytes, header included), `top`, `data[]`.
const CHUNK_PREVIOUS: usize = 0;
const CHUNK_SIZE: usize = 8;
/// Read this much past the data-stack top: frames pushed between our reads of the thread state
/// and of the chunk are then still in the copy.
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
            mem.read_exact(addr + got as u64, &mut buf[got..])
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
struct RawFrame {
    code: u64,
    instr: u64,
}

pub fn stack(p: &mut PythonProcess, tid: u32) -> Result<Vec<PyFrame>, PyError> {
    let layout = p.layout;
    let mem = p.mem.as_mut();
    let Some((_, ts)) = p.threads.find(mem, &layout, p.runtime, tid)? else {
        return Ok(Vec::new());
    };
    let field = |off: u64| {
        ts.u64_at(off as usize)
            .ok_or(PyError::Torn("short thread state"))
    };
    let innermost = match layout.current_frame {
        CurrentFrame::Direct {
            tstate_current_frame,
        } => field(tstate_current_frame)?,
        CurrentFrame::ViaCFrame {
            tstate_cframe,
            cframe_current,
        } => {
            let cframe = field(tstate_cframe)?;
            if cframe == 0 {
                return Ok(Vec::new());
            }
            // The cframe lives on the thread's C stack; a thread that just left the eval loop
            // may have unwound it, which reads as garbage, caught below.
            mem.read_u64(cframe + cframe_current)
                .map_err(|_| PyError::Torn("cframe unreadable"))?
        }
    };
    if innermost == 0 {
        return Ok(Vec::new());
    }
    let mut chunks = current_chunk(
        mem,
        field(layout.tstate_datastack_chunk)?,
        field(layout.tstate_datastack_top)?,
        field(layout.tstate_datastack_limit)?,
    )?;
    let raw = frames(mem, &layout, &mut chunks, innermost)?;
    let mut addrs: Vec<u64> = raw.iter().map(|f| f.code).collect();
    addrs.sort_unstable();
    addrs.dedup();
    let codes = p.codes.resolve(mem, &layout, p.code_type, &addrs)?;
    raw.iter()
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

/// Copy the live part of the thread's current chunk: from its start to a little past the top.
fn current_chunk(
    mem: &mut dyn AddressSpace,
    chunk: u64,
    top: u64,
    limit: u64,
) -> Result<Chunks, PyError> {
    let mut chunks = Chunks {
        regions: Vec::new(),
        older: 0,
    };
    if chunk == 0 || top < chunk || limit < top {
        // No data stack yet, or fields caught mid-update: frames get read one by one.
        return Ok(chunks);
    }
    let end = top.saturating_add(TOP_SLACK).min(limit);
    let len = (end - chunk).min(MAX_CHUNK) as usize;
    let mut buf = vec![0u8; len];
    let mut r = [Read::new(chunk, &mut buf)];
    mem.read_batch(&mut r)?;
    let got = r[0].got;
    buf.truncate(got);
    chunks.older = buf.u64_at(CHUNK_PREVIOUS).unwrap_or(0);
    chunks.regions.push((chunk, buf));
    Ok(chunks)
}

/// Follow `previous` from the innermost frame, skipping C-stack shim frames.
fn frames(
    mem: &mut dyn AddressSpace,
    l: &Layout,
    chunks: &mut Chunks,
    innermost: u64,
) -> Result<Vec<RawFrame>, PyError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut addr = innermost;
    let mut single = vec![0u8; l.frame_header as usize];
    while addr != 0 {
        if out.len() >= MAX_FRAMES {
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
            if single.u8_at(l.frame_owner as usize) == Some(OWNED_BY_THREAD) {
                chunks.load_older(mem)?;
            }
        }
        let header: &[u8] = match chunks.frame(addr, l.frame_header) {
            Some(h) if in_chunk => h,
            _ => &single,
        };
        let (Some(owner), Some(code), Some(instr), Some(previous)) = (
            header.u8_at(l.frame_owner as usize),
            header.u64_at(l.frame_code as usize),
            header.u64_at(l.frame_instr as usize),
            header.u64_at(l.frame_previous as usize),
        ) else {
            return Err(PyError::Torn("short frame"));
        };
        if owner > OWNED_BY_CSTACK {
            return Err(PyError::Torn("frame with an unknown owner"));
        }
        // A shim frame marks an entry into the eval loop from C; it runs no Python code.
        if owner != OWNED_BY_CSTACK {
            if code == 0 || !code.is_multiple_of(8) {
                return Err(PyError::Torn("frame without a code object"));
            }
            out.push(RawFrame { code, instr });
        }
        addr = previous;
    }
    Ok(out)
}
