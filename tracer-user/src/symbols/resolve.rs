//! The resolver: addresses → named frames, with caches, for captures and the profiler alike.
//! A running server hits the same few thousand addresses over and over, so every resolved
//! address is kept (capped, least recently used first out, counted).

use std::{
    collections::HashMap,
    path::Path,
    rc::Rc,
    time::{Duration, Instant},
};

use super::{
    cut::{self, Taken},
    python::{KernelTable, Pythons},
    symbolizer::Symbols,
};
use crate::{
    bounded::Bounded,
    model::slow::Frame,
    python::PyFrame,
    reaper::{PerProcess, STATS},
};

/// Resolved addresses kept at most: in ELF files (shared by every process mapping the file),
/// outside them (per process: vdso, anonymous code), and in the kernel. The least recently
/// used go first, counted.
const MAX_FILE_SYMBOLS: usize = 200_000;
const MAX_ANON_SYMBOLS: usize = 50_000;
const MAX_KERNEL_SYMBOLS: usize = 100_000;
/// Processes whose executable mappings are kept at most.
const MAX_MAPS: usize = 4096;
/// A process's mappings are read again at most this often (a leaf in anonymous code, a JIT, is
/// never in them, and must not cost a /proc read per sample).
const REREAD_MAPS: Duration = Duration::from_secs(1);

/// Where a user address is: at an offset in an ELF file, or outside any (per process).
#[derive(Clone, PartialEq, Eq, Hash)]
enum UserKey {
    File(Rc<str>, u64),
    Anon(u32, u64),
}

pub struct Resolver {
    symbols: Symbols,
    python: Pythons,
    /// By file and offset, not by process: a recycled worker finds its parent's and its
    /// siblings' addresses already resolved, and nothing here is per process.
    file_syms: Bounded<(Rc<str>, u64), Frame>,
    anon_syms: Bounded<(u32, u64), Frame>,
    /// Executable mappings per process, with when they were read: where each address is, and
    /// where a frame-pointer walk went astray (see `native`).
    exec: Bounded<u32, (Instant, Vec<ExecMap>)>,
    kernel_cache: Bounded<u64, Frame>,
    rooted: Rooted,
}

/// Files of processes in another mount namespace, reached through /proc/PID/root: the path in
/// their maps may not exist here, or be another file here (the host's libc is not the
/// container's). One path per file (device, inode), through the first process seen mapping it,
/// so that a container's workers share the parsed file and its cached symbols; a path that
/// stopped working (that process exited and the symbolizer let the file go) is replaced.
#[derive(Default)]
struct Rooted(HashMap<(Rc<str>, u64), Rc<str>>);

/// Distinct container files remembered at most (cleared beyond: they are re-derived).
const MAX_ROOTED: usize = 4096;

impl Rooted {
    fn path(&mut self, pid: u32, id: &(Rc<str>, u64), path: &str) -> Rc<str> {
        if let Some(p) = self.0.get(id) {
            if Path::new(&**p).exists() {
                return Rc::clone(p);
            }
        }
        if self.0.len() >= MAX_ROOTED {
            self.0.clear();
        }
        let p: Rc<str> = Rc::from(format!("/proc/{pid}/root{path}"));
        self.0.insert(id.clone(), Rc::clone(&p));
        p
    }
}

impl Resolver {
    /// `kernel`: the kernel walker's table of Python processes, when profiling.
    pub fn new(kernel: Option<KernelTable>) -> Self {
        Self {
            symbols: Symbols::new(),
            python: Pythons::new(kernel),
            file_syms: Bounded::new(MAX_FILE_SYMBOLS, Some(&STATS.symbols)),
            anon_syms: Bounded::new(MAX_ANON_SYMBOLS, Some(&STATS.symbols)),
            exec: Bounded::new(MAX_MAPS, Some(&STATS.maps)),
            kernel_cache: Bounded::new(MAX_KERNEL_SYMBOLS, Some(&STATS.symbols)),
            rooted: Rooted::default(),
        }
    }

