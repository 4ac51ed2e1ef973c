//! A kernel sample → one merged stack of named frames. Owns the per-process Python readers
//! (for code objects), registers Python processes with the kernel walker, and caches symbols:
//! a running server hits the same few thousand addresses over and over.

use std::{
    collections::HashMap,
    rc::Rc,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use tracer_common::{
    profile::{py_status, sample_kind},
    ProfileRecord, PyProcLayout,
};

use super::merge::{self, PyRaw};
use crate::bounded::Bounded;
use crate::{
    capture::{
        symbols::Symbols,
        worker::{without_frames_up_to_last, without_probe_frames},
    },
    model::{
        profile::{FrameInfo, FrameKind},
        slow::Frame,
    },
    python::PythonProcess,
    reaper::{PerProcess, STATS},
};

/// A process found not to be Python is looked at again after this (it may exec into Python, or
/// have been probed before its runtime was mapped), at most `MAX_PROBES` times.
const REPROBE: Duration = Duration::from_secs(2);
const MAX_PROBES: u32 = 5;
/// Resolved addresses kept at most: in ELF files (shared by every process mapping the file),
/// outside them (per process: vdso, anonymous code), and in the kernel. The least recently
/// used go first, counted.
const MAX_FILE_SYMBOLS: usize = 200_000;
const MAX_ANON_SYMBOLS: usize = 50_000;
const MAX_KERNEL_SYMBOLS: usize = 100_000;
/// Processes whose executable mappings are kept at most.
const MAX_MAPS: usize = 4096;

enum Proc {
    Python(Box<PythonProcess>),
    NotPython { at: Instant, probes: u32 },
}

/// Where a user address is: at an offset in an ELF file, or outside any (per process).
#[derive(Clone, PartialEq, Eq, Hash)]
enum UserKey {
    File(Rc<str>, u64),
    Anon(u32, u64),
}

pub struct Resolver {
    symbols: Symbols,
    /// The kernel walker's table of Python processes (None in unit tests).
    py_procs: Option<BpfHashMap<MapData, u32, PyProcLayout>>,
    procs: HashMap<u32, Proc>,
    /// By file and offset, not by process: a recycled worker finds its parent's and its
    /// siblings' addresses already resolved, and nothing here is per process.
    file_syms: Bounded<(Rc<str>, u64), Frame>,
    anon_syms: Bounded<(u32, u64), Frame>,
    /// Executable mappings per process: a frame-pointer walk through code built without frame
    /// pointers returns data addresses; cut the stack at the first one instead of asking
    /// blazesym about each (a new garbage address per sample meant a /proc/PID/maps parse and
    /// a symbolizer miss per sample).
    /// With when they were read: re-read at most once a second (a leaf in anonymous code, a
    /// JIT, is never in them, and must not cost a /proc read per sample).
    exec: Bounded<u32, (Instant, Vec<ExecMap>)>,
    kernel_cache: Bounded<u64, Frame>,
    /// Python processes registered with the kernel walker.
    pub python_procs: u64,
}

impl Resolver {
    pub fn new(py_procs: Option<BpfHashMap<MapData, u32, PyProcLayout>>) -> Self {
        Self {
            symbols: Symbols::new(),
            py_procs,
            procs: HashMap::new(),
            file_syms: Bounded::new(MAX_FILE_SYMBOLS, Some(&STATS.symbols)),
            anon_syms: Bounded::new(MAX_ANON_SYMBOLS, Some(&STATS.symbols)),
            exec: Bounded::new(MAX_MAPS, Some(&STATS.maps)),
            kernel_cache: Bounded::new(MAX_KERNEL_SYMBOLS, Some(&STATS.symbols)),
            python_procs: 0,
        }
    }

    /// Entries held, for the debug log.
    pub fn sizes(&self) -> String {
        format!(
            "{} processes, {} maps, {} file + {} other + {} kernel addresses, symbolizer: {}",
            self.procs.len(),
            self.exec.len(),
            self.file_syms.len(),
            self.anon_syms.len(),
            self.kernel_cache.len(),
            self.symbols.sizes()
        )
    }

    /// Look for CPython in `pid` and, when found, tell the kernel walker how to read it.
    pub fn probe(&mut self, pid: u32) {
        let probes = match self.procs.get(&pid) {
            Some(Proc::NotPython { at, probes }) => {
                if at.elapsed() < REPROBE || *probes >= MAX_PROBES {
                    return;
                }
                *probes
            }
            Some(Proc::Python(_)) => return,
            None => 0,
        };
        match PythonProcess::attach(pid) {
            Ok(Some(p)) => {
                let layout = p.kernel_layout();
                match self.py_procs.as_mut().map(|m| m.insert(pid, layout, 0)) {
                    Some(Ok(())) | None => {
                        self.python_procs += 1;
                        log::info!(
                            "pid {pid}: Python {:?}, frames walked in the kernel",
                            p.version()
                        );
                    }
                    Some(Err(e)) => log::warn!("pid {pid}: registering its Python layout: {e}"),
                }
                self.procs.insert(pid, Proc::Python(Box::new(p)));
            }
            Ok(None) => {
                self.procs.insert(
                    pid,
                    Proc::NotPython {
                        at: Instant::now(),
                        probes: probes + 1,
                    },
                );
            }
            Err(e) => {
                log::debug!("pid {pid}: looking for Python: {e}");
                self.procs.insert(
                    pid,
                    Proc::NotPython {
                        at: Instant::now(),
                        probes: probes + 1,
                    },
                );
            }
        }
    }

    /// The sample's frames, root to leaf (without the endpoint).
    pub fn stack(&mut self, r: &ProfileRecord) -> Vec<FrameInfo> {
        let pid = r.tgid;
        // Not Python as far as the kernel knows, or a process the kernel knows as Python but we
        // do not (a forked worker: the kernel copied its parent's layout, and we need its code
        // objects). Probing is rate-limited per process.
        if r.py_status == py_status::NOT_PYTHON
            || !matches!(self.procs.get(&pid), Some(Proc::Python(_)))
        {
            self.probe(pid);
        }
        let mut ips: Vec<u64> = r.user[..frames(r.user_len, r.user.len())]
            .iter()
            .copied()
            .take_while(|ip| *ip != 0)
            .collect();
        self.cut_at_non_code(pid, &mut ips);
        let user = self.user(pid, &ips);
        let kern = self.kernel(
            &r.kern[..frames(r.kern_len, r.kern.len())],
            r.kind == sample_kind::OFF_CPU,
        );
        let py = self.python(r);
        let mut out = merge::merge(&user, &py, &kern);
        if r.kind == sample_kind::OFF_CPU && r.state & 0xff == 0 {
            // Switched out while runnable: preempted, then waiting for a CPU.
            out.push(FrameInfo::new(
                FrameKind::Marker,
                "[runnable: waiting for a CPU]",
            ));
        }
        if r.py_status == py_status::TRUNCATED {
            out.insert(
                0,
                FrameInfo::new(FrameKind::Marker, "[deeper python frames cut]"),
            );
        }
        out
    }

    /// Keep the stack up to its first address outside executable memory (the leaf always stays:
    /// it is the sampled pc). A leaf outside the known mappings means they changed (dlopen):
    /// read them again.
    fn cut_at_non_code(&mut self, pid: u32, ips: &mut Vec<u64>) {
        let Some(&leaf) = ips.first() else {
            return;
        };
        let stale = self
            .exec
            .get(&pid)
            .is_none_or(|(at, r)| !in_ranges(r, leaf) && at.elapsed() >= Duration::from_secs(1));
        if stale {
            let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            self.exec.insert(pid, (Instant::now(), exec_ranges(&text)));
        }
        let Some((_, ranges)) = self.exec.get(&pid) else {
            return;
        };
        if ranges.is_empty() {
            return;
        }
        if let Some(cut) = ips.iter().skip(1).position(|ip| !in_ranges(ranges, *ip)) {
            ips.truncate(cut + 1);
        }
    }

    fn python(&mut self, r: &ProfileRecord) -> Vec<PyRaw> {
        let n = (r.py_n as usize).min(r.py.len());
        if n == 0 {
            return Vec::new();
        }
        let Some(Proc::Python(p)) = self.procs.get_mut(&r.tgid) else {
            return Vec::new();
        };
        let raw: Vec<(u64, u64)> = r.py[..n].iter().map(|f| (f.code, f.instr)).collect();
        p.resolve(&raw)
            .into_iter()
            .zip(&r.py_flags[..n])
            .map(|(frame, &flags)| PyRaw { frame, flags })
            .collect()
    }

    fn user(&mut self, pid: u32, ips: &[u64]) -> Vec<Frame> {
        // The leaf is the sampled pc; the others are return addresses: look up the call.
        // Addresses in file mappings are symbolized (and cached) as offsets into their ELF file
        // (parsed once by blazesym); the rest (vdso, anonymous code) through the process.
        let keys: Vec<UserKey> = {
            let maps = self
                .exec
                .peek(&pid)
                .map(|(_, m)| m.as_slice())
                .unwrap_or_default();
            ips.iter()
                .enumerate()
                .map(|(i, ip)| {
                    let a = if i == 0 { *ip } else { ip.saturating_sub(1) };
                    match find(maps, a).and_then(|m| m.path.clone().map(|p| (m, p))) {
                        Some((m, path)) => UserKey::File(path, a - m.start + m.offset),
                        None => UserKey::Anon(pid, a),
                    }
                })
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
            let frames = self
                .symbols
                .elf_offsets(std::path::Path::new(&*path), &offsets);
            for (off, f) in offsets.into_iter().zip(frames) {
                fresh.insert(UserKey::File(Rc::clone(&path), off), f);
            }
        }
        if !rest.is_empty() {
            rest.sort_unstable();
            rest.dedup();
            for (a, f) in rest.iter().zip(self.symbols.user_lookups(pid, &rest)) {
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

    fn kernel(&mut self, ips: &[u64], off_cpu: bool) -> Vec<Frame> {
        let lookups: Vec<u64> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| if i == 0 { *ip } else { ip.saturating_sub(1) })
            .collect();
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
            let frames = self.symbols.kernel_lookups(&missing);
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
        if off_cpu {
            without_tracepoint_frames(frames)
        } else {
            without_probe_frames(frames)
        }
    }
}

/// Everything kept for a process: its Python reader (code objects) and its registration with
/// the kernel walker, its mappings, the addresses resolved outside its files, and what the
/// symbolizer opened through it. Resolved file offsets are shared, not per process.
impl PerProcess for Resolver {
    fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .procs
            .keys()
            .chain(self.exec.keys())
            .copied()
            .chain(self.anon_syms.keys().map(|k| k.0))
            .chain(self.symbols.pids())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn forget_process(&mut self, pid: u32) -> bool {
        let mut held = self.procs.remove(&pid).is_some();
        let before = self.exec.len() + self.anon_syms.len();
        self.exec.retain(|p, _| *p != pid);
        self.anon_syms.retain(|k, _| k.0 != pid);
        held |= self.exec.len() + self.anon_syms.len() != before;
        held |= self.symbols.forget_process(pid);
        // The kernel drops it at exit; this covers a registration that raced the exit.
        if let Some(m) = self.py_procs.as_mut() {
            let _ = m.remove(&pid);
        }
        held
    }
}

/// Off CPU the stack ends in our tracepoint program, called from the scheduler: drop that
/// part only (the timer and sleep frames under it are where the thread waits).
fn without_tracepoint_frames(frames: Vec<Frame>) -> Vec<Frame> {
    without_frames_up_to_last(
        frames,
        &["bpf_", "__bpf_", "__traceiter_", "trace_call_bpf"],
    )
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
            let _dev = it.next()?;
            let _inode = it.next()?;
            let path = it.next().map(str::trim).unwrap_or_default();
            let file = path.starts_with('/') && !path.ends_with(" (deleted)");
            Some(ExecMap {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset,
                path: file.then(|| Rc::from(path)),
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

/// Frames `bpf_get_stack` wrote (it returns bytes, or a negative error), zeros trimmed.
fn frames(len: i32, cap: usize) -> usize {
    usize::try_from(len).map_or(0, |b| (b / 8).min(cap))
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

    /// An on-CPU sample of `pid` with a one-frame user stack.
    fn sample(pid: u32, ip: u64) -> ProfileRecord {
        let mut r = ProfileRecord::zeroed();
        r.kind = sample_kind::ON_CPU;
        r.tgid = pid;
        r.tid = pid;
        r.user[0] = ip;
        r.user_len = 8;
        r
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
            let frames = r.stack(&sample(pid, text + 0x40));
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
        assert!(!r.procs.contains_key(&pa) && r.exec.peek(&pa).is_none());
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
        r.stack(&sample(a.id(), text + 0x80));
        let after_first = r.file_syms.len();
        assert_eq!(after_first, 1);
        // The same instruction of the same file in another process (another address, ASLR):
        // no new entry.
        let text = text_of(b.id(), "/cat");
        r.stack(&sample(b.id(), text + 0x80));
        assert_eq!(r.file_syms.len(), after_first);
        for mut c in [a, b] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
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
