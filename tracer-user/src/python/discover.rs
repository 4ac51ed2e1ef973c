//! Finding a process's CPython runtime: which mapped ELF holds `_PyRuntime`, where it is loaded,
//! and which version it is.
//!
//! With `--enable-shared` (pyenv, most distro builds of libpython) the symbols live in
//! `libpython3.X.so`; a static build (Debian's /usr/bin/python3.X, many containers) has them in
//! the executable; embedders (uWSGI, mod_wsgi) map libpython. So the candidates are the executable
//! and every mapped file whose name mentions python.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use super::PyError;

/// One line of /proc/PID/maps that maps a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
}

/// Parse /proc/PID/maps, keeping file-backed mappings.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            // start-end perms offset dev inode path (the path may contain spaces)
            let mut it = line.splitn(6, ' ');
            let range = it.next()?;
            let _perms = it.next()?;
            let offset = u64::from_str_radix(it.next()?, 16).ok()?;
            let _dev = it.next()?;
            let inode = it.next()?;
            let path = it.next()?.trim_start();
            if inode == "0" || !path.starts_with('/') {
                return None;
            }
            let (s, e) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                offset,
                path: path.to_string(),
            })
        })
        .collect()
}

/// `(3, 11)` from `libpython3.11.so.1.0`, `python3.11`, `libpython3.12d.so`, ...
pub fn version_from_name(path: &str) -> Option<(u8, u8)> {
    let name = path.rsplit('/').next()?;
    let rest = &name[name.find("python")? + "python".len()..];
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Addresses in the target of the symbols we need, from one ELF file.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The file as the target sees it (from /proc/PID/maps).
    pub path: String,
    /// `_PyRuntime`
    pub runtime: u64,
    /// `PyCode_Type`: every code object's `ob_type` points here.
    pub code_type: u64,
    /// `Py_Version` (3.11+): `PY_VERSION_HEX` as an `unsigned long`.
    pub py_version: Option<u64>,
}

/// Symbol values (link-time addresses) found in an ELF file.
#[derive(Debug, Default)]
struct Symbols {
    runtime: Option<u64>,
    code_type: Option<u64>,
    py_version: Option<u64>,
}

/// Look for the runtime in every candidate file. `Ok(None)` carries the reasons, for a debug log.
pub fn find_runtime(pid: u32) -> Result<Result<Runtime, Vec<String>>, PyError> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| PyError::from_proc(pid, "maps", e))?;
    let maps = parse_maps(&maps);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.to_str().map(str::to_string));
    let mut by_path: BTreeMap<&str, Vec<&Mapping>> = BTreeMap::new();
    for m in &maps {
        by_path.entry(m.path.as_str()).or_default().push(m);
    }
    let mut candidates: Vec<&str> = by_path
        .keys()
        .copied()
        .filter(|p| {
            let name = p.rsplit('/').next().unwrap_or(p);
            name.contains("python") && !name.ends_with(".pyc")
        })
        .collect();
    // libpython first: with a shared build the executable is a stub without the runtime.
    candidates.sort_by_key(|p| !p.contains("libpython"));
    if let Some(exe) = exe.as_deref() {
        if by_path.contains_key(exe) && !candidates.contains(&exe) {
            candidates.push(exe);
        }
    }
    let mut why = Vec::new();
    if candidates.is_empty() {
        why.push("no python executable or libpython is mapped".to_string());
    }
    for path in candidates {
        let mappings = &by_path[path];
        match symbols_of(pid, path, mappings) {
            Ok((syms, segments)) => {
                let Some(runtime) = syms.runtime else {
                    why.push(format!("{path}: no _PyRuntime symbol"));
                    continue;
                };
                let Some(bias) = load_bias(mappings, &segments) else {
                    why.push(format!("{path}: cannot match its segments to the mappings"));
                    continue;
                };
                let Some(code_type) = syms.code_type else {
                    why.push(format!("{path}: no PyCode_Type symbol"));
                    continue;
                };
                return Ok(Ok(Runtime {
                    path: path.to_string(),
                    runtime: runtime.wrapping_add(bias),
                    code_type: code_type.wrapping_add(bias),
                    py_version: syms.py_version.map(|v| v.wrapping_add(bias)),
                }));
            }
            Err(e) => why.push(format!("{path}: {e}")),
        }
    }
    Ok(Err(why))
}