    /// Entries held, for the debug log.
    pub fn sizes(&self) -> String {
        format!(
            "{} processes, {} maps, {} file + {} other + {} kernel addresses, symbolizer: {}",
            self.python.len(),
            self.exec.len(),
            self.file_syms.len(),
            self.anon_syms.len(),
            self.kernel_cache.len(),
            self.symbols.sizes()
        )
    }

    /// Look for CPython in `pid` (rate-limited) and register it with the kernel walker.
    pub fn probe(&mut self, pid: u32) {
        self.python.probe(pid);
    }

    pub fn is_python(&self, pid: u32) -> bool {
        self.python.is_python(pid)
    }

    /// Python processes found so far.
    pub fn python_procs(&self) -> u64 {
        self.python.found
    }

    /// Python frames of thread `tid` of `pid`, read now, innermost first.
    pub fn python_stack(&mut self, pid: u32, tid: u32) -> Result<Vec<Frame>, String> {
        self.python.stack(pid, tid)
    }

    /// Python frames the kernel walked in `pid`, `(code object, instruction)` innermost first.
    pub fn python_frames(&mut self, pid: u32, raw: &[(u64, u64)]) -> Vec<Option<PyFrame>> {
        self.python.resolve(pid, raw)
    }

    /// A user stack of `pid` as the kernel unwound it, innermost first: the leaf is the pc, the
    /// others return addresses. A frame-pointer walk through code built without frame pointers
    /// goes on through data: the stack ends at its first address outside executable memory
    /// (asking blazesym about each such address cost a /proc/PID/maps parse and a miss).
    pub fn native(&mut self, pid: u32, ips: &[u64]) -> Vec<Frame> {
        self.native_with(pid, ips, false)
    }

    /// `native` for a capture's stack, unwound with the process's unwind tables: every address in
    /// it is code, so one outside the known mappings means a library loaded since they were read
    /// (dlopen): they are read again at once rather than after `REREAD_MAPS`.
    pub fn native_unwound(&mut self, pid: u32, ips: &[u64]) -> Vec<Frame> {
        self.native_with(pid, ips, true)
    }

    fn native_with(&mut self, pid: u32, ips: &[u64], unwound: bool) -> Vec<Frame> {
        let Some(&leaf) = ips.first() else {
            return Vec::new();
        };
        if unwound
            && self
                .exec
                .peek(&pid)
                .is_some_and(|(_, m)| ips.iter().any(|ip| !in_ranges(m, *ip)))
        {
            self.exec.retain(|k, _| *k != pid);
        }
        let maps = self.exec_maps(pid, leaf);
        let keep = match ips.iter().skip(1).position(|ip| !in_ranges(maps, *ip)) {
            Some(cut) if !maps.is_empty() => cut + 1,
            _ => ips.len(),
        };
        self.user(pid, &ips[..keep])
    }

    /// A kernel stack, innermost first, without the frames of how it was taken.
    pub fn kernel(&mut self, ips: &[u64], taken: Taken) -> Vec<Frame> {
        let lookups = lookups(ips);
        let mut missing: Vec<u64> = lookups
            .iter()
            .copied()
            .filter(|a| !self.kernel_cache.contains_key(a))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let fresh: HashMap<u64, Frame> = if missing.is_empty() {
            HashMap::new()
        } else {
            let frames = self.symbols.kernel(&missing);
            missing.into_iter().zip(frames).collect()
        };
        // Read everything before the cache changes (an insert can age entries out).
        let frames: Vec<Frame> = lookups
            .iter()
            .filter_map(|a| fresh.get(a).or_else(|| self.kernel_cache.peek(a)).cloned())
            .collect();
        for a in &lookups {
            match fresh.get(a) {
                Some(f) => self.kernel_cache.insert(*a, f.clone()),
                None => {
                    self.kernel_cache.get(a);
                }
            }
        }
        cut::kernel_frames(frames, taken)
    }

