//! Fuzzing entry points for the stack reader (fuzz/fuzz_targets/python_reader.rs, linetable.rs):
//! built only for the fuzzer (`cfg(fuzzing)`, set by cargo-fuzz) and the unit tests, which replay
//! the committed corpus and the inputs that once failed.
//!
//! The reader's input is another process's memory, which may be garbage, freed, or changing
//! under it. [`image`] turns fuzz bytes into such a process: mapped regions at addresses of the
//! input's choosing (the corpus is seeded with images of every supported CPython version, built
//! by `fake::Builder` and recorded from real interpreters), then pokes that make pointers loop,
//! point out of range or at other objects, and pokes and unmaps scheduled *between* two reads
//! of the reader, as the running thread would. Then it reads every thread named, twice (cold,
//! then through the caches), and resolves kernel-style frames. It must return, quickly, with
//! frames or an error: never panic, never loop.

use std::{cell::RefCell, collections::BTreeMap, rc::Rc};

use super::{
    codes::CodeCache,
    discover,
    layout::{self, Layout, LineFormat, ThreadId},
    linetable,
    memory::{AddressSpace, Read},
    strings::MAX_STRING_BYTES,
    threads::Threads,
    PyError, PythonProcess, MAX_FRAMES,
};

/// The versions an image can claim, by its first byte.
pub const VERSIONS: [(u8, u8); 5] = [(3, 9), (3, 10), (3, 11), (3, 12), (3, 13)];

/// Bytes taken from the input, little-endian; zeros once it runs out (so every input is an
/// image, and a cut one is a smaller image).
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let got = self.bytes(2);
        b[..got.len()].copy_from_slice(got);
        u16::from_le_bytes(b)
    }

    fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let got = self.bytes(4);
        b[..got.len()].copy_from_slice(got);
        u32::from_le_bytes(b)
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.bytes(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(b)
    }
}

/// A process image as the fuzz input describes it (see [`encode`] for the byte format).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// Index into [`VERSIONS`] (taken modulo).
    pub version: u8,
    pub runtime: u64,
    pub code_type: u64,
    /// The thread read first (others may follow in `tids`).
    pub tid: u32,
    /// 3.9/3.10: the libc's `_thread_db_pthread_tid` descriptor.
    pub pthread_desc: [u8; 12],
    pub regions: BTreeMap<u64, Vec<u8>>,
    /// What to do to the image and with it (see [`image`]): the count of changes to make, now
    /// or between two reads, then each ([`Op`]); the count of more threads to read, then their
    /// ids; then (code object, instruction) pairs to resolve as the kernel's walker hands them.
    pub ops: Vec<u8>,
}

/// Most regions and ops one input may hold (more bytes are ignored).
const MAX_REGIONS: usize = 64;
const MAX_OPS: usize = 64;
const MAX_TIDS: usize = 4;

