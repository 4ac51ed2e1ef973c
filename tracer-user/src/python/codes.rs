//! Code objects: names, file names and location tables, cached by address.
//!
//! Every `stack()` re-reads the header of each code object on the stack (one batched read for
//! all of them). The header both proves the object is still a code object (`ob_type`) and is the
//! cache key: a freed code object whose address is reused by another has a different
//! qualname/filename/linetable pointer or first line, so the cache entry is replaced rather than
//! misreporting the old function. Only on a miss do we read its strings and location table.

use std::{collections::HashMap, rc::Rc};

use crate::bounded::Bounded;

use super::{
    layout::{Frames, Layout},
    linetable,
    memory::{AddressSpace, Fields as _, Read},
    strings::{self, MAX_LINETABLE_BYTES},
    PyError,
};

/// At most this many code objects per process (a long-lived process that loads code
/// dynamically should not grow us without bound); the least recently used go first.
const MAX_CACHED: usize = 8192;
/// First read of a string or bytes object: header plus what most names and paths need.
const STR_GUESS: usize = 256;
const TABLE_GUESS: usize = 1024;

/// Header fields that identify a code object: if any changes, it is a different object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    qualname: u64,
    filename: u64,
    linetable: u64,
    firstlineno: i32,
    units: Option<u64>,
}

/// What we keep of a code object.
#[derive(Debug)]
pub struct Code {
    key: Key,
    pub qualname: String,
    pub filename: String,
    lines: linetable::Lines,
    /// Number of code units in `co_code_adaptive` (3.11+).
    units: Option<u64>,
}

impl Code {
    /// Line of the instruction at `instr` (3.11+: an address inside the code object at `code`;
    /// 3.9/3.10: `f_lasti`).
    pub fn line(&self, layout: &Layout, code: u64, instr: u64) -> Option<u32> {
        let unit = match layout.frames {
            Frames::Interpreter => {
                if instr == 0 {
                    return None;
                }
                let first = code.wrapping_add(layout.code_adaptive);
                let bytes = instr.wrapping_sub(first) as i64;
                bytes.div_euclid(2)
            }
            Frames::Objects { lasti_in_bytes } => {
                // An `int`; the walk read 8 bytes (the kernel's too), the upper half is `f_lineno`.
                let lasti = i64::from(instr as u32 as i32);
                match lasti {
                    ..0 => -1,
                    _ if lasti_in_bytes => lasti / 2,
                    _ => lasti,
                }
            }
        };
        // -1: a frame that has not started (3.11/3.12 point one unit before the code, 3.9/3.10
        // have f_lasti -1).
        if unit < -1 || self.units.is_some_and(|n| unit >= n as i64) {
            return None;
        }
        self.lines.at(unit)
    }
}

pub struct CodeCache {
    /// Least recently used entries go beyond `MAX_CACHED` (counted in the run summary).
    by_addr: Bounded<u64, Rc<Code>>,
    /// Misses since creation (tests check that a hit reads nothing more).
    pub misses: u64,
}

impl Default for CodeCache {
    fn default() -> Self {
        Self::with_cap(MAX_CACHED)
    }
}

impl CodeCache {
    pub fn with_cap(cap: usize) -> Self {
        Self {
            by_addr: Bounded::new(cap, Some(&crate::reaper::STATS.code_objects)),
            misses: 0,
        }
    }

    /// Code objects evicted so far.
    #[cfg(test)]
    pub fn evicted(&self) -> u64 {
        self.by_addr.evicted
    }