/// Where the target's libc says `struct pthread.tid` is: the address in the target of glibc's
/// `_thread_db_pthread_tid` descriptor (three `uint32_t`: bits, count, offset), published for
/// libthread_db in libc.so.6 (glibc 2.34+) or libpthread.so.0 (older). `None` for other libcs.
pub fn pthread_tid_descriptor(pid: u32) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let maps = parse_maps(&maps);
    let mut by_path: BTreeMap<&str, Vec<&Mapping>> = BTreeMap::new();
    for m in &maps {
        let name = m.path.rsplit('/').next().unwrap_or(&m.path);
        if name.starts_with("libc.so")
            || name.starts_with("libc-")
            || name.starts_with("libpthread")
        {
            by_path.entry(m.path.as_str()).or_default().push(m);
        }
    }
    by_path.iter().find_map(|(path, mappings)| {
        let first = mappings.first()?;
        let file = open_mapped(pid, path, first).ok()?;
        let cache = object::ReadCache::new(file);
        let elf = object::File::parse(&cache).ok()?;
        let sym = elf
            .dynamic_symbols()
            .find(|s| s.name_bytes() == Ok(b"_thread_db_pthread_tid"))?;
        let segments: Segments = elf
            .segments()
            .map(|s| (s.file_range().0, s.address()))
            .collect();
        let bias = load_bias(mappings, &segments)?;
        Some(sym.address().wrapping_add(bias))
    })
}

/// The offset from a `_thread_db_pthread_tid` descriptor, if it describes one 32-bit field.
pub fn pthread_tid_offset(desc: &[u8; 12]) -> Option<u64> {
    let word = |i: usize| u32::from_le_bytes([desc[i], desc[i + 1], desc[i + 2], desc[i + 3]]);
    let (bits, count, offset) = (word(0), word(4), word(8));
    (bits == 32 && count == 1 && offset < 64 * 1024).then_some(u64::from(offset))
}

/// `PT_LOAD` segments as (file offset, virtual address).
type Segments = Vec<(u64, u64)>;

/// Open the file through the target's root (it may live in a container's mount namespace),
/// falling back to the mapping itself (works even if the file was deleted or replaced).
fn open_mapped(pid: u32, path: &str, first: &Mapping) -> Result<File, std::io::Error> {
    let rooted = PathBuf::from(format!("/proc/{pid}/root")).join(path.trim_start_matches('/'));
    File::open(&rooted).or_else(|_| {
        File::open(Path::new(&format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            first.start, first.end
        )))
    })
}

fn symbols_of(pid: u32, path: &str, mappings: &[&Mapping]) -> Result<(Symbols, Segments), String> {
    let first = mappings.first().ok_or("not mapped")?;
    let file = open_mapped(pid, path, first).map_err(|e| e.to_string())?;
    // ReadCache reads only the parts object asks for (headers, symbol and string tables), not
    // the whole 20-30 MB library.
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).map_err(|e| format!("not a usable ELF file: {e}"))?;
    let segments = elf
        .segments()
        .map(|s| (s.file_range().0, s.address()))
        .collect();
    let mut syms = Symbols::default();
    // The dynamic table is small and always has these exported names; .symtab only if stripped
    // of them (a static executable built without -rdynamic).
    for sym in elf.dynamic_symbols().chain(elf.symbols()) {
        if syms.runtime.is_some() && syms.code_type.is_some() && syms.py_version.is_some() {
            break;
        }
        let slot = match sym.name_bytes() {
            Ok(b"_PyRuntime") => &mut syms.runtime,
            Ok(b"PyCode_Type") => &mut syms.code_type,
            Ok(b"Py_Version") => &mut syms.py_version,
            _ => continue,
        };
        if slot.is_none() && sym.address() != 0 {
            *slot = Some(sym.address());
        }
    }
    Ok((syms, segments))
}

