//! Per-program in-kernel cost of slowtrace's BPF programs.
//!
//! With `kernel.bpf_stats_enabled=1` the kernel counts, for every loaded program, how often it ran
//! (`run_cnt`) and for how long (`run_time_ns`). Both are printed in /proc/PID/fdinfo/FD of a
//! program fd, so reading slowtrace's fdinfo before and after a run gives the cost of that run per
//! program. The counts include every run, also those for processes that are not the target (the
//! programs run for the whole machine and bail out early for others): that is exactly the
//! "non-target work" the bench wants to see.
//!
//! fdinfo has no program name; the name comes from the kernel (`BPF_OBJ_GET_INFO_BY_FD` on an fd
//! opened by id), so this needs no bpftool. That name is cut at 15 bytes; /proc/kallsyms lists
//! JITed programs as `bpf_prog_<tag>_<full name>`, which completes it.

use std::{collections::BTreeMap, fs};

use anyhow::Context as _;

/// How often one program ran and for how long, in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProgRun {
    pub(crate) run_ns: u64,
    pub(crate) runs: u64,
}

/// Counters of every program a process holds, by program id.
pub(crate) type Snapshot = BTreeMap<u32, ProgRun>;

/// Enables kernel.bpf_stats_enabled and restores the old value when dropped (the statistics cost
/// two clock reads per program run, so they must not stay on after the bench).
pub(crate) struct StatsEnabled {
    old: String,
}

const STATS_PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl StatsEnabled {
    pub(crate) fn new() -> anyhow::Result<StatsEnabled> {
        let old = fs::read_to_string(STATS_PATH).unwrap_or_else(|_| "0".into());
        fs::write(STATS_PATH, "1").context("enabling kernel.bpf_stats_enabled (run as root)")?;
        Ok(StatsEnabled {
            old: old.trim().to_owned(),
        })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = fs::write(STATS_PATH, &self.old);
    }
}

/// The counters of every BPF program fd that process `pid` holds.
pub(crate) fn snapshot(pid: u32) -> Snapshot {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Snapshot::new();
    };
    dir.flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter_map(|t| parse_prog_fdinfo(&t))
        .collect()
}

/// (prog_id, counters) from the fdinfo of a program fd; None for any other fd (link fds also have
/// a `prog_id:` line but no `prog_type:` and no counters).
fn parse_prog_fdinfo(text: &str) -> Option<(u32, ProgRun)> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    field("prog_type:")?;
    let id = u32::try_from(field("prog_id:")?).ok()?;
    Some((
        id,
        ProgRun {
            run_ns: field("run_time_ns:")?,
            runs: field("run_cnt:")?,
        },
    ))
}

/// What ran between two snapshots (a program loaded in between counts from zero).
pub(crate) fn delta(before: &Snapshot, after: &Snapshot) -> Snapshot {
    after
        .iter()
        .map(|(id, a)| {
            let b = before.get(id).copied().unwrap_or_default();
            (
                *id,
                ProgRun {
                    run_ns: a.run_ns.saturating_sub(b.run_ns),
                    runs: a.runs.saturating_sub(b.runs),
                },
            )
        })
        .collect()
}

/// The counters by program name. Ids change from run to run, names do not, so pairs can be
/// compared by name. Must be called while the programs are still loaded (before slowtrace stops).
pub(crate) fn by_name(s: &Snapshot) -> BTreeMap<String, ProgRun> {
    let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let mut out: BTreeMap<String, ProgRun> = BTreeMap::new();
    for (id, p) in s {
        let name = prog_info(*id).map_or_else(
            || format!("prog {id}"),
            |(tag, short)| full_name(&kallsyms, &tag, &short).unwrap_or(short),
        );
        // Two programs with one name (not expected) are summed rather than one hiding the other.
        let e = out.entry(name).or_default();
        e.run_ns += p.run_ns;
        e.runs += p.runs;
    }
    out
}

extern "C" {
    fn syscall(num: i64, ...) -> i64;
    fn close(fd: i32) -> i32;
}

