//! A fake target for the unit tests: an address space built from byte regions, and a builder
//! that lays out CPython structures in it exactly where a [`Layout`] says they are.

use std::{cell::RefCell, collections::BTreeMap, rc::Rc};

use super::{
    codes::CodeCache,
    layout::{
        CurrentFrame, Frames, Layout, LineFormat, ThreadId, OWNED_BY_CSTACK, OWNED_BY_THREAD,
    },
    memory::{AddressSpace, Read},
    strings::tests::unicode_object,
    threads::Threads,
    PyError, PythonProcess,
};

/// Mapped regions by start address. Shared so a test can change memory between (or, through
/// [`FakeMemory::after_call`], during) `stack()` calls, as the running thread would.
pub type Regions = Rc<RefCell<BTreeMap<u64, Vec<u8>>>>;

/// Called after each read of a batch with the number of batches so far (this one included) and
/// the read's index in its batch: the running thread can change memory between two reads of
/// one system call, as it can between two iovecs of one `process_vm_readv`.
pub type Hook = Box<dyn FnMut(u32, usize, &mut BTreeMap<u64, Vec<u8>>)>;

pub struct FakeMemory {
    pub regions: Regions,
    syscalls: u32,
    pub after_call: Option<Hook>,
}

impl FakeMemory {
    pub fn new(regions: Regions) -> Self {
        FakeMemory {
            regions,
            syscalls: 0,
            after_call: None,
        }
    }
}

/// Copy from `regions` until the first unmapped byte.
fn copy(regions: &BTreeMap<u64, Vec<u8>>, addr: u64, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let a = addr + done as u64;
        let Some((start, bytes)) = regions.range(..=a).next_back() else {
            break;
        };
        let off = (a - start) as usize;
        if off >= bytes.len() {
            break;
        }
        let n = (bytes.len() - off).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&bytes[off..off + n]);
        done += n;
    }
    done
}

impl AddressSpace for FakeMemory {
    fn read_batch(&mut self, reads: &mut [Read<'_>]) -> Result<(), PyError> {
        self.syscalls += 1;
        for (i, r) in reads.iter_mut().enumerate() {
            r.got = copy(&self.regions.borrow(), r.addr, r.buf);
            if let Some(hook) = self.after_call.as_mut() {
                hook(self.syscalls, i, &mut self.regions.borrow_mut());
            }
        }
        Ok(())
    }

    fn syscalls(&self) -> u32 {
        self.syscalls
    }
}

/// One frame to lay out: which code object, and the code unit it is at.
#[derive(Clone, Copy)]
pub struct FrameSpec {
    pub code: u64,
    pub unit: u32,
}

/// Builds a CPython memory image for one layout.
pub struct Builder {
    pub layout: Layout,
    pub version: (u8, u8),
    pub regions: Regions,
    next: u64,
    pub runtime: u64,
    pub code_type: u64,
    interp: u64,
    /// Thread states in list order.
    tstates: Vec<u64>,
    /// The chunk laid out last.
    pub last_chunk: u64,
}

pub const FRAME_SIZE: u64 = 80;
pub const CHUNK_HEADER: u64 = 24;

impl Builder {
    pub fn new(version: (u8, u8)) -> Builder {
        let layout = Layout::for_version(version.0, version.1).unwrap();
        let mut b = Builder {
            layout,
            version,
            regions: Rc::new(RefCell::new(BTreeMap::new())),
            next: 0x10_0000,
            runtime: 0,
            code_type: 0,
            interp: 0,
            tstates: Vec::new(),
            last_chunk: 0,
        };
        b.code_type = b.put(&[0u8; 64]);
        b.runtime = b.put(&vec![0u8; layout.runtime_interpreters_head as usize + 8]);
        b.interp = b.put(&vec![
            0u8;
            layout.interp_threads_head.max(layout.interp_next)
                as usize
                + 8
        ]);
        b.write_u64(b.runtime + layout.runtime_interpreters_head, b.interp);
        b
    }

    /// Allocate a region holding `bytes`, with an unmapped gap after it (so over-reads fault).
    pub fn put(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.next;
        self.next = (addr + bytes.len() as u64 + 0x1000 + 0xf) & !0xf;
        self.regions.borrow_mut().insert(addr, bytes.to_vec());
        addr
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        let mut regions = self.regions.borrow_mut();
        let (start, region) = regions.range_mut(..=addr).next_back().unwrap();
        let off = (addr - start) as usize;
        region[off..off + bytes.len()].copy_from_slice(bytes);
    }

    pub fn write_u64(&self, addr: u64, v: u64) {
        self.write(addr, &v.to_le_bytes());
    }