/// Difference between where the file is loaded and its link-time addresses: for a mapping of
/// file offset O at address A, the segment with that page-aligned offset has its page-aligned
/// vaddr at A. (Offsets and vaddrs are congruent modulo the page size, but not equal: libpython's
/// writable segment sits one page above its file offset.)
pub fn load_bias(mappings: &[&Mapping], segments: &[(u64, u64)]) -> Option<u64> {
    const PAGE_MASK: u64 = !0xfff;
    mappings.iter().find_map(|m| {
        segments
            .iter()
            .find(|(off, _)| off & PAGE_MASK == m.offset)
            .map(|(_, vaddr)| m.start.wrapping_sub(vaddr & PAGE_MASK))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1053 /root/.pyenv/versions/3.11.7/bin/python3.11
7f20a2c00000-7f20a2cf5000 r--p 00000000 fe:01 2061 /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0
7f20a2cf5000-7f20a2f31000 r-xp 000f5000 fe:01 2061 /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0
7f20a3015000-7f20a3016000 r--p 00414000 fe:01 2061 /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0
7f20a3016000-7f20a3177000 rw-p 00415000 fe:01 2061 /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0
7f20a3177000-7f20a31b9000 rw-p 00000000 00:00 0 
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
7f20a3200000-7f20a3201000 r--p 00000000 fe:01 99 /srv/my app/lib.so
";

    #[test]
    fn maps_keep_files_only() {
        let m = parse_maps(MAPS);
        assert_eq!(m.len(), 6);
        assert_eq!(m[1].start, 0x7f20a2c00000);
        assert_eq!(m[2].offset, 0xf5000);
        assert_eq!(m[5].path, "/srv/my app/lib.so");
    }

    #[test]
    fn names_give_versions() {
        assert_eq!(
            version_from_name("/usr/lib/libpython3.11.so.1.0"),
            Some((3, 11))
        );
        assert_eq!(version_from_name("/usr/bin/python3.13"), Some((3, 13)));
        assert_eq!(version_from_name("/x/libpython3.12d.so"), Some((3, 12)));
        assert_eq!(version_from_name("/usr/bin/python3"), None);
        assert_eq!(version_from_name("/usr/bin/gunicorn"), None);
    }

    #[test]
    fn bias_from_libpython_segments() {
        // readelf -lW libpython3.11.so.1.0 (pyenv 3.11.7): offset → vaddr of each PT_LOAD.
        let segments = [
            (0x0, 0x0),
            (0xf5000, 0xf5000),
            (0x331000, 0x331000),
            (0x414ed0, 0x415ed0),
        ];
        let maps = parse_maps(MAPS);
        let lib: Vec<&Mapping> = maps
            .iter()
            .filter(|m| m.path.contains("libpython"))
            .collect();
        assert_eq!(load_bias(&lib, &segments), Some(0x7f20a2c00000));
        // Starting from the data segment (file offset 0x414000 at vaddr 0x415000): same bias.
        assert_eq!(load_bias(&lib[2..], &segments), Some(0x7f20a2c00000));
        // The RELRO split leaves a mapping at an offset where no segment starts: no guess.
        assert_eq!(load_bias(&lib[3..], &segments), None);
        assert_eq!(load_bias(&lib, &[(0x999000, 0)]), None);
    }

    #[test]
    fn our_libc_says_where_the_tid_is() {
        // The test binary is linked against glibc, as every CPython here is.
        let addr = pthread_tid_descriptor(std::process::id()).expect("glibc publishes it");
        let mut mem = super::super::memory::ProcessMemory::new(std::process::id());
        let mut desc = [0u8; 12];
        super::super::memory::AddressSpace::read_exact(&mut mem, addr, &mut desc).unwrap();
        let off = pthread_tid_offset(&desc).unwrap();
        // pthread_self() is the struct pthread; its tid field is our gettid().
        let me = unsafe { libc::pthread_self() } as u64;
        let mut tid = [0u8; 4];
        super::super::memory::AddressSpace::read_exact(&mut mem, me + off, &mut tid).unwrap();
        assert_eq!(u32::from_le_bytes(tid) as i64, unsafe { libc::gettid() }
            as i64);
        assert_eq!(pthread_tid_offset(&[0; 12]), None);
    }

    #[test]
    fn finds_our_own_libc_is_not_python() {
        // Our own process has no libpython: the answer is "no", with reasons, not an error.
        let got = find_runtime(std::process::id()).unwrap();
        assert!(got.is_err());
    }
}