/// Serialize an image: version u8, runtime u64, code_type u64, tid u32, pthread descriptor
/// [u8; 12], region count u8, then each region (address u64, length u32, bytes), then ops.
pub fn encode(img: &Image) -> Vec<u8> {
    let mut out = vec![img.version];
    out.extend_from_slice(&img.runtime.to_le_bytes());
    out.extend_from_slice(&img.code_type.to_le_bytes());
    out.extend_from_slice(&img.tid.to_le_bytes());
    out.extend_from_slice(&img.pthread_desc);
    out.push(img.regions.len().min(MAX_REGIONS) as u8);
    for (addr, bytes) in img.regions.iter().take(MAX_REGIONS) {
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(&img.ops);
    out
}

pub fn decode(data: &[u8]) -> Image {
    let mut i = Input { data };
    let mut img = Image {
        version: i.u8(),
        runtime: i.u64(),
        code_type: i.u64(),
        tid: i.u32(),
        ..Image::default()
    };
    let desc = i.bytes(12);
    img.pthread_desc[..desc.len()].copy_from_slice(desc);
    let n = usize::from(i.u8()).min(MAX_REGIONS);
    for _ in 0..n {
        let addr = i.u64();
        let len = i.u32() as usize;
        let bytes = i.bytes(len).to_vec();
        img.regions.insert(addr, bytes);
    }
    img.ops = i.data.to_vec();
    img
}

/// A place in the image: region (by index, modulo) and offset (modulo its length, 8-aligned
/// unless `odd`).
#[derive(Clone, Copy, Debug)]
struct Place {
    region: u8,
    offset: u16,
    odd: bool,
}

impl Place {
    fn read(i: &mut Input<'_>) -> Place {
        let b = i.u8();
        Place {
            region: b & 0x7f,
            offset: i.u16(),
            odd: b & 0x80 != 0,
        }
    }

    fn addr(&self, regions: &BTreeMap<u64, Vec<u8>>) -> Option<u64> {
        if regions.is_empty() {
            return None;
        }
        let (start, bytes) = regions.iter().nth(self.region as usize % regions.len())?;
        let len = bytes.len().max(1) as u64;
        let off = u64::from(self.offset) % len;
        let off = if self.odd { off } else { off & !7 };
        Some(start.wrapping_add(off))
    }
}

/// What a poke writes.
#[derive(Clone, Copy, Debug)]
enum Value {
    /// The address of a place: a pointer to another object, or back into a chain (a loop).
    To(Place),
    /// The address of the word itself: the shortest loop.
    SelfPointer,
    Raw(u64),
}

impl Value {
    fn read(i: &mut Input<'_>) -> Value {
        match i.u8() % 8 {
            0..=2 => Value::To(Place::read(i)),
            3 => Value::SelfPointer,
            4 => Value::Raw(0),
            5 => Value::Raw(u64::MAX - u64::from(i.u8())),
            6 => Value::Raw(u64::from(i.u16())),
            _ => Value::Raw(i.u64()),
        }
    }
}

/// One change to the image.
#[derive(Clone, Copy, Debug)]
enum Op {
    Poke { at: Place, value: Value },
    Unmap { region: u8 },
}

impl Op {
    fn read(i: &mut Input<'_>) -> Op {
        match i.u8() % 4 {
            0..=2 => Op::Poke {
                at: Place::read(i),
                value: Value::read(i),
            },
            _ => Op::Unmap { region: i.u8() },
        }
    }

    fn apply(&self, regions: &mut BTreeMap<u64, Vec<u8>>) {
        match *self {
            Op::Poke { at, value } => {
                let Some(addr) = at.addr(regions) else {
                    return;
                };
                let v = match value {
                    Value::To(p) => p.addr(regions).unwrap_or(0),
                    Value::SelfPointer => addr,
                    Value::Raw(v) => v,
                };
                let Some((start, bytes)) = regions.range_mut(..=addr).next_back() else {
                    return;
                };
                let off = (addr - start) as usize;
                let end = (off + 8).min(bytes.len());
                if let Some(dst) = bytes.get_mut(off..end) {
                    dst.copy_from_slice(&v.to_le_bytes()[..end - off]);
                }
            }
            Op::Unmap { region } => {
                let Some(&start) = regions
                    .keys()
                    .nth(usize::from(region) % regions.len().max(1))
                else {
                    return;
                };
                regions.remove(&start);
            }
        }
    }
}

/// A change made after the reader's `batch`-th system call, once its `read`-th read is done.
struct Scheduled {
    batch: u32,
    read: usize,
    op: Op,
}

/// The image as an address space: reads copy from the regions up to the first unmapped byte;
/// scheduled changes happen between reads.
struct ImageMemory {
    regions: Rc<RefCell<BTreeMap<u64, Vec<u8>>>>,
    later: Vec<Scheduled>,
    batches: u32,
}

/// Copy from `regions` at `addr` until the first unmapped byte (or the end of the address space).
fn copy(regions: &BTreeMap<u64, Vec<u8>>, addr: u64, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let Some(a) = addr.checked_add(done as u64) else {
            break;
        };
        let Some((start, bytes)) = regions.range(..=a).next_back() else {
            break;
        };
        let Some(src) = bytes.get((a - start) as usize..) else {
            break;
        };
        if src.is_empty() {
            break;
        }
        let n = src.len().min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&src[..n]);
        done += n;
    }
    done
}