    pub fn string(&mut self, s: &str) -> u64 {
        let obj = unicode_object(&self.layout, s);
        self.put(&obj)
    }

    pub fn bytes_object(&mut self, data: &[u8]) -> u64 {
        let l = self.layout;
        let mut obj = vec![0u8; l.bytes_data as usize];
        obj[l.bytes_size as usize..][..8].copy_from_slice(&(data.len() as u64).to_le_bytes());
        obj.extend_from_slice(data);
        obj.push(0);
        self.put(&obj)
    }

    /// A code object whose code unit `u` is on line `firstlineno + u`.
    pub fn code(&mut self, qualname: &str, filename: &str, firstlineno: i32, units: u32) -> u64 {
        let q = self.string(qualname);
        let f = self.string(filename);
        let t = self.bytes_object(&linear_table(self.layout.lines, units));
        self.code_with(q, f, t, firstlineno, units)
    }

    pub fn code_with(&mut self, q: u64, f: u64, t: u64, firstlineno: i32, units: u32) -> u64 {
        let l = self.layout;
        let mut obj = vec![0u8; l.code_adaptive as usize + 2 * units as usize];
        let mut set = |off: u64, v: &[u8]| obj[off as usize..][..v.len()].copy_from_slice(v);
        set(l.ob_type, &self.code_type.to_le_bytes());
        if let Some(off) = l.code_size {
            set(off, &u64::from(units).to_le_bytes());
        }
        set(l.code_firstlineno, &firstlineno.to_le_bytes());
        set(l.code_qualname, &q.to_le_bytes());
        set(l.code_filename, &f.to_le_bytes());
        set(l.code_linetable, &t.to_le_bytes());
        self.put(&obj)
    }

    /// Bytes of one `_PyInterpreterFrame` header (3.9/3.10: a `PyFrameObject`, `owner` unused).
    pub fn frame_bytes(&self, code: u64, unit: u32, previous: u64, owner: u8) -> Vec<u8> {
        let l = self.layout;
        let mut f = vec![0u8; FRAME_SIZE.max(l.frame_header) as usize];
        f[l.frame_code as usize..][..8].copy_from_slice(&code.to_le_bytes());
        f[l.frame_previous as usize..][..8].copy_from_slice(&previous.to_le_bytes());
        match l.frames {
            Frames::Interpreter => {
                let instr = code + l.code_adaptive + 2 * u64::from(unit);
                f[l.frame_instr as usize..][..8].copy_from_slice(&instr.to_le_bytes());
                f[l.frame_owner as usize] = owner;
            }
            Frames::Objects { lasti_in_bytes } => {
                // A live object: ob_refcnt 1.
                f[..8].copy_from_slice(&1u64.to_le_bytes());
                let lasti = if lasti_in_bytes { 2 * unit } else { unit };
                // `int f_lasti`, then `int f_lineno` (0: not tracing).
                f[l.frame_instr as usize..][..4].copy_from_slice(&lasti.to_le_bytes());
            }
        }
        f
    }

    /// 3.9/3.10: heap frame objects, outermost first, each linked to its caller. Returns the
    /// innermost.
    pub fn frame_objects(&mut self, frames: &[FrameSpec]) -> u64 {
        let mut previous = 0;
        for f in frames {
            let bytes = self.frame_bytes(f.code, f.unit, previous, OWNED_BY_THREAD);
            previous = self.put(&bytes);
        }
        previous
    }

    /// A thread with `frames` (outermost first) in one data-stack chunk. 3.12+ get a shim
    /// frame on the "C stack" below the outermost frame, as the eval loop's entry leaves.
    /// Returns the thread state's address.
    pub fn thread(&mut self, native_tid: u32, frames: &[FrameSpec]) -> u64 {
        if let Frames::Objects { .. } = self.layout.frames {
            let innermost = self.frame_objects(frames);
            return self.thread_state(native_tid, innermost, 0, 0, 0);
        }
        let shim = if self.version >= (3, 12) {
            let bytes = self.frame_bytes(0, 0, 0, OWNED_BY_CSTACK);
            self.put(&bytes)
        } else {
            0
        };
        let (chunk, innermost, top, limit) = self.chunk(frames, shim, 0);
        self.thread_state(native_tid, innermost, chunk, top, limit)
    }

