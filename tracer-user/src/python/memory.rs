//! Reading another process's memory without stopping it.
//!
//! Everything the stack reader learns about the target goes through [`AddressSpace`], so the unit
//! tests can substitute a fake address space (see `fake.rs`) and nothing here needs root.

use std::io;

use super::PyError;

/// Page size used to split remote ranges: a fault then only loses the page that faulted, not the
/// rest of a read that speculatively ran past the end of an object.
const PAGE: u64 = 4096;

/// The kernel's `UIO_MAXIOV`: more iovecs per call are refused with EINVAL.
const MAX_IOV: usize = 1024;

/// One remote range to copy into `buf`; `got` says how many leading bytes arrived.
pub struct Read<'a> {
    pub addr: u64,
    pub buf: &'a mut [u8],
    pub got: usize,
}

impl<'a> Read<'a> {
    pub fn new(addr: u64, buf: &'a mut [u8]) -> Self {
        Read { addr, buf, got: 0 }
    }

    pub fn complete(&self) -> bool {
        self.got == self.buf.len()
    }
}

/// A target's memory.
pub trait AddressSpace {
    /// Fill every read as far as the target's memory allows, in as few system calls as possible.
    /// A read that faults part-way keeps its prefix (`got`); the others are still attempted.
    /// `Err` only when the process is gone or may not be read at all.
    fn read_batch(&mut self, reads: &mut [Read<'_>]) -> Result<(), PyError>;

    /// System calls made so far (monotonic), for the benchmark figure `last_syscalls`.
    fn syscalls(&self) -> u32;

    /// Read exactly `buf.len()` bytes or fail with [`PyError::Fault`].
    fn read_exact(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), PyError> {
        let len = buf.len();
        let mut r = [Read::new(addr, buf)];
        self.read_batch(&mut r)?;
        if r[0].complete() {
            Ok(())
        } else {
            Err(PyError::Fault { addr, len })
        }
    }

    fn read_u64(&mut self, addr: u64) -> Result<u64, PyError> {
        let mut b = [0u8; 8];
        self.read_exact(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// A live process, read with `process_vm_readv(2)` (needs CAP_SYS_PTRACE or the same uid and a
/// permissive Yama scope). The target keeps running: nothing here pauses it.
pub struct ProcessMemory {
    pid: u32,
    syscalls: u32,
}

impl ProcessMemory {
    pub fn new(pid: u32) -> Self {
        ProcessMemory { pid, syscalls: 0 }
    }

    /// One `process_vm_readv` over `reads[first..]`, stopping at the iovec limit. Returns the index
    /// of the first read not completely attempted (where the next call must resume).
    fn one_call(&mut self, reads: &mut [Read<'_>], first: usize) -> Result<usize, PyError> {
        let mut local: Vec<libc::iovec> = Vec::new();
        let mut remote: Vec<libc::iovec> = Vec::new();
        let mut end = first;
        for r in &mut reads[first..] {
            let pieces = page_pieces(r.addr, r.buf.len() as u64);
            if !local.is_empty() && remote.len() + pieces.len() > MAX_IOV {
                break;
            }
            if pieces.len() > MAX_IOV {
                // A single huge read: callers bound their sizes far below 4 MiB, so this is a bug.
                return Err(PyError::Torn("read larger than one call can carry"));
            }
            local.push(libc::iovec {
                iov_base: r.buf.as_mut_ptr().cast(),
                iov_len: r.buf.len(),
            });
            for (a, l) in pieces {
                remote.push(libc::iovec {
                    // The remote address is only a number to the kernel; it is never dereferenced here.
                    iov_base: a as usize as *mut libc::c_void,
                    iov_len: l as usize,
                });
            }
            r.got = 0;
            end += 1;
        }
        self.syscalls += 1;
        // SAFETY: every local iovec points into a live, exclusively borrowed buffer of that length;
        // remote iovecs are addresses in another process, which the kernel validates.
        let n = unsafe {
            libc::process_vm_readv(
                self.pid as libc::pid_t,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ESRCH) => Err(PyError::ProcessGone(self.pid)),
                Some(libc::EPERM) => Err(PyError::Permission(self.pid)),
                // EFAULT before the first byte: the first read faults at once; the rest resume.
                Some(libc::EFAULT) => Ok(first + 1),
                _ => Err(PyError::Io {
                    what: format!("process_vm_readv on {}", self.pid),
                    source: err,
                }),
            };
        }
        // The kernel copies in order and stops at the first fault: hand the count out in order.
        let mut left = n as usize;
        for (i, r) in reads[first..end].iter_mut().enumerate() {
            let take = left.min(r.buf.len());
            r.got = take;
            left -= take;
            if take < r.buf.len() {
                // This read faulted (or the batch ended here); resume after it.
                return Ok(first + i + 1);
            }
        }
        Ok(end)
    }
}

impl AddressSpace for ProcessMemory {
    fn read_batch(&mut self, reads: &mut [Read<'_>]) -> Result<(), PyError> {
        let mut next = 0;
        while next < reads.len() {
            next = self.one_call(reads, next)?;
        }
        Ok(())
    }

    fn syscalls(&self) -> u32 {
        self.syscalls
    }
}

/// Split `[addr, addr+len)` at page boundaries.
fn page_pieces(addr: u64, len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut a = addr;
    let end = addr.saturating_add(len);
    while a < end {
        let page_end = (a / PAGE + 1) * PAGE;
        let piece_end = page_end.min(end);
        out.push((a, piece_end - a));
        a = piece_end;
    }
    out
}

/// Little-endian field access on a buffer of remote bytes. Out of range reads as `None`: the
/// buffer came from another process and its contents prove nothing.
pub trait Fields {
    fn u64_at(&self, off: usize) -> Option<u64>;
    fn u32_at(&self, off: usize) -> Option<u32>;
    fn i32_at(&self, off: usize) -> Option<i32> {
        self.u32_at(off).map(|v| v as i32)
    }
    fn u8_at(&self, off: usize) -> Option<u8>;
}

impl Fields for [u8] {
    fn u64_at(&self, off: usize) -> Option<u64> {
        let b = self.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    fn u32_at(&self, off: usize) -> Option<u32> {
        let b = self.get(off..off.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }

    fn u8_at(&self, off: usize) -> Option<u8> {
        self.get(off).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_pages() {
        assert_eq!(page_pieces(0x1000, 16), vec![(0x1000, 16)]);
        assert_eq!(
            page_pieces(0x1ff8, 16),
            vec![(0x1ff8, 8), (0x2000, 8)],
            "a read crossing a page is two remote iovecs"
        );
        assert_eq!(page_pieces(0x1000, 0), vec![]);
        assert_eq!(page_pieces(0, 0x2001).len(), 3);
    }

    #[test]
    fn reads_own_memory() {
        // process_vm_readv on ourselves needs no privilege.
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let other = 0x1234_5678_9abc_def0u64.to_le_bytes();
        let mut mem = ProcessMemory::new(std::process::id());
        let mut a = vec![0u8; 10_000];
        let mut b = [0u8; 8];
        let mut reads = [
            Read::new(data.as_ptr() as u64, &mut a),
            Read::new(other.as_ptr() as u64, &mut b),
        ];
        mem.read_batch(&mut reads).unwrap();
        assert!(reads.iter().all(Read::complete));
        assert_eq!(a, data);
        assert_eq!(u64::from_le_bytes(b), 0x1234_5678_9abc_def0);
        assert_eq!(mem.syscalls(), 1, "both reads in one call");
    }

    #[test]
    fn a_fault_keeps_the_other_reads() {
        let ok = 42u64.to_le_bytes();
        let mut mem = ProcessMemory::new(std::process::id());
        let (mut a, mut b, mut c) = ([0u8; 8], [0u8; 8], [0u8; 8]);
        let mut reads = [
            Read::new(ok.as_ptr() as u64, &mut a),
            Read::new(8, &mut b), // the null page is never mapped
            Read::new(ok.as_ptr() as u64, &mut c),
        ];
        mem.read_batch(&mut reads).unwrap();
        assert!(reads[0].complete());
        assert_eq!(reads[1].got, 0);
        assert!(reads[2].complete());
        assert_eq!(u64::from_le_bytes(c), 42);
    }

    #[test]
    fn fields_out_of_range_are_none() {
        let b = [1u8, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(b.u64_at(0), Some(1));
        assert_eq!(b.u64_at(2), None);
        assert_eq!(b.u32_at(usize::MAX), None);
        assert_eq!(b.u8_at(8), Some(2));
    }
}
