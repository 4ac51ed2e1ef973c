//! A blocked thread's native stack from outside: the user registers the kernel saved when it
//! left the CPU (`ThreadSched::user_ip/sp/bp`), a copy of its stack memory from the saved stack
//! pointer up (process_vm_readv: the thread is off CPU, so the stack holds still), and a
//! frame-pointer walk over the copy — the walk the kernel's `bpf_get_stack` does, done later and
//! only for the requests that turn out slow.

use std::io;

/// How much of the stack is copied above the stack pointer: a 64-frame walk of a CPython +
/// Django stack stays within ~20 KB here.
pub const STACK_COPY: usize = 64 * 1024;

/// Native frames kept (as `bpf_get_stack` for on-CPU samples).
pub const MAX_FRAMES: usize = 64;

/// User registers at the moment a thread left the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// Copy up to `len` bytes of `pid`'s memory from `addr`: what is readable before the first
/// unmapped page (a thread's stack mapping ends somewhere above its stack pointer).
pub fn copy_stack(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    const PAGE: usize = 4096;
    let mut buf = vec![0u8; len];
    // One remote iovec per page: a partial read stops at a whole iovec, so a mapping that ends
    // inside the range still gives everything below its end.
    let first = PAGE - (addr as usize % PAGE);
    let mut remote = Vec::with_capacity(len / PAGE + 2);
    let mut off = 0usize;
    while off < len {
        let n = if off == 0 {
            first.min(len)
        } else {
            PAGE.min(len - off)
        };
        remote.push(libc::iovec {
            iov_base: (addr as usize + off) as *mut libc::c_void,
            iov_len: n,
        });
        off += n;
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: `local` covers `buf`, which outlives the call; the remote iovecs are only read
    // by the kernel, in the other process, and faults there are reported, not taken.
    let n = unsafe {
        libc::process_vm_readv(
            pid as libc::pid_t,
            &local,
            1,
            remote.as_ptr(),
            remote.len() as libc::c_ulong,
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Return addresses of a frame-pointer chain over `stack` (a copy of memory from `regs.sp`),
/// innermost first, the leaf being `regs.ip`. Stops at a frame pointer outside the copy, a
/// chain that does not move up the stack (code without frame pointers uses rbp as data), or a
/// zero return address.
pub fn frame_pointer_walk(regs: UserRegs, stack: &[u8], max: usize) -> Vec<u64> {
    let word = |addr: u64| -> Option<u64> {
        let off = usize::try_from(addr.checked_sub(regs.sp)?).ok()?;
        let bytes = stack.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    let mut ips = Vec::with_capacity(16);
    if regs.ip == 0 {
        return ips;
    }
    ips.push(regs.ip);
    let mut bp = regs.bp;
    while ips.len() < max {
        if !bp.is_multiple_of(8) {
            break;
        }
        let (Some(next), Some(ret)) = (word(bp), word(bp.wrapping_add(8))) else {
            break;
        };
        if ret == 0 {
            break;
        }
        ips.push(ret);
        if next <= bp {
            break;
        }
        bp = next;
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stack image starting at `sp` with (offset, value) words set.
    fn image(len: usize, words: &[(usize, u64)]) -> Vec<u8> {
        let mut s = vec![0u8; len];
        for &(off, v) in words {
            s[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        s
    }

    const SP: u64 = 0x7ffd_0000;

    #[test]
    fn walks_the_chain_from_the_saved_registers() {
        // Frame at sp+0x40 → saved bp sp+0x100, return 0x401111; frame at sp+0x100 → saved bp
        // 0 (the outermost), return 0x402222.
        let s = image(
            0x200,
            &[
                (0x40, SP + 0x100),
                (0x48, 0x40_1111),
                (0x100, 0),
                (0x108, 0x40_2222),
            ],
        );
        let regs = UserRegs {
            ip: 0x7f00_1234,
            sp: SP,
            bp: SP + 0x40,
        };
        assert_eq!(
            frame_pointer_walk(regs, &s, MAX_FRAMES),
            [0x7f00_1234, 0x40_1111, 0x40_2222]
        );
    }

    #[test]
    fn stops_where_rbp_is_not_a_frame_pointer() {
        let s = image(0x100, &[(0x40, SP + 0x20), (0x48, 0x40_1111)]);
        let regs = |bp| UserRegs {
            ip: 0x7f00_1234,
            sp: SP,
            bp,
        };
        // Points down the stack: a loop, not a chain.
        assert_eq!(frame_pointer_walk(regs(SP + 0x40), &s, 64).len(), 2);
        // rbp used as a counter by code built without frame pointers.
        assert_eq!(frame_pointer_walk(regs(42), &s, 64), [0x7f00_1234]);
        // Beyond the copy.
        assert_eq!(frame_pointer_walk(regs(SP + 0x1000), &s, 64), [0x7f00_1234]);
        // Misaligned.
        assert_eq!(frame_pointer_walk(regs(SP + 0x41), &s, 64), [0x7f00_1234]);
        // No registers recorded.
        assert!(frame_pointer_walk(
            UserRegs {
                ip: 0,
                sp: 0,
                bp: 0
            },
            &s,
            64
        )
        .is_empty());
    }

    #[test]
    fn bounded_by_max() {
        // A self-consistent chain of 100 frames, 16 bytes apart.
        let words: Vec<(usize, u64)> = (0..100)
            .flat_map(|i| {
                [
                    (i * 16, SP + (i as u64 + 1) * 16),
                    (i * 16 + 8, 0x40_0000 + i as u64),
                ]
            })
            .collect();
        let s = image(101 * 16, &words);
        let regs = UserRegs {
            ip: 1,
            sp: SP,
            bp: SP,
        };
        assert_eq!(frame_pointer_walk(regs, &s, 10).len(), 10);
    }

    #[test]
    fn copies_own_stack_partially_at_the_end_of_a_mapping() {
        let local = [0x5au8; 64];
        let addr = local.as_ptr() as u64;
        let copy = copy_stack(std::process::id(), addr, 64).unwrap();
        assert_eq!(copy, local);
        // A range running past the end of a mapping: everything up to the end comes back.
        let v = vec![7u8; 4096 * 4];
        let copy = copy_stack(std::process::id(), v.as_ptr() as u64, 4096 * 4).unwrap();
        assert_eq!(copy.len(), 4096 * 4);
        assert!(
            copy_stack(std::process::id(), 8, 64).is_err(),
            "nothing mapped at 8"
        );
    }
}