    /// The executable mappings of `pid`, read again when `leaf` is outside them (they changed:
    /// dlopen) and they are older than `REREAD_MAPS`.
    fn exec_maps(&mut self, pid: u32, leaf: u64) -> &[ExecMap] {
        let stale = self
            .exec
            .get(&pid)
            .is_none_or(|(at, m)| !in_ranges(m, leaf) && at.elapsed() >= REREAD_MAPS);
        if stale {
            let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            let mut maps = exec_ranges(&text);
            if crate::procfs::foreign_mount_namespace(pid) {
                for m in &mut maps {
                    if let Some(p) = m.path.take() {
                        m.path = Some(self.rooted.path(pid, &m.file_id, &p));
                    }
                }
            }
            self.exec.insert(pid, (Instant::now(), maps));
        }
        self.exec
            .peek(&pid)
            .map(|(_, m)| m.as_slice())
            .unwrap_or_default()
    }

    fn user(&mut self, pid: u32, ips: &[u64]) -> Vec<Frame> {
        // Addresses in file mappings are symbolized (and cached) as offsets into their ELF file
        // (parsed once by blazesym); the rest (vdso, anonymous code) through the process.
        let keys: Vec<UserKey> = {
            let maps = self
                .exec
                .peek(&pid)
                .map(|(_, m)| m.as_slice())
                .unwrap_or_default();
            lookups(ips)
                .into_iter()
                .map(
                    |a| match find(maps, a).and_then(|m| m.path.clone().map(|p| (m, p))) {
                        Some((m, path)) => UserKey::File(path, a - m.start + m.offset),
                        None => UserKey::Anon(pid, a),
                    },
                )
                .collect()
        };
        let cached = |s: &Self, k: &UserKey| match k {
            UserKey::File(p, off) => s.file_syms.peek(&(Rc::clone(p), *off)).cloned(),
            UserKey::Anon(pid, a) => s.anon_syms.peek(&(*pid, *a)).cloned(),
        };
        let mut by_file: HashMap<Rc<str>, Vec<u64>> = HashMap::new();
        let mut rest = Vec::new();
        for k in &keys {
            let hit = match k {
                UserKey::File(p, off) => self.file_syms.contains_key(&(Rc::clone(p), *off)),
                UserKey::Anon(pid, a) => self.anon_syms.contains_key(&(*pid, *a)),
            };
            if hit {
                continue;
            }
            match k {
                UserKey::File(path, off) => by_file.entry(Rc::clone(path)).or_default().push(*off),
                UserKey::Anon(_, a) => rest.push(*a),
            }
        }
        let mut fresh: HashMap<UserKey, Frame> = HashMap::new();
        for (path, mut offsets) in by_file {
            offsets.sort_unstable();
            offsets.dedup();
            let frames = self.symbols.elf_offsets(Path::new(&*path), &offsets);
            for (off, f) in offsets.into_iter().zip(frames) {
                fresh.insert(UserKey::File(Rc::clone(&path), off), f);
            }
        }
        if !rest.is_empty() {
            rest.sort_unstable();
            rest.dedup();
            for (a, f) in rest.iter().zip(self.symbols.process(pid, &rest)) {
                fresh.insert(UserKey::Anon(pid, *a), f);
            }
        }
        // Read everything before the caches change (an insert can age entries out).
        let out: Vec<Frame> = keys
            .iter()
            .filter_map(|k| fresh.get(k).cloned().or_else(|| cached(self, k)))
            .collect();
        for k in keys {
            let f = fresh.remove(&k);
            match (k, f) {
                (UserKey::File(p, off), Some(f)) => self.file_syms.insert((p, off), f),
                (UserKey::Anon(pid, a), Some(f)) => self.anon_syms.insert((pid, a), f),
                // A hit: mark it used.
                (UserKey::File(p, off), None) => {
                    self.file_syms.get(&(p, off));
                }
                (UserKey::Anon(pid, a), None) => {
                    self.anon_syms.get(&(pid, a));
                }
            }
        }
        out
    }
}

