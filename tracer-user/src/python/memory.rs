//! Reading another process's memory without stopping it.
//!
//! Everything the stack reader learns about the target goes through [`AddressSpace`], so the unit
//! tests can substitute a fake address space (see `fake.rs`) and nothing here needs root.

use std::io;

use super::PyError;

/// The kernel's `UIO_MAXIOV`: more iovecs per call are refused with EINVAL.
const MAX_IOV: usize = 1024;

/// Consecutive reads at most this far apart are fetched as one remote range, the gap going to a
/// scratch buffer: the kernel's cost is per remote range (it pins the pages of each), not per
/// byte, and code objects of one module tend to sit close together.
const MERGE_GAP: u64 = 512;

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
    ///
    /// A remote range that faults part-way still delivers the pages before the fault (the kernel
    /// copies page by page and reports what it copied), so a read running past the end of a
    /// mapping keeps its prefix.
    fn one_call(&mut self, reads: &mut [Read<'_>], first: usize) -> Result<usize, PyError> {
        let mut scratch = [0u8; MERGE_GAP as usize];
        let mut local: Vec<libc::iovec> = Vec::new();
        // Which read each local iovec fills (None: a gap between two merged reads).
        let mut owner: Vec<Option<usize>> = Vec::new();
        let mut remote: Vec<libc::iovec> = Vec::new();
        let mut remote_end = 0u64;
        let mut end = first;
        for (idx, r) in reads.iter_mut().enumerate().skip(first) {
            if local.len() + 2 > MAX_IOV || remote.len() + 1 > MAX_IOV {
                break;
            }
            r.got = 0;
            end = idx + 1;
            let len = r.buf.len() as u64;
            if len == 0 {
                continue;
            }
            let gap = r.addr.wrapping_sub(remote_end);
            match remote.last_mut() {
                Some(last) if r.addr >= remote_end && gap <= MERGE_GAP => {
                    if gap > 0 {
                        local.push(libc::iovec {
                            iov_base: scratch.as_mut_ptr().cast(),
                            iov_len: gap as usize,
                        });
                        owner.push(None);
                    }
                    last.iov_len += (gap + len) as usize;
                }
                _ => remote.push(libc::iovec {
                    // The remote address is only a number to the kernel; never dereferenced here.
                    iov_base: r.addr as usize as *mut libc::c_void,
                    iov_len: len as usize,
                }),
            }
            remote_end = r.addr.saturating_add(len);
            local.push(libc::iovec {
                iov_base: r.buf.as_mut_ptr().cast(),
                iov_len: r.buf.len(),
            });
            owner.push(Some(idx));
        }
        if remote.is_empty() {
            return Ok(end);
        }
        self.syscalls += 1;
        // SAFETY: every local iovec points into a live, exclusively borrowed buffer (a read's or
        // `scratch`) of that length; remote iovecs are addresses in another process, which the
        // kernel validates.
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
                // Nothing copied: the first read faults at once; the rest resume after it.
                Some(libc::EFAULT) => Ok(first_nonempty(reads, first) + 1),
                _ => Err(PyError::Io {
                    what: format!("process_vm_readv on {}", self.pid),
                    source: err,
                }),
            };
        }
        // The kernel copies in order and stops at the first fault: hand the count out in order.
        let mut left = n as usize;
        for (k, iov) in local.iter().enumerate() {
            let take = left.min(iov.iov_len);
            left -= take;
            if let Some(idx) = owner[k] {
                reads[idx].got = take;
            }
            if take < iov.iov_len {
                // A fault here: a read keeps its prefix and we resume after it; a fault in a gap
                // costs nothing, we resume at the read after it.
                return Ok(match owner[k] {
                    Some(idx) => idx + 1,
                    None => owner[k + 1..]
                        .iter()
                        .flatten()
                        .next()
                        .copied()
                        .unwrap_or(end),
                });
            }
        }
        Ok(end)
    }
}

/// The first read from `first` on that has bytes to read (a zero-length one is complete as is).
fn first_nonempty(reads: &[Read<'_>], first: usize) -> usize {
    (first..reads.len())
        .find(|&i| !reads[i].buf.is_empty())
        .unwrap_or(first)
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
    fn close_reads_are_merged_and_faults_keep_prefixes() {
        // Two pages: the first readable, the second not.
        // SAFETY: plain mmap/mprotect of memory we own and unmap below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base_addr = base as u64;
        // SAFETY: `base` maps 8192 writable bytes.
        unsafe {
            std::ptr::write_bytes(base.cast::<u8>(), 7, 4096);
            assert_eq!(
                libc::mprotect(base.cast::<u8>().add(4096).cast(), 4096, libc::PROT_NONE),
                0
            );
        }
        let mut mem = ProcessMemory::new(std::process::id());
        let (mut a, mut b, mut c, mut d) = ([0u8; 16], [0u8; 16], [0u8; 64], [0u8; 8]);
        let mut reads = [
            Read::new(base_addr, &mut a),
            Read::new(base_addr + 100, &mut b), // merged with a (gap 84)
            Read::new(base_addr + 4096 - 32, &mut c), // runs into the unreadable page
            Read::new(base_addr + 8, &mut d),   // behind: its own range
        ];
        mem.read_batch(&mut reads).unwrap();
        assert!(reads[0].complete() && reads[1].complete());
        assert_eq!(reads[2].got, 32, "the readable prefix");
        assert!(reads[3].complete(), "read again after the fault");
        assert_eq!((a[0], b[15], c[31], d[7]), (7, 7, 7, 7));
        assert_eq!(mem.syscalls(), 2);
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(base, 8192) };
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
