//! Native unwinding without frame pointers, for captures: the `.eh_frame` unwind tables (CFI)
//! of every executable file a process maps, run by framehop's x86-64 unwinder over the stack
//! copy `unwind::copy_stack` took from the registers saved at the switch-out. The pyenv and
//! Debian CPythons and Debian's libc have no frame pointers; their CFI is complete, so the walk
//! goes from the syscall wrapper through `_PyEval_EvalFrameDefault` and C extensions to `main`.
//!
//! Tables are read once per file (by device and inode, so forked workers share them) and kept
//! as the sections' bytes only; a process's modules are added from its /proc/PID/maps when an
//! address falls outside those known.

use std::{collections::HashMap, ops::Range, sync::Arc};

use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
    ExplicitModuleSectionInfo, Module, Unwinder,
};
use object::{Object, ObjectSection, ObjectSegment};

use super::unwind::UserRegs;

/// Processes whose modules are kept; beyond it all are dropped (re-read on their next capture).
const MAX_PROCS: usize = 256;
/// Files whose tables are kept.
const MAX_FILES: usize = 512;

/// One file's unwind sections, shared by every process that maps it.
#[derive(Clone)]
struct Tables {
    /// Link-time address of the executable segment minus its file offset: maps a mapping's
    /// file offset to the addresses the tables use.
    vaddr_minus_offset: u64,
    eh_frame: Option<(Range<u64>, Arc<[u8]>)>,
    eh_frame_hdr: Option<(Range<u64>, Arc<[u8]>)>,
    text: Option<Range<u64>>,
    got: Option<Range<u64>>,
}

struct Proc {
    unwinder: UnwinderX86_64<Arc<[u8]>>,
    /// Executable mappings added, to tell when /proc/PID/maps must be read again.
    known: Vec<Range<u64>>,
}

/// The unwinder state the stack resolver thread keeps between captures.
#[derive(Default)]
pub struct EhFrames {
    procs: HashMap<u32, Proc>,
    files: HashMap<(u64, u64), Option<Tables>>,
    cache: Option<CacheX86_64>,
}

impl EhFrames {
    /// Return addresses from `regs` up, innermost first (the first is `regs.ip`), unwinding
    /// with the tables of `pid`'s files over `stack` (memory from `regs.sp`). Stops where the
    /// tables or the copy end.
    pub fn walk(&mut self, pid: u32, regs: UserRegs, stack: &[u8], max: usize) -> Vec<u64> {
        if !self.covers(pid, regs.ip) {
            self.add_modules(pid);
        }
        let ips = self.walk_known(pid, regs, stack, max);
        // A library loaded after the modules were read (dlopen, e.g. a ctypes call) ends the walk
        // at its first frame: read the maps again, once, and walk again.
        if ips.len() < max
            && ips
                .last()
                .is_some_and(|ip| !self.covers(pid, ip.saturating_sub(1)))
        {
            self.add_modules(pid);
            return self.walk_known(pid, regs, stack, max);
        }
        ips
    }

    fn walk_known(&mut self, pid: u32, regs: UserRegs, stack: &[u8], max: usize) -> Vec<u64> {
        let Some(p) = self.procs.get(&pid) else {
            return vec![regs.ip];
        };
        let cache = self.cache.get_or_insert_with(CacheX86_64::new);
        let mut read = |addr: u64| -> Result<u64, ()> {
            let off = usize::try_from(addr.checked_sub(regs.sp).ok_or(())?).map_err(|_| ())?;
            let b = stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_le_bytes(b.try_into().map_err(|_| ())?))
        };
        let mut it = p.unwinder.iter_frames(
            regs.ip,
            UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp),
            cache,
            &mut read,
        );
        let mut ips = Vec::with_capacity(32);
        while ips.len() < max {
            match it.next() {
                Ok(Some(f)) => ips.push(f.address()),
                Ok(None) | Err(_) => break,
            }
        }
        ips
    }

    /// A process exited: its modules go (the files' tables stay for its siblings).
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    fn covers(&self, pid: u32, ip: u64) -> bool {
        self.procs
            .get(&pid)
            .is_some_and(|p| p.known.iter().any(|r| r.contains(&ip)))
    }

    fn add_modules(&mut self, pid: u32) {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        if self.procs.len() >= MAX_PROCS && !self.procs.contains_key(&pid) {
            self.procs.clear();
        }
        if self.files.len() >= MAX_FILES {
            self.files.clear();
        }
        let p = self.procs.entry(pid).or_insert_with(|| Proc {
            unwinder: UnwinderX86_64::new(),
            known: Vec::new(),
        });
        for m in maps.lines().filter_map(parse_exec_mapping) {
            if p.known.iter().any(|r| r.start == m.range.start) {
                continue;
            }
            p.known.push(m.range.clone());
            let tables = self
                .files
                .entry((m.dev, m.inode))
                .or_insert_with(|| {
                    let file = format!(
                        "/proc/{pid}/map_files/{:x}-{:x}",
                        m.range.start, m.range.end
                    );
                    read_tables(&file)
                })
                .clone();
            let Some(t) = tables else { continue };
            // Link-time address 0 of the file is loaded here.
            let base = m
                .range
                .start
                .wrapping_sub(m.offset)
                .wrapping_sub(t.vaddr_minus_offset);
            let (eh_frame_svma, eh_frame) = split(t.eh_frame);
            let (eh_frame_hdr_svma, eh_frame_hdr) = split(t.eh_frame_hdr);
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: t.text,
                got_svma: t.got,
                eh_frame_svma,
                eh_frame,
                eh_frame_hdr_svma,
                eh_frame_hdr,
                ..Default::default()
            };
            p.unwinder
                .add_module(Module::new(m.path, m.range, base, info));
        }
    }
}