#[cfg(target_arch = "x86_64")]
const SYS_BPF: i64 = 321;
#[cfg(target_arch = "aarch64")]
const SYS_BPF: i64 = 280;

const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
struct GetFdById {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Offsets of `__u8 tag[8]` and `char name[16]` in `struct bpf_prog_info` (stable UAPI layout).
const TAG_OFFSET: usize = 8;
const NAME_OFFSET: usize = 64;

/// (tag in hex, name cut at 15 bytes) of a loaded program, via its id.
fn prog_info(id: u32) -> Option<(String, String)> {
    let attr = GetFdById {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: the bpf syscall reads `attr` (size given) and returns a new fd or -1.
    let fd = unsafe {
        syscall(
            SYS_BPF,
            BPF_PROG_GET_FD_BY_ID,
            &attr as *const GetFdById,
            std::mem::size_of::<GetFdById>(),
        )
    };
    if fd < 0 {
        return None;
    }
    let fd = fd as i32;
    // Zeroed and larger than the fields we read; the kernel fills min(info_len, its size).
    let mut info = [0u8; 256];
    let attr = InfoByFd {
        bpf_fd: fd as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes into `info`, which outlives the call.
    let rc = unsafe {
        syscall(
            SYS_BPF,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoByFd,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    // SAFETY: closing the fd we just opened.
    unsafe { close(fd) };
    if rc < 0 {
        return None;
    }
    let raw = &info[NAME_OFFSET..NAME_OFFSET + 16];
    let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
    let tag: String = info[TAG_OFFSET..TAG_OFFSET + 8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (!name.is_empty()).then(|| (tag, String::from_utf8_lossy(name).into_owned()))
}

/// The full name from a kallsyms line `ADDR t bpf_prog_<tag>_<name>\t[bpf]`. The short name
/// must be its start: two programs with identical code share a tag, not a name.
fn full_name(kallsyms: &str, tag: &str, short: &str) -> Option<String> {
    let prefix = format!("bpf_prog_{tag}_{short}");
    kallsyms
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .find(|sym| sym.starts_with(&prefix))
        .map(|sym| sym[prefix.len() - short.len()..].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROG: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t17\nprog_type:\t17\nprog_jited:\t1\nprog_tag:\teb1aab1f5bf8756b\nmemlock:\t12288\nprog_id:\t130\nrun_time_ns:\t5000\nrun_cnt:\t20\nrecursion_misses:\t0\nverified_insns:\t64499\n";
    const LINK: &str = "pos:\t0\nflags:\t02000000\nmnt_id:\t17\nino:\t17\nlink_type:\tperf\nlink_id:\t109\nprog_tag:\t2951513b4c011470\nprog_id:\t127\ntp_name:\tsched_process_fork\n";

    #[test]
    fn parses_prog_fdinfo_and_skips_links() {
        assert_eq!(
            parse_prog_fdinfo(PROG),
            Some((
                130,
                ProgRun {
                    run_ns: 5000,
                    runs: 20
                }
            ))
        );
        assert_eq!(parse_prog_fdinfo(LINK), None);
        assert_eq!(parse_prog_fdinfo("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn completes_names_from_kallsyms() {
        let k = "ffffffffc002a820 t bpf_prog_d146185885983ed4_sched_switch_raw\t[bpf]\nffffffffc002be50 t bpf_prog_4f9302ba65b90ccd_memset\t[bpf]\n";
        let full = full_name(k, "d146185885983ed4", "sched_switch_ra");
        assert_eq!(full.as_deref(), Some("sched_switch_raw"));
        assert_eq!(full_name(k, "d146185885983ed4", "other"), None);
        assert_eq!(full_name(k, "0000000000000000", "memset"), None);
    }

    #[test]
    fn delta_counts_new_programs_from_zero() {
        let p = |run_ns, runs| ProgRun { run_ns, runs };
        let before = Snapshot::from([(1, p(100, 10))]);
        let after = Snapshot::from([(1, p(250, 13)), (2, p(40, 2))]);
        let d = delta(&before, &after);
        assert_eq!(d[&1], p(150, 3));
        assert_eq!(d[&2], p(40, 2));
    }
}