impl AddressSpace for ImageMemory {
    fn read_batch(&mut self, reads: &mut [Read<'_>]) -> Result<(), PyError> {
        self.batches += 1;
        for (i, r) in reads.iter_mut().enumerate() {
            r.got = copy(&self.regions.borrow(), r.addr, r.buf);
            for s in self
                .later
                .iter()
                .filter(|s| s.batch == self.batches && s.read == i)
            {
                s.op.apply(&mut self.regions.borrow_mut());
            }
        }
        Ok(())
    }

    fn syscalls(&self) -> u32 {
        self.batches
    }
}

/// The layout the reader would use for this image, found as `PythonProcess::attach` finds it
/// (3.13 from the `_Py_DebugOffsets` at the runtime's address). `None`: a version or table the
/// reader refuses, which is a valid outcome.
fn layout_of(version: (u8, u8), img: &Image, mem: &mut ImageMemory) -> Option<Layout> {
    match version {
        (3, 13) => {
            let mut raw = vec![0u8; layout::DEBUG_OFFSETS_LEN];
            mem.read_exact(img.runtime, &mut raw).ok()?;
            layout::from_debug_offsets(&raw).ok().map(|d| d.layout)
        }
        (major, minor) => {
            let mut l = Layout::for_version(major, minor).ok()?;
            if let ThreadId::Pthread { tid } = &mut l.thread_id {
                *tid = discover::pthread_tid_offset(&img.pthread_desc)
                    .unwrap_or(layout::GLIBC_PTHREAD_TID);
            }
            Some(l)
        }
    }
}

/// Read an image built from `data` the way slowtrace reads a live process; returns the frames
/// read in all (the tests check the seeds reach that deep). Panics only when the reader breaks
/// a promise (more than [`MAX_FRAMES`] frames, an unbounded string).
pub fn image(data: &[u8]) -> usize {
    let img = decode(data);
    let mut regions = img.regions.clone();
    let mut ops = Input { data: &img.ops };
    let mut later = Vec::new();
    // The op section: a count, the ops; a count, the thread ids; (code, instruction) pairs.
    for _ in 0..usize::from(ops.u8()) % (MAX_OPS + 1) {
        // Bit 7 of the first byte: now, or after a later read (batch, read index).
        let when = ops.u8();
        let op = Op::read(&mut ops);
        if when & 0x80 == 0 {
            op.apply(&mut regions);
        } else {
            later.push(Scheduled {
                batch: u32::from(when & 0x3f) + 1,
                read: usize::from(ops.u8() % 8),
                op,
            });
        }
    }
    let mut tids = vec![img.tid];
    for _ in 0..usize::from(ops.u8()) % (MAX_TIDS + 1) {
        tids.push(ops.u32());
    }
    // Kernel-walked frames to resolve: (code object, instruction) pairs at places of the image.
    let mut kernel_frames = Vec::new();
    while !ops.data.is_empty() && kernel_frames.len() < 32 {
        let code = Place::read(&mut ops).addr(&regions).unwrap_or(0);
        kernel_frames.push((code, ops.u64()));
    }

    let version = VERSIONS[usize::from(img.version) % VERSIONS.len()];
    let mut mem = ImageMemory {
        regions: Rc::new(RefCell::new(regions)),
        later,
        batches: 0,
    };
    let Some(layout) = layout_of(version, &img, &mut mem) else {
        return 0;
    };
    let mut p = PythonProcess {
        version,
        layout,
        runtime: img.runtime,
        code_type: img.code_type,
        mem: Box::new(mem),
        // A pid no thread has: the reader must not look at this machine's /proc for the image.
        threads: Threads::same_namespace(u32::MAX),
        codes: CodeCache::with_cap(64),
        last_syscalls: 0,
        pidns: None,
    };
    let _ = p.kernel_layout();
    let mut read = 0;
    for &tid in &tids {
        for _ in 0..2 {
            if let Ok(frames) = p.stack(tid) {
                check(&frames);
                read += frames.len();
            }
        }
    }
    let resolved = p.resolve(&kernel_frames);
    assert_eq!(resolved.len(), kernel_frames.len());
    check(&resolved.into_iter().flatten().collect::<Vec<_>>());
    read
}

fn check(frames: &[super::PyFrame]) {
    assert!(frames.len() <= MAX_FRAMES, "{} frames", frames.len());
    // A name is at most MAX_STRING_BYTES of the target's characters (Latin-1 doubles in UTF-8)
    // and "...".
    let most = 2 * MAX_STRING_BYTES + 3;
    for f in frames {
        assert!(f.function.len() <= most && f.file.len() <= most, "{f:?}");
    }
}

/// Decode a location table (format by the first byte, `co_firstlineno` the next four) and look
/// lines up in it; the 3.11+ decoder is checked against the straightforward reference
/// (`linetable::line_at`, a linear scan per lookup).
pub fn linetable(data: &[u8]) {
    let mut i = Input { data };
    let format = [
        LineFormat::Locations,
        LineFormat::Lnotab,
        LineFormat::Linetable310,
    ][usize::from(i.u8()) % 3];
    let firstlineno = i.u32() as i32;
    let table = i.data;
    let lines = linetable::Lines::decode(format, table, firstlineno);
    // Units around every entry boundary, and the extremes.
    let mut units: Vec<i64> = vec![-2, -1, 0, 1, i64::from(u32::MAX), i64::MAX];
    if format == LineFormat::Locations {
        let mut prev = 0;
        for e in linetable::entries(table, firstlineno) {
            assert!(e.start == prev && e.end > e.start, "{e:?} after {prev}");
            prev = e.end;
            units.extend([i64::from(e.start), i64::from(e.end) - 1, i64::from(e.end)]);
            if units.len() > 512 {
                break;
            }
        }
    } else {
        units.extend((0..64).chain([1000, 65535, 65536]));
    }
    for u in units {
        let got = lines.at(u);
        if format == LineFormat::Locations {
            assert_eq!(
                got,
                linetable::line_at(table, firstlineno, u),
                "unit {u} of {table:02x?} from line {firstlineno}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::fake::{Builder, FrameSpec};

    fn corpus(target: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../fuzz/corpus/{target}"))
    }

    /// Images of each version as `fake::Builder` lays them out: two threads, one a few frames
    /// deep, one deeper than a chunk (3.11+: frames in an older chunk too).
    fn built(v: (u8, u8)) -> Image {
        let mut b = Builder::new(v);
        let main = b.code("main", "/app/server.py", 10, 20);
        let view = b.code("Handler.get", "/app/views/über.py", 40, 20);
        let spec = |code, unit| FrameSpec { code, unit };
        b.thread(100, &[spec(main, 3), spec(view, 5)]);
        let deep = vec![spec(view, 2); 12];
        b.thread(101, &deep);
        let version = VERSIONS.iter().position(|x| *x == v).unwrap() as u8;
        let mut regions = b.regions.borrow().clone();
        if v == (3, 13) {
            // attach() reads 3.13's layout from the _Py_DebugOffsets at the runtime's start.
            let raw = crate::python::layout::tests::raw_313();
            regions.get_mut(&b.runtime).unwrap()[..raw.len()].copy_from_slice(&raw);
        }
        Image {
            version,
            runtime: b.runtime,
            code_type: b.code_type,
            tid: 100,
            pthread_desc: [0; 12],
            regions,
            // No change; one more thread: 101.
            ops: [&[0u8, 1][..], &101u32.to_le_bytes()].concat(),
        }
    }

    /// Writes the seeds of fuzz/corpus/python_reader: built images of every version and the
    /// memory recorded from real CPythons (recorded.rs). Run by hand after a layout change:
    /// `cargo test -p tracer-user -- --ignored write_python_seeds`.
    #[test]
    #[ignore = "writes fuzz/corpus/python_reader; run by hand"]
    fn write_python_seeds() {
        let dir = corpus("python_reader");
        std::fs::create_dir_all(&dir).unwrap();
        for (k, v) in VERSIONS.iter().enumerate() {
            let name = format!("built-{}.{}", v.0, v.1);
            std::fs::write(dir.join(name), encode(&built(*v))).unwrap();
            let r = crate::python::recorded::Recording::read_version(*v);
            let img = Image {
                version: k as u8,
                runtime: r.runtime,
                code_type: r.code_type,
                tid: r.tid,
                pthread_desc: r.pthread_desc(),
                regions: r.regions,
                ops: Vec::new(),
            };
            std::fs::write(dir.join(format!("recorded-{}.{}", v.0, v.1)), encode(&img)).unwrap();
        }
    }

    #[test]
    fn images_round_trip_and_read() {
        for v in VERSIONS {
            let img = built(v);
            assert_eq!(decode(&encode(&img)), img);
            // Threads 100 (2 frames) and 101 (12), each read twice.
            assert_eq!(image(&encode(&img)), 2 * (2 + 12), "{v:?}");
        }
    }

    /// Every committed corpus input runs clean through its target (the fuzzer's regression test,
    /// without the fuzzer).
    #[test]
    fn the_committed_corpus_replays() {
        let files = |target: &str| {
            let dir = corpus(target);
            let files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert!(!files.is_empty(), "{} is empty", dir.display());
            files
        };
        for path in files("python_reader") {
            let frames = image(&std::fs::read(&path).unwrap());
            // The recorded stacks are 7 frames deep, read twice.
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("recorded-") {
                assert_eq!(frames, 14, "{name}");
            }
        }
        for path in files("linetable") {
            linetable(&std::fs::read(path).unwrap());
        }
    }

    #[test]
    fn ops_make_loops_and_holes() {
        let mut regions = BTreeMap::new();
        regions.insert(0x1000u64, vec![0u8; 32]);
        regions.insert(0x2000u64, vec![0u8; 32]);
        let at = Place {
            region: 0,
            offset: 9,
            odd: false,
        };
        Op::Poke {
            at,
            value: Value::SelfPointer,
        }
        .apply(&mut regions);
        assert_eq!(regions[&0x1000][8..16], 0x1008u64.to_le_bytes());
        Op::Unmap { region: 1 }.apply(&mut regions);
        assert_eq!(regions.len(), 1);
        let mut buf = [0u8; 8];
        assert_eq!(copy(&regions, u64::MAX - 3, &mut buf), 0);
        assert_eq!(copy(&regions, 0x1000 + 28, &mut buf), 4);
    }
}