    /// Resolve every code object in `addrs` (distinct addresses), using and refreshing the cache.
    pub fn resolve(
        &mut self,
        mem: &mut dyn AddressSpace,
        layout: &Layout,
        code_type: u64,
        addrs: &[u64],
    ) -> Result<HashMap<u64, Rc<Code>>, PyError> {
        let header_len = layout.code_adaptive as usize;
        let mut headers = vec![vec![0u8; header_len]; addrs.len()];
        let mut reads: Vec<Read<'_>> = addrs
            .iter()
            .zip(headers.iter_mut())
            .map(|(&a, h)| Read::new(a, h))
            .collect();
        mem.read_batch(&mut reads)?;
        if !reads.iter().all(Read::complete) {
            return Err(PyError::Torn("code object unreadable"));
        }
        drop(reads);
        let mut out = HashMap::with_capacity(addrs.len());
        let mut missing = Vec::new();
        for (&addr, h) in addrs.iter().zip(&headers) {
            if h.u64_at(layout.ob_type as usize) != Some(code_type) {
                return Err(PyError::Torn("frame points to something that is not code"));
            }
            let key = key_of(h, layout).ok_or(PyError::Torn("short code object header"))?;
            if key.units.is_some_and(|u| u == 0 || u > 1 << 24) {
                return Err(PyError::Torn("implausible code object size"));
            }
            match self.by_addr.get(&addr) {
                Some(c) if c.key == key => {
                    out.insert(addr, Rc::clone(c));
                }
                _ => missing.push((addr, key)),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        self.misses += missing.len() as u64;
        for (addr, code) in read_codes(mem, layout, &missing)? {
            let code = Rc::new(code);
            self.by_addr.insert(addr, Rc::clone(&code));
            out.insert(addr, code);
        }
        Ok(out)
    }
}

fn key_of(h: &[u8], l: &Layout) -> Option<Key> {
    Some(Key {
        qualname: h.u64_at(l.code_qualname as usize)?,
        filename: h.u64_at(l.code_filename as usize)?,
        linetable: h.u64_at(l.code_linetable as usize)?,
        firstlineno: h.i32_at(l.code_firstlineno as usize)?,
        units: match l.code_size {
            Some(off) => Some(h.u64_at(off as usize)?),
            None => None,
        },
    })
}

/// Which object of a code object a read is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Qualname,
    Filename,
    Linetable,
}

/// Read the strings and location tables of code objects we have not seen: one batched read with
/// a generous first guess at each size, and one more for the few that were longer.
fn read_codes(
    mem: &mut dyn AddressSpace,
    layout: &Layout,
    missing: &[(u64, Key)],
) -> Result<Vec<(u64, Code)>, PyError> {
    let parts: Vec<(usize, Part, u64)> = missing
        .iter()
        .enumerate()
        .flat_map(|(i, (_, k))| {
            [
                (i, Part::Qualname, k.qualname),
                (i, Part::Filename, k.filename),
                (i, Part::Linetable, k.linetable),
            ]
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = parts
        .iter()
        .map(|(_, p, _)| {
            vec![
                0u8;
                if *p == Part::Linetable {
                    TABLE_GUESS
                } else {
                    STR_GUESS
                }
            ]
        })
        .collect();
    let mut got = batch(mem, &parts, &mut bufs)?;
    let mut again = Vec::new();
    let mut results: Vec<Option<Decoded>> = Vec::with_capacity(parts.len());
    for (j, (_, part, _)) in parts.iter().enumerate() {
        match decode(&bufs[j][..got[j]], *part, layout)? {
            Ok(d) => results.push(Some(d)),
            Err(need) => {
                again.push(j);
                bufs[j] = vec![0u8; need];
                results.push(None);
            }
        }
    }
    if !again.is_empty() {
        let sub: Vec<(usize, Part, u64)> = again.iter().map(|&j| parts[j]).collect();
        let mut sub_bufs: Vec<Vec<u8>> = again
            .iter()
            .map(|&j| std::mem::take(&mut bufs[j]))
            .collect();
        got = batch(mem, &sub, &mut sub_bufs)?;
        for (k, &j) in again.iter().enumerate() {
            match decode(&sub_bufs[k][..got[k]], parts[j].1, layout)? {
                Ok(d) => results[j] = Some(d),
                // It grew between our two reads: it is not the object we first saw.
                Err(_) => return Err(PyError::Torn("string changed while read")),
            }
        }
    }
    let mut out = Vec::with_capacity(missing.len());
    let mut it = results.into_iter();
    for &(addr, key) in missing {
        let (
            Some(Some(Decoded::Str(qualname))),
            Some(Some(Decoded::Str(filename))),
            Some(Some(Decoded::Bytes(linetable))),
        ) = (it.next(), it.next(), it.next())
        else {
            return Err(PyError::Torn("code object parts out of order"));
        };
        out.push((
            addr,
            Code {
                key,
                qualname,
                filename,
                lines: linetable::Lines::decode(layout.lines, &linetable, key.firstlineno),
                units: key.units,
            },
        ));
    }
    Ok(out)
}

enum Decoded {
    Str(String),
    Bytes(Vec<u8>),
}

/// Decode one part; `Ok(Err(n))`: read `n` bytes from the object's start and try again.
fn decode(buf: &[u8], part: Part, layout: &Layout) -> Result<Result<Decoded, usize>, PyError> {
    let bad = |_| PyError::Torn("code object name or table is not a valid object");
    Ok(match part {
        Part::Linetable => strings::bytes(buf, layout, MAX_LINETABLE_BYTES)
            .map_err(bad)?
            .map(Decoded::Bytes),
        _ => strings::unicode(buf, layout)
            .map_err(bad)?
            .map(Decoded::Str),
    })
}

/// One batched read of `parts` into `bufs`; returns the bytes that arrived for each. A read that
/// runs off the end of mapped memory keeps what it got: objects near the end of an arena are
/// shorter than our guess.
fn batch(
    mem: &mut dyn AddressSpace,
    parts: &[(usize, Part, u64)],
    bufs: &mut [Vec<u8>],
) -> Result<Vec<usize>, PyError> {
    let mut reads: Vec<Read<'_>> = parts
        .iter()
        .zip(bufs.iter_mut())
        .map(|((_, _, addr), b)| Read::new(*addr, b))
        .collect();
    mem.read_batch(&mut reads)?;
    Ok(reads.iter().map(|r| r.got).collect())
}