fn split<T>(s: Option<(Range<u64>, T)>) -> (Option<Range<u64>>, Option<T>) {
    match s {
        Some((r, d)) => (Some(r), Some(d)),
        None => (None, None),
    }
}

/// An executable file mapping of /proc/PID/maps.
#[derive(Debug, PartialEq, Eq)]
struct ExecMapping {
    range: Range<u64>,
    offset: u64,
    dev: u64,
    inode: u64,
    path: String,
}

/// `7f1c2a428000-7f1c2a5bd000 r-xp 00028000 fe:00 1234 /usr/lib/x86_64-linux-gnu/libc.so.6`
fn parse_exec_mapping(line: &str) -> Option<ExecMapping> {
    let mut f = line.split_whitespace();
    let (range, perms, offset, dev, inode) =
        (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    let path = f.next()?;
    if !perms.contains('x') || !path.starts_with('/') {
        return None;
    }
    let (s, e) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let inode: u64 = inode.parse().ok()?;
    if inode == 0 {
        return None;
    }
    Some(ExecMapping {
        range: u64::from_str_radix(s, 16).ok()?..u64::from_str_radix(e, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: (u64::from_str_radix(major, 16).ok()? << 32) | u64::from_str_radix(minor, 16).ok()?,
        inode,
        path: path.to_owned(),
    })
}

/// The unwind sections of an ELF file (None: unreadable, or no `.eh_frame`).
fn read_tables(path: &str) -> Option<Tables> {
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let section = |name: &str| {
        let s = file.section_by_name(name)?;
        let r = s.address()..s.address() + s.size();
        Some((r, s))
    };
    let with_data = |name: &str| -> Option<(Range<u64>, Arc<[u8]>)> {
        let (r, s) = section(name)?;
        Some((r, Arc::from(s.data().ok()?)))
    };
    let eh_frame = with_data(".eh_frame")?;
    let exec = file.segments().find(|s| is_exec(s))?;
    let (offset, _) = exec.file_range();
    Some(Tables {
        vaddr_minus_offset: exec.address().wrapping_sub(offset),
        eh_frame: Some(eh_frame),
        eh_frame_hdr: with_data(".eh_frame_hdr"),
        text: section(".text").map(|(r, _)| r),
        got: section(".got").map(|(r, _)| r),
    })
}

fn is_exec(s: &object::Segment<'_, '_>) -> bool {
    matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_file_mappings_only() {
        let m = parse_exec_mapping(
            "7f1c2a428000-7f1c2a5bd000 r-xp 00028000 fe:01 1234   /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .unwrap();
        assert_eq!(m.range, 0x7f1c_2a42_8000..0x7f1c_2a5b_d000);
        assert_eq!(
            (m.offset, m.dev, m.inode),
            (0x28000, (0xfe << 32) | 1, 1234)
        );
        assert!(parse_exec_mapping(
            "7f1c2a400000-7f1c2a428000 r--p 00000000 fe:01 1234 /usr/lib/libc.so.6"
        )
        .is_none());
        assert!(parse_exec_mapping("7ffd1000-7ffd2000 r-xp 00000000 00:00 0 [vdso]").is_none());
        assert!(parse_exec_mapping("7f00-7f10 rw-p 00000000 00:00 0").is_none());
    }

    /// Unwind this test's own thread from a known point: a frame-pointer-free chain of calls
    /// (the release profile omits frame pointers) must unwind through every one of them.
    #[test]
    fn unwinds_own_stack_without_frame_pointers() {
        #[inline(never)]
        fn leaf(out: &mut Option<Vec<u64>>) {
            // Registers and stack of this very point: ip here, sp of this frame.
            let (ip, sp, bp): (u64, u64, u64);
            // SAFETY: reads three registers, no memory or flags touched.
            unsafe {
                std::arch::asm!("lea {ip}, [rip]", "mov {sp}, rsp", "mov {bp}, rbp",
                    ip = out(reg) ip, sp = out(reg) sp, bp = out(reg) bp,
                    options(nomem, nostack, preserves_flags));
            }
            let stack =
                super::super::unwind::copy_stack(std::process::id(), sp, 64 * 1024).unwrap();
            let mut eh = EhFrames::default();
            *out = Some(eh.walk(std::process::id(), UserRegs { ip, sp, bp }, &stack, 64));
            std::hint::black_box(out);
        }
        #[inline(never)]
        fn middle(out: &mut Option<Vec<u64>>) {
            leaf(out);
            std::hint::black_box(out);
        }
        let mut out = None;
        middle(&mut out);
        let ips = out.unwrap();
        // The walk leaves the leaf, goes through `middle` and this test into the test harness:
        // a frame-pointer walk of frame-pointer-free code stops at one or two.
        assert!(ips.len() >= 5, "{} frames: {ips:x?}", ips.len());
        let this = unwinds_own_stack_without_frame_pointers as *const () as usize as u64;
        let middle_fn = middle as *const () as usize as u64;
        assert!(
            ips.iter().any(|&a| a > middle_fn && a < middle_fn + 256),
            "middle's return address in {ips:x?}"
        );
        let _ = this;
    }
}