/// Everything kept for a process: its Python reader (code objects) and its registration with
/// the kernel walker, its mappings, the addresses resolved outside its files, and what the
/// symbolizer opened through it. Resolved file offsets are shared, not per process.
impl PerProcess for Resolver {
    fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .python
            .pids()
            .into_iter()
            .chain(self.exec.keys().copied())
            .chain(self.anon_syms.keys().map(|k| k.0))
            .chain(self.symbols.pids())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn forget_process(&mut self, pid: u32) -> bool {
        let mut held = self.python.forget_process(pid);
        let before = self.exec.len() + self.anon_syms.len();
        self.exec.retain(|p, _| *p != pid);
        self.anon_syms.retain(|k, _| k.0 != pid);
        held |= self.exec.len() + self.anon_syms.len() != before;
        held |= self.symbols.forget_process(pid);
        held
    }
}

/// The address to look up for each frame, innermost first: the leaf is the pc itself; the
/// others are return addresses, which point after their call, so one byte earlier lands on the
/// call's line.
fn lookups(ips: &[u64]) -> Vec<u64> {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| if i == 0 { *ip } else { ip.saturating_sub(1) })
        .collect()
}

/// An executable mapping of a process.
#[derive(Debug, Clone)]
struct ExecMap {
    start: u64,
    end: u64,
    /// File offset of `start`.
    offset: u64,
    /// The ELF file, when the mapping is one that still exists (not `[vdso]`, not deleted).
    path: Option<Rc<str>>,
    /// The file's device and inode as maps gives them ("fe:01", 1053).
    file_id: (Rc<str>, u64),
}

/// Executable mappings of a /proc/PID/maps text, sorted.
fn exec_ranges(maps: &str) -> Vec<ExecMap> {
    let mut v: Vec<ExecMap> = maps
        .lines()
        .filter_map(|l| {
            // start-end perms offset dev inode path (the path may contain spaces)
            let mut it = l.splitn(6, ' ');
            let (start, end) = it.next()?.split_once('-')?;
            it.next()?.contains('x').then_some(())?;
            let offset = u64::from_str_radix(it.next()?, 16).ok()?;
            let dev = it.next()?;
            let inode = it.next()?.parse().ok()?;
            let path = it.next().map(str::trim).unwrap_or_default();
            let file = path.starts_with('/') && !path.ends_with(" (deleted)");
            Some(ExecMap {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset,
                path: file.then(|| Rc::from(path)),
                file_id: (Rc::from(dev), inode),
            })
        })
        .collect();
    v.sort_unstable_by_key(|m| m.start);
    v
}

fn find(maps: &[ExecMap], ip: u64) -> Option<&ExecMap> {
    let i = maps.partition_point(|m| m.start <= ip);
    maps.get(i.checked_sub(1)?).filter(|m| ip < m.end)
}

