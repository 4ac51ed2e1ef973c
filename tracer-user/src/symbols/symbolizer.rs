//! Native and kernel addresses → function, file:line, with blazesym. Its `Symbolizer` is neither
//! Send nor Sync, so it lives on the stack resolver thread and nowhere else.
//!
//! blazesym keeps every ELF file it parsed (and its file descriptor) for the symbolizer's life.
//! For a process source it reaches files through /proc/PID/map_files/START-END and keys its
//! cache by that path, so without help each process that ever had an address symbolized
//! leaves an entry behind (sharing the parsed file, but an entry all the same). We note which
//! of those paths each process used and evict them when it is forgotten; files symbolized by
//! path are evicted when replaced on disk (blazesym would keep both versions), and beyond
//! `MAX_FILES` the symbolizer is rebuilt. Everything let go is counted.
//!
//! Addresses come in as lookups: the caller (`Resolver`) has already moved return addresses
//! back onto their call instruction.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    evict::{self, Evict},
    source::{Elf, Kernel, Process, Source},
    Input, Symbolized, Symbolizer,
};

use crate::{
    model::slow::Frame,
    reaper::{self, STATS},
};

/// Distinct ELF files (by path, or a process's mapping) kept parsed at most; beyond, the
/// symbolizer starts afresh (a slower lookup each until the working set is parsed again).
const MAX_FILES: usize = 2048;

/// A file's identity on disk: another (device, inode, mtime) under the same path is a new file.
type FileId = (u64, u64, i64);

/// What the addresses given to blazesym are.
#[derive(Clone, Copy)]
enum Addr {
    /// Virtual addresses in a process or the kernel.
    Abs,
    /// Offsets into an ELF file.
    FileOffset,
}

impl Addr {
    fn many(self, addrs: &[u64]) -> Input<&[u64]> {
        match self {
            Addr::Abs => Input::AbsAddr(addrs),
            Addr::FileOffset => Input::FileOffset(addrs),
        }
    }

    fn one(self, addr: u64) -> Input<u64> {
        match self {
            Addr::Abs => Input::AbsAddr(addr),
            Addr::FileOffset => Input::FileOffset(addr),
        }
    }
}

pub struct Symbols {
    sym: Symbolizer,
    /// Per process, the file mappings (start, end) whose map_files path blazesym may have
    /// opened and cached.
    mappings: HashMap<u32, Vec<(u64, u64)>>,
    /// Files symbolized by path, as they were when first parsed.
    files: HashMap<PathBuf, FileId>,
    /// Files and mappings let go (of exited processes, replaced, or in a rebuild).
    pub evicted: u64,
    pub rebuilds: u64,
}

impl Symbols {
    pub fn new() -> Self {
        Self {
            sym: Symbolizer::new(),
            mappings: HashMap::new(),
            files: HashMap::new(),
            evicted: 0,
            rebuilds: 0,
        }
    }

    /// Addresses of `pid` outside any file the caller knows of (vdso, anonymous code, or
    /// mappings newer than its copy of /proc/PID/maps), through the process.
    pub fn process(&mut self, pid: u32, lookups: &[u64]) -> Vec<Frame> {
        self.note_mappings(pid, lookups);
        let src = Source::Process(Process::new(pid.into()));
        self.symbolize(&src, Addr::Abs, lookups, None)
    }

    /// Addresses given as offsets into the ELF file at `path`: blazesym keeps each file parsed,
    /// so a miss costs a lookup, not a /proc/PID/maps parse.
    pub fn elf_offsets(&mut self, path: &Path, offsets: &[u64]) -> Vec<Frame> {
        self.note_file(path);
        let src = Source::Elf(Elf::new(path));
        let module = path.file_name().map(|n| n.to_string_lossy().into_owned());
        self.symbolize(&src, Addr::FileOffset, offsets, module.as_deref())
    }

    pub fn kernel(&self, lookups: &[u64]) -> Vec<Frame> {
        let src = Source::Kernel(Kernel::default());
        self.symbolize(&src, Addr::Abs, lookups, None)
    }

