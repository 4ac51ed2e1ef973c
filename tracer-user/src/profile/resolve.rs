//! A kernel sample → one merged stack of named frames. Owns the per-process Python readers
//! (for code objects), registers Python processes with the kernel walker, and caches symbols:
//! a running server hits the same few thousand addresses over and over.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use tracer_common::{
    profile::{py_status, sample_kind},
    ProfileRecord, PyProcLayout,
};

use super::merge::{self, PyRaw};
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
};

/// A process found not to be Python is looked at again after this (it may exec into Python, or
/// have been probed before its runtime was mapped), at most `MAX_PROBES` times.
const REPROBE: Duration = Duration::from_secs(2);
const MAX_PROBES: u32 = 5;
/// Symbol caches are dropped wholesale beyond this many addresses.
const MAX_CACHED: usize = 200_000;

enum Proc {
    Python(Box<PythonProcess>),
    NotPython { at: Instant, probes: u32 },
}

pub struct Resolver {
    symbols: Symbols,
    py_procs: BpfHashMap<MapData, u32, PyProcLayout>,
    procs: HashMap<u32, Proc>,
    user_cache: HashMap<(u32, u64), Frame>,
    /// Executable mappings per process: a frame-pointer walk through code built without frame
    /// pointers returns data addresses; cut the stack at the first one instead of asking
    /// blazesym about each (a new garbage address per sample meant a /proc/PID/maps parse and
    /// a symbolizer miss per sample).
    /// With when they were read: re-read at most once a second (a leaf in anonymous code, a
    /// JIT, is never in them, and must not cost a /proc read per sample).
    exec: HashMap<u32, (Instant, Vec<ExecMap>)>,
    kernel_cache: HashMap<u64, Frame>,
    /// Python processes registered with the kernel walker.
    pub python_procs: u64,
}

impl Resolver {
    pub fn new(py_procs: BpfHashMap<MapData, u32, PyProcLayout>) -> Self {
        Self {
            symbols: Symbols::new(),
            py_procs,
            procs: HashMap::new(),
            user_cache: HashMap::new(),
            exec: HashMap::new(),
            kernel_cache: HashMap::new(),
            python_procs: 0,
        }
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
                match self.py_procs.insert(pid, layout, 0) {
                    Ok(()) => {
                        self.python_procs += 1;
                        log::info!(
                            "pid {pid}: Python {:?}, frames walked in the kernel",
                            p.version()
                        );
                    }
                    Err(e) => log::warn!("pid {pid}: registering its Python layout: {e}"),
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
            if self.exec.len() > 4096 {
                self.exec.clear();
            }
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
        let lookups: Vec<u64> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| if i == 0 { *ip } else { ip.saturating_sub(1) })
            .collect();
        let missing: Vec<u64> = lookups
            .iter()
            .copied()
            .filter(|a| !self.user_cache.contains_key(&(pid, *a)))
            .collect();
        if !missing.is_empty() {
            if self.user_cache.len() > MAX_CACHED {
                self.user_cache.clear();
            }
            // Addresses in file mappings are symbolized as offsets into their ELF file (parsed
            // once by blazesym); the rest (vdso, anonymous code) through the process.
            let mut by_file: HashMap<std::rc::Rc<str>, (Vec<u64>, Vec<u64>)> = HashMap::new();
            let mut rest = Vec::new();
            let maps = self
                .exec
                .get(&pid)
                .map(|(_, m)| m.as_slice())
                .unwrap_or_default();
            for &a in &missing {
                match find(maps, a).and_then(|m| m.path.clone().map(|p| (m, p))) {
                    Some((m, path)) => {
                        let e = by_file.entry(path).or_default();
                        e.0.push(a);
                        e.1.push(a - m.start + m.offset);
                    }
                    None => rest.push(a),
                }
            }
            for (path, (addrs, offsets)) in by_file {
                let frames = self
                    .symbols
                    .elf_offsets(std::path::Path::new(&*path), &offsets);
                for (a, f) in addrs.iter().zip(frames) {
                    self.user_cache.insert((pid, *a), f);
                }
            }
            if !rest.is_empty() {
                for (a, f) in rest.iter().zip(self.symbols.user_lookups(pid, &rest)) {
                    self.user_cache.insert((pid, *a), f);
                }
            }
        }
        lookups
            .iter()
            .filter_map(|a| self.user_cache.get(&(pid, *a)).cloned())
            .collect()
    }

    fn kernel(&mut self, ips: &[u64], off_cpu: bool) -> Vec<Frame> {
        let lookups: Vec<u64> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| if i == 0 { *ip } else { ip.saturating_sub(1) })
            .collect();
        let missing: Vec<u64> = lookups
            .iter()
            .copied()
            .filter(|a| !self.kernel_cache.contains_key(a))
            .collect();
        if !missing.is_empty() {
            if self.kernel_cache.len() > MAX_CACHED {
                self.kernel_cache.clear();
            }
            for (a, f) in missing.iter().zip(self.symbols.kernel_lookups(&missing)) {
                self.kernel_cache.insert(*a, f);
            }
        }
        let frames: Vec<Frame> = lookups
            .iter()
            .filter_map(|a| self.kernel_cache.get(a).cloned())
            .collect();
        if off_cpu {
            without_tracepoint_frames(frames)
        } else {
            without_probe_frames(frames)
        }
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
    path: Option<std::rc::Rc<str>>,
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
                path: file.then(|| std::rc::Rc::from(path)),
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