fn in_ranges(maps: &[ExecMap], ip: u64) -> bool {
    find(maps, ip).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process blocked reading its stdin: alive until we close it or kill it.
    fn child() -> std::process::Child {
        std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Start of the executable mapping of `file` (a path suffix) in `pid`, once exec'd.
    fn text_of(pid: u32, file: &str) -> u64 {
        for _ in 0..200 {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            let found = maps
                .lines()
                .find(|l| l.contains(" r-xp ") && l.ends_with(file))
                .and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok());
            if let Some(a) = found {
                return a;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no {file} code in {pid}");
    }

    /// What the profiler and a capture do with a one-frame stack of `pid`: look for Python,
    /// then resolve the frame.
    fn one_frame(r: &mut Resolver, pid: u32, ip: u64) -> Vec<Frame> {
        r.probe(pid);
        r.native(pid, &[ip])
    }

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v
    }

    #[test]
    fn an_exited_process_is_forgotten_and_the_others_kept() {
        let mut a = child();
        let mut b = child();
        let (pa, pb) = (a.id(), b.id());
        let mut r = Resolver::new(None);
        for pid in [pa, pb] {
            let text = text_of(pid, "/cat");
            let frames = one_frame(&mut r, pid, text + 0x40);
            assert_eq!(frames.len(), 1, "{frames:?}");
        }
        // Both probed (not Python), mapped and symbolized.
        assert_eq!(r.pids(), sorted(vec![pa, pb]));
        let shared = r.file_syms.len();
        a.kill().unwrap();
        a.wait().unwrap();
        let gone = crate::reaper::reap(&mut [&mut r], &[], true, crate::procfs::alive);
        assert_eq!(gone, [pa]);
        assert_eq!(r.pids(), [pb]);
        assert!(!r.python.pids().contains(&pa) && r.exec.peek(&pa).is_none());
        assert_eq!(
            r.file_syms.len(),
            shared,
            "symbols of files are not per process"
        );
        b.kill().unwrap();
        b.wait().unwrap();
    }

    #[test]
    fn addresses_are_cached_by_file_not_by_process() {
        let a = child();
        let b = child();
        let mut r = Resolver::new(None);
        let text = text_of(a.id(), "/cat");
        one_frame(&mut r, a.id(), text + 0x80);
        let after_first = r.file_syms.len();
        assert_eq!(after_first, 1);
        // The same instruction of the same file in another process (another address, ASLR):
        // no new entry.
        let text = text_of(b.id(), "/cat");
        one_frame(&mut r, b.id(), text + 0x80);
        assert_eq!(r.file_syms.len(), after_first);
        for mut c in [a, b] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    #[inline(never)]
    fn marker_function() -> u64 {
        marker_function as fn() -> u64 as usize as u64
    }

    /// Return addresses are looked up on their call; a walk gone into data is cut there.
    #[test]
    fn a_stack_ends_at_its_first_address_outside_code() {
        let mut r = Resolver::new(None);
        let me = std::process::id();
        let data = &r as *const Resolver as u64;
        let frames = r.native(me, &[marker_function(), marker_function() + 1, data, 0x10]);
        let names: Vec<&str> = frames.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names.iter().all(|n| n.contains("marker_function")),
            "{names:?}"
        );
    }

    #[test]
    fn container_files_get_one_path_each_while_it_works() {
        let mut r = Rooted::default();
        let me = std::process::id();
        let id: (Rc<str>, u64) = (Rc::from("fe:01"), 1053);
        let bin = "/bin/sh";
        let first = r.path(me, &id, bin);
        assert_eq!(&*first, format!("/proc/{me}/root/bin/sh"));
        // Another process mapping the same file shares the first path while it exists.
        assert_eq!(r.path(1, &id, bin), first);
        // A path that stopped working is replaced by the asking process's.
        r.0.insert(id.clone(), Rc::from("/proc/999999999/root/bin/sh"));
        assert_eq!(&*r.path(me, &id, bin), format!("/proc/{me}/root/bin/sh"));
    }

    #[test]
    fn executable_ranges_from_maps() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 1 /usr/bin/python3.11
55d0c0001000-55d0c0002000 r-xp 00001000 08:01 1 /usr/bin/python3.11
7f0000000000-7f0000100000 rw-p 00000000 00:00 0 [heap]
7f1000000000-7f1000200000 r-xp 00000000 08:01 2 /usr/lib/libpython3.11.so
";
        let r = exec_ranges(maps);
        assert_eq!(r.len(), 2);
        let lib = find(&r, 0x7f1000000100).unwrap();
        assert_eq!(lib.path.as_deref(), Some("/usr/lib/libpython3.11.so"));
        assert_eq!(0x7f1000000100 - lib.start + lib.offset, 0x100);
        assert!(in_ranges(&r, 0x55d0c0001800));
        assert!(!in_ranges(&r, 0x55d0c0000800));
        assert!(!in_ranges(&r, 0x7f0000000010));
        assert!(in_ranges(&r, 0x7f10001fffff));
        assert!(!in_ranges(&r, 0x7f1000200000));
    }
}