    /// Lay out a chunk (size = header + frames + 1 KiB spare) whose outermost frame's
    /// `previous` is `below`. Returns (chunk, innermost frame, top, limit).
    pub fn chunk(&mut self, frames: &[FrameSpec], below: u64, older: u64) -> (u64, u64, u64, u64) {
        let size = CHUNK_HEADER + FRAME_SIZE * frames.len() as u64 + 1024;
        let chunk = self.put(&vec![0u8; size as usize]);
        self.last_chunk = chunk;
        self.write_u64(chunk, older);
        self.write_u64(chunk + 8, size);
        let mut previous = below;
        let mut at = chunk + CHUNK_HEADER;
        for f in frames {
            let bytes = self.frame_bytes(f.code, f.unit, previous, OWNED_BY_THREAD);
            self.write(at, &bytes);
            previous = at;
            at += FRAME_SIZE;
        }
        (chunk, previous, at, chunk + size)
    }

    pub fn thread_state(
        &mut self,
        native_tid: u32,
        innermost: u64,
        chunk: u64,
        top: u64,
        limit: u64,
    ) -> u64 {
        let l = self.layout;
        let ts = self.put(&vec![0u8; l.tstate_span() as usize]);
        match l.thread_id {
            ThreadId::Native => {
                self.write_u64(ts + l.tstate_native_thread_id, u64::from(native_tid))
            }
            ThreadId::Pthread { tid } => {
                // glibc's struct pthread, with the thread's TID at `tid`.
                let pthread = self.put(&vec![0u8; tid as usize + 64]);
                self.write(pthread + tid, &native_tid.to_le_bytes());
                self.write_u64(ts + l.tstate_native_thread_id, pthread);
            }
        }
        match l.current_frame {
            CurrentFrame::Direct {
                tstate_current_frame,
            } => self.write_u64(ts + tstate_current_frame, innermost),
            CurrentFrame::ViaCFrame {
                tstate_cframe,
                cframe_current,
            } => {
                let cframe = self.put(&[0u8; 24]);
                self.write_u64(cframe + cframe_current, innermost);
                self.write_u64(ts + tstate_cframe, cframe);
            }
        }
        if l.frames == Frames::Interpreter {
            self.write_u64(ts + l.tstate_datastack_chunk, chunk);
            self.write_u64(ts + l.tstate_datastack_top, top);
            self.write_u64(ts + l.tstate_datastack_limit, limit);
        }
        // Newest thread first, as CPython links them.
        let head = self.tstates.first().copied().unwrap_or(0);
        self.write_u64(ts + l.tstate_next, head);
        self.tstates.insert(0, ts);
        self.write_u64(self.interp + l.interp_threads_head, ts);
        ts
    }

    /// The innermost-frame pointer of a thread state (wherever this version keeps it).
    pub fn set_innermost(&self, ts: u64, frame: u64) {
        match self.layout.current_frame {
            CurrentFrame::Direct {
                tstate_current_frame,
            } => self.write_u64(ts + tstate_current_frame, frame),
            CurrentFrame::ViaCFrame {
                tstate_cframe,
                cframe_current,
            } => {
                let regions = self.regions.borrow();
                let (start, region) = regions.range(..=ts + tstate_cframe).next_back().unwrap();
                let off = (ts + tstate_cframe - start) as usize;
                let cframe = u64::from_le_bytes(region[off..off + 8].try_into().unwrap());
                drop(regions);
                self.write_u64(cframe + cframe_current, frame);
            }
        }
    }

    /// A process reading this image, with a hook on its memory if given.
    pub fn process(&self, after_call: Option<Hook>) -> PythonProcess {
        let mut mem = FakeMemory::new(Rc::clone(&self.regions));
        mem.after_call = after_call;
        PythonProcess {
            version: self.version,
            layout: self.layout,
            runtime: self.runtime,
            code_type: self.code_type,
            mem: Box::new(mem),
            threads: Threads::same_namespace(1),
            codes: CodeCache::default(),
            last_syscalls: 0,
            pidns: None,
        }
    }
}

/// A location table of `format` putting code unit `u` on line `firstlineno + u`.
pub fn linear_table(format: LineFormat, units: u32) -> Vec<u8> {
    let mut t = Vec::new();
    for u in 0..units {
        match format {
            // One-line forms, no columns worth testing (column 0–1): line delta 0, then +1.
            LineFormat::Locations => {
                let code = if u == 0 { 10 } else { 11 };
                t.extend_from_slice(&[0x80 | (code << 3), 0, 1]);
            }
            // From byte offset 2u the line is one more.
            LineFormat::Lnotab if u > 0 => t.extend_from_slice(&[2, 1]),
            LineFormat::Lnotab => {}
            // Each pair covers one code unit (2 bytes), one line below the last.
            LineFormat::Linetable310 => t.extend_from_slice(&[2, u8::from(u > 0)]),
        }
    }
    t
}