    /// What is held, for the debug log.
    pub fn sizes(&self) -> String {
        format!(
            "{} files, {} processes' mappings",
            self.files.len(),
            self.mappings.len()
        )
    }

    /// Remember which file mappings of `pid` the addresses fall in (one /proc/PID/maps read,
    /// skipped when all are in mappings already noted).
    fn note_mappings(&mut self, pid: u32, addrs: &[u64]) {
        let known = self.mappings.get(&pid);
        let noted = |a: &u64| known.is_some_and(|m| m.iter().any(|(s, e)| (*s..*e).contains(a)));
        if addrs.iter().all(noted) {
            return;
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        let files = file_mappings(&text);
        let m = self.mappings.entry(pid).or_default();
        for a in addrs {
            if let Some(&r) = files.iter().find(|(s, e)| (*s..*e).contains(a)) {
                if !m.contains(&r) {
                    m.push(r);
                }
            }
        }
        if self.files.len() + self.mappings.values().map(Vec::len).sum::<usize>() > MAX_FILES {
            self.rebuild();
        }
    }

    /// A file symbolized by path: if it changed on disk since it was parsed, drop the old one.
    fn note_file(&mut self, path: &Path) {
        let Ok(md) = std::fs::metadata(path) else {
            return;
        };
        let id = (md.dev(), md.ino(), md.mtime());
        match self.files.insert(path.to_owned(), id) {
            Some(old) if old != id => {
                self.evict(Evict::Elf(evict::Elf::new(path)));
                self.count(1);
            }
            Some(_) => {}
            None if self.files.len() > MAX_FILES => self.rebuild(),
            None => {}
        }
    }

    /// Start afresh: every parsed file and descriptor is dropped.
    fn rebuild(&mut self) {
        let n = self.files.len() + self.mappings.values().map(Vec::len).sum::<usize>();
        self.sym = Symbolizer::new();
        self.files.clear();
        self.mappings.clear();
        self.rebuilds += 1;
        self.count(n as u64);
    }

    fn evict(&mut self, what: Evict) {
        if let Err(e) = self.sym.evict(&what) {
            log::debug!("symbolizer eviction {what:?}: {e}");
        }
    }

    fn count(&mut self, n: u64) {
        self.evicted += n;
        reaper::add(&STATS.symbolizer_files, n);
    }

    /// One frame per address, `module` filled in where blazesym names none. The retry policy
    /// of every symbol lookup: one unreadable module must not cost the other frames, so a batch
    /// that fails is retried address by address, and an address that fails is shown as such.
    fn symbolize(
        &self,
        src: &Source<'_>,
        kind: Addr,
        addrs: &[u64],
        module: Option<&str>,
    ) -> Vec<Frame> {
        let with_module = |mut f: Frame| {
            if f.module.is_none() {
                f.module = module.map(str::to_owned);
            }
            f
        };
        match self.sym.symbolize(src, kind.many(addrs)) {
            Ok(syms) => syms
                .iter()
                .zip(addrs)
                .map(|(s, a)| with_module(frame(s, *a)))
                .collect(),
            Err(e) => {
                log::debug!("symbolization failed ({e}); retrying address by address");
                addrs
                    .iter()
                    .map(|a| match self.sym.symbolize_single(src, kind.one(*a)) {
                        Ok(s) => with_module(frame(&s, *a)),
                        Err(_) => with_module(unknown(*a)),
                    })
                    .collect()
            }
        }
    }
}

/// The files of an exited process: its map_files entries in blazesym's cache, and its VMAs
/// and perf-map name if blazesym kept any.
impl crate::reaper::PerProcess for Symbols {
    fn pids(&self) -> Vec<u32> {
        self.mappings.keys().copied().collect()
    }

