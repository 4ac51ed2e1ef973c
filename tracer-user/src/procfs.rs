//! What we ask /proc: does a process live, who listens on a port, which port a listening fd has.

pub mod cgroup;

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt as _,
};

/// The PID namespace of `pid` as the kernel's `bpf_get_ns_current_pid_tgid` wants it named:
/// (device in the kernel's own encoding, inode) of /proc/PID/ns/pid. None when it is ours (or
/// cannot be read: then we cannot do better than host TIDs anyway).
pub fn foreign_pid_namespace(pid: u32) -> Option<(u64, u64)> {
    let theirs = fs::metadata(format!("/proc/{pid}/ns/pid")).ok()?;
    let ours = fs::metadata("/proc/self/ns/pid").ok()?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return None;
    }
    Some((kernel_dev(theirs.dev()), theirs.ino()))
}

/// Whether `pid` sees another file system than we do (a container's mount namespace): then the
/// paths in its /proc/PID/maps name files under /proc/PID/root, not ours. False when it cannot
/// be told (the process is gone).
pub fn foreign_mount_namespace(pid: u32) -> bool {
    let ns = |p: &str| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match (ns(&format!("/proc/{pid}/ns/mnt")), ns("/proc/self/ns/mnt")) {
        (Some(theirs), Some(ours)) => theirs != ours,
        _ => false,
    }
}

/// stat's `st_dev` (glibc's encoding) as the kernel's internal `dev_t` (major << 20 | minor),
/// which is what the helper compares with.
fn kernel_dev(st_dev: u64) -> u64 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (u64::from(major) << 20) | u64::from(minor)
}

/// Alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": comm may contain spaces and parentheses, so look after the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Children, grandchildren… of `pid` that exist now (e.g. the workers of a pre-fork server).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let kids = fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for k in kids
                .split_whitespace()
                .filter_map(|k| k.parse::<u32>().ok())
            {
                if !out.contains(&k) && out.len() < 4096 {
                    out.push(k);
                    todo.push(k);
                }
            }
        }
    }
    out
}

/// Socket inodes of TCP listeners on `port` in the network namespace of `netns_pid`'s view
/// (`/proc/PID/net/tcp*`).
fn listening_inodes(proc_net: &str, port: Option<u16>) -> HashMap<u64, u16> {
    let mut out = HashMap::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("{proc_net}/{file}")) else {
            continue;
        };
        out.extend(parse_listeners(&text).filter(|(_, p)| port.is_none_or(|want| want == *p)));
    }
    out
}

/// Lines of /proc/net/tcp{,6}: `sl local rem st ... uid timeout inode`; LISTEN is state 0A.
fn parse_listeners(text: &str) -> impl Iterator<Item = (u64, u16)> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            return None;
        }
        let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
        let inode = f[9].parse().ok()?;
        Some((inode, port))
    })
}

fn socket_inode(link: &std::path::Path) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    let s = target.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// TCP ports `pid` listens on now (its own fds, in its network namespace).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let listening = listening_inodes(&format!("/proc/{pid}/net"), None);
    if listening.is_empty() {
        return Vec::new();
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut ports: Vec<u16> = fds
        .flatten()
        .filter_map(|fd| socket_inode(&fd.path()))
        .filter_map(|inode| listening.get(&inode).copied())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Processes that hold a listening socket on `port` now.
pub fn listeners(port: u16) -> Vec<u32> {
    let inodes = listening_inodes("/proc/net", Some(port));
    if inodes.is_empty() {
        return Vec::new();
    }
    let wanted: HashSet<u64> = inodes.keys().copied().collect();
    let mut pids = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| socket_inode(&fd.path()).is_some_and(|i| wanted.contains(&i)))
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// Local port of each (process, listening fd), looked up once and remembered.
#[derive(Debug, Default)]
pub struct LocalPorts {
    cache: HashMap<(u32, i32), Option<u16>>,
}

impl LocalPorts {
    pub fn get(&mut self, tgid: u32, listen_fd: i32) -> Option<u16> {
        if listen_fd < 0 {
            return None;
        }
        *self.cache.entry((tgid, listen_fd)).or_insert_with(|| {
            let inode = socket_inode(format!("/proc/{tgid}/fd/{listen_fd}").as_ref())?;
            listening_inodes(&format!("/proc/{tgid}/net"), None)
                .get(&inode)
                .copied()
        })
    }

    /// A process is gone: its fds may be reused by another process with the same pid later.
    pub fn forget(&mut self, tgid: u32) {
        self.cache.retain(|(t, _), _| *t != tgid);
    }
}

impl crate::reaper::PerProcess for LocalPorts {
    fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.cache.keys().map(|k| k.0).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn forget_process(&mut self, pid: u32) -> bool {
        let before = self.cache.len();
        self.forget(pid);
        self.cache.len() != before
    }
}

/// slowtrace's own CPU time and resident memory, for its metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_secs: f64,
    pub rss_bytes: u64,
}

/// CPU from /proc/self/stat (utime, stime in clock ticks), memory from /proc/self/status's
/// VmRSS: stat's rss field is the kernel's per-CPU approximation, which read 11 MB for a
/// process whose VmRSS was 23.5 MB (30-minute soak). Zeros if unreadable.
pub fn self_usage() -> Usage {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Usage::default();
    };
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Usage::default();
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15, rss 24.
    let field = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
        )
    };
    let vm_rss_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| status_kb(&s, "VmRSS:"));
    Usage {
        cpu_secs: (field(14) + field(15)) as f64 / tick,
        rss_bytes: vm_rss_kb.map_or(field(24) * page, |kb| kb * 1024),
    }
}

/// A `Key:   N kB` line of /proc/PID/status, in kB.
fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_give_their_kilobytes() {
        let s = "Name:\tslowtrace\nVmHWM:\t   30000 kB\nVmRSS:\t   24064 kB\n";
        assert_eq!(status_kb(s, "VmRSS:"), Some(24064));
        assert_eq!(status_kb(s, "VmSwap:"), None);
    }

    #[test]
    fn device_numbers_in_the_kernels_encoding() {
        assert_eq!(kernel_dev(4), 4);
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(0, 300)), 300);
        assert_eq!(foreign_pid_namespace(std::process::id()), None);
        assert!(!foreign_mount_namespace(std::process::id()));
    }

    #[test]
    fn parses_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F40 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 123457 1 0000000000000000 100 0 0 10 0\n";
        let v: Vec<(u64, u16)> = parse_listeners(text).collect();
        assert_eq!(v, [(123456, 8000)]);
    }

    #[test]
    fn finds_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = descendants(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
    }

    #[test]
    fn local_ports_forget_one_process() {
        use crate::reaper::PerProcess as _;
        let mut p = LocalPorts::default();
        // No such fds: looked up (and remembered as unknown) all the same.
        let (a, b) = (std::process::id(), u32::MAX - 1);
        assert_eq!(p.get(a, 1000), None);
        assert_eq!(p.get(b, 3), None);
        assert_eq!(p.pids(), [a, b]);
        assert!(p.forget_process(b));
        assert_eq!(p.pids(), [a]);
        assert!(!p.forget_process(b));
    }

    #[test]
    fn own_usage_is_read() {
        let u = self_usage();
        assert!(u.rss_bytes > 1 << 20, "{u:?}");
        assert!(u.cpu_secs >= 0.0);
    }

    #[test]
    fn this_process_is_alive() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX - 1));
    }
}