    fn forget_process(&mut self, pid: u32) -> bool {
        self.evict(Evict::Process(evict::Process::new(pid.into())));
        let Some(ranges) = self.mappings.remove(&pid) else {
            return false;
        };
        for (start, end) in &ranges {
            let path = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
            self.evict(Evict::Elf(evict::Elf::new(path)));
        }
        self.count(ranges.len() as u64);
        true
    }
}

/// (start, end) of the mappings of a /proc/PID/maps text that have a file (blazesym opens those
/// through /proc/PID/map_files/START-END, named as here: hex without leading zeros).
fn file_mappings(maps: &str) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|l| {
            let mut it = l.splitn(6, ' ');
            let (start, end) = it.next()?.split_once('-')?;
            let path = it.nth(4).map(str::trim).unwrap_or_default();
            path.starts_with('/').then_some(())?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

fn unknown(ip: u64) -> Frame {
    Frame {
        function: format!("{ip:#x}"),
        file: None,
        line: None,
        module: None,
    }
}

fn frame(s: &Symbolized<'_>, ip: u64) -> Frame {
    let Some(sym) = s.as_sym() else {
        return unknown(ip);
    };
    let (file, line) = match &sym.code_info {
        Some(ci) => {
            let file = match &ci.dir {
                Some(dir) => dir.join(&ci.file),
                None => Path::new(&ci.file).to_owned(),
            };
            (Some(file.display().to_string()), ci.line)
        }
        None => (None, None),
    };
    Frame {
        function: sym.name.to_string(),
        file,
        line,
        module: sym.module.as_ref().and_then(|m| {
            Path::new(m)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function() -> u64 {
        marker_function as fn() -> u64 as usize as u64
    }

    #[test]
    fn symbolizes_own_function() {
        let mut s = Symbols::new();
        let frames = s.process(std::process::id(), &[marker_function()]);
        assert!(frames[0].function.contains("marker_function"), "{frames:?}");
    }

    #[test]
    fn map_files_names_are_blazesyms() {
        let maps = "\
00400000-00401000 r-xp 00000000 08:01 1 /usr/bin/true
7f0000000000-7f0000100000 rw-p 00000000 00:00 0 [heap]
7f1000000000-7f1000200000 r-xp 00000000 08:01 2 /usr/lib/lib with space.so
7f2000000000-7f2000001000 r-xp 00000000 00:00 0
";
        assert_eq!(
            file_mappings(maps),
            [(0x400000, 0x401000), (0x7f1000000000, 0x7f1000200000)]
        );
    }

    /// Descriptors of this process open on `path`.
    fn fds_on(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == path))
            .count()
    }

    /// A real process, symbolized through /proc/PID/map_files: forgetting it closes the file
    /// blazesym opened for it and keeps what belongs to another process.
    #[test]
    fn forgetting_a_process_closes_its_files() {
        use crate::reaper::PerProcess as _;
        let exe = std::fs::canonicalize("/bin/sleep").unwrap();
        let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        let pid = child.id();
        // Wait for the exec: the child's executable mapping is sleep's.
        let text_of = |pid: u32| -> Option<u64> {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
            maps.lines()
                .find(|l| l.ends_with(exe.to_str().unwrap()) && l.contains(" r-xp "))
                .and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok())
        };
        let mut text = None;
        for _ in 0..100 {
            text = text_of(pid);
            if text.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let text = text.expect("sleep's code mapping");
        let mut s = Symbols::new();
        s.process(std::process::id(), &[marker_function()]);
        s.process(pid, &[text + 0x10]);
        assert_eq!(s.pids().len(), 2);
        let opened = fds_on(&exe);
        if opened == 0 {
            // /proc/PID/map_files needs CAP_SYS_ADMIN: blazesym could not open it unprivileged.
            eprintln!("skipped: no access to /proc/{pid}/map_files");
        }
        assert!(s.forget_process(pid));
        assert_eq!(s.pids(), [std::process::id()]);
        assert_eq!(fds_on(&exe), 0, "the file opened for it is closed");
        assert!(!s.forget_process(pid));
        assert!(s.evicted >= 1);
        let _ = child.kill();
        let _ = child.wait();
    }
}
