//! cgroup v2 as targets and as labels: `--cgroup PATH`, `--container ID`, and the cgroup (and
//! container id) each request's process runs in.
//!
//! A cgroup is named by its directory under the v2 mount; its id, which the kernel programs
//! compare with `bpf_get_current_cgroup_id()` and `cgroup_attach_task`'s `dst_id`, is that
//! directory's inode number.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// `statfs` magic of a cgroup v2 file system.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Directories looked at when walking a hierarchy: a bound on a huge or looping tree.
const MAX_DIRS: usize = 4096;
/// How deep `--container` looks under the v2 mount (kubepods.slice/…/cri-containerd-ID.scope
/// is 4-5 deep).
const MAX_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup v2 is not mounted (no cgroup2 line in /proc/self/mounts): {0} needs it")]
    NoV2(&'static str),
    #[error("--cgroup {0}: no such cgroup v2 directory")]
    NotFound(String),
    #[error("--cgroup {path}: not on the cgroup v2 hierarchy mounted at {mount}")]
    NotV2 { path: String, mount: String },
    #[error("--container {0}: no cgroup v2 directory or process cgroup contains this id")]
    ContainerNotFound(String),
    #[error(
        "--container {id}: ambiguous, {n} cgroups match ({first}, {second}…); give more of the id"
    )]
    Ambiguous {
        id: String,
        n: usize,
        first: String,
        second: String,
    },
    #[error("--container {0:?}: give at least 4 characters of the container id")]
    ContainerIdTooShort(String),
}

/// A target cgroup, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// Its directory (under the v2 mount).
    pub dir: PathBuf,
    /// Its path as /proc/PID/cgroup says it (relative to the v2 root, starting with `/`).
    pub path: String,
    /// Its id: the directory's inode number.
    pub id: u64,
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// a hybrid host).
pub fn v2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    v2_mount_in(&mounts)
}

fn v2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(at)))
    })
}

/// /proc/self/mounts writes space, tab, newline and backslash as octal escapes.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_cgroup2(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

fn at(mount: &Path, dir: PathBuf) -> Option<Cgroup> {
    let rel = dir.strip_prefix(mount).ok()?;
    let path = format!("/{}", rel.to_string_lossy());
    let id = fs::metadata(&dir).ok()?.ino();
    Some(Cgroup { dir, path, id })
}

/// `--cgroup PATH`: a directory under the v2 mount, or a path as /proc/PID/cgroup gives it
/// (relative to the v2 root).
pub fn resolve(arg: &str) -> Result<Cgroup, CgroupError> {
    let mount = v2_mount().ok_or(CgroupError::NoV2("--cgroup"))?;
    let given = Path::new(arg);
    let dir = if given.is_absolute() && given.starts_with(&mount) {
        given.to_owned()
    } else {
        let under = mount.join(arg.trim_start_matches('/'));
        if under.is_dir() || !given.is_dir() {
            under
        } else {
            given.to_owned()
        }
    };
    let dir = dir
        .canonicalize()
        .map_err(|_| CgroupError::NotFound(arg.to_owned()))?;
    if !dir.is_dir() {
        return Err(CgroupError::NotFound(arg.to_owned()));
    }
    if !is_cgroup2(&dir) || !dir.starts_with(&mount) {
        return Err(CgroupError::NotV2 {
            path: arg.to_owned(),
            mount: mount.display().to_string(),
        });
    }
    at(&mount, dir).ok_or_else(|| CgroupError::NotFound(arg.to_owned()))
}

/// `--container ID`: the cgroup whose directory name contains the id (`docker-ID.scope`,
/// `libpod-ID.scope`, `cri-containerd-ID.scope`, `docker/ID`…), found under the v2 mount, or
/// else in the cgroup of a process (/proc/*/cgroup). A match inside another match (libpod's
/// `libpod-ID.scope/container`) is the same container: the outermost one is taken.
pub fn find_container(id: &str) -> Result<Cgroup, CgroupError> {
    let id = id.trim();
    if id.len() < 4 {
        return Err(CgroupError::ContainerIdTooShort(id.to_owned()));
    }
    let mount = v2_mount().ok_or(CgroupError::NoV2("--container"))?;
    let mut found: Vec<PathBuf> = walk(&mount, MAX_DEPTH)
        .into_iter()
        .filter(|d| d != &mount && name_has(d, id))
        .collect();
    if found.is_empty() {
        // Not under our mount (another cgroup namespace's view?): ask the processes.
        let mut paths = HashSet::new();
        for pid in all_pids() {
            if let Some(p) = of_process(pid).filter(|p| p.contains(id)) {
                paths.insert(p);
            }
        }
        found = paths
            .into_iter()
            .filter_map(|p| outermost_with(&p, id))
            .map(|p| mount.join(p.trim_start_matches('/')))
            .filter(|d| d.is_dir())
            .collect();
    }
    found.sort();
    found.dedup();
    let outer: Vec<&PathBuf> = found
        .iter()
        .filter(|d| !found.iter().any(|o| o != *d && d.starts_with(o)))
        .collect();
    match outer.as_slice() {
        [] => Err(CgroupError::ContainerNotFound(id.to_owned())),
        [one] => {
            at(&mount, (*one).clone()).ok_or_else(|| CgroupError::ContainerNotFound(id.into()))
        }
        [a, b, ..] => Err(CgroupError::Ambiguous {
            id: id.to_owned(),
            n: outer.len(),
            first: a.display().to_string(),
            second: b.display().to_string(),
        }),
    }
}

fn name_has(dir: &Path, id: &str) -> bool {
    dir.file_name()
        .is_some_and(|n| n.to_string_lossy().contains(id))
}

/// The shortest prefix of `path` whose last component contains `id`.
fn outermost_with(path: &str, id: &str) -> Option<String> {
    let mut out = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        out.push('/');
        out.push_str(part);
        if part.contains(id) {
            return Some(out);
        }
    }
    None
}

/// `dir` and its descendants, breadth first, at most `MAX_DIRS`.
pub fn walk(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut level = vec![dir.to_owned()];
    for _ in 0..depth {
        let mut next = Vec::new();
        for d in &level {
            let Ok(entries) = fs::read_dir(d) else {
                continue;
            };
            for e in entries.flatten() {
                if out.len() + next.len() >= MAX_DIRS {
                    break;
                }
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    next.push(e.path());
                }
            }
        }
        if next.is_empty() {
            break;
        }
        out.extend(next.iter().cloned());
        level = next;
    }
    out
}

/// The ids of `cg` and every cgroup below it now.
pub fn subtree_ids(cg: &Cgroup) -> Vec<u64> {
    walk(&cg.dir, usize::MAX)
        .iter()
        .filter_map(|d| fs::metadata(d).ok().map(|m| m.ino()))
        .collect()
}

/// The processes in `cg` and the cgroups below it now.
pub fn procs(cg: &Cgroup) -> Vec<u32> {
    let mut out = Vec::new();
    for d in walk(&cg.dir, usize::MAX) {
        let text = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup v2 path of `pid` (`0::/path` in /proc/PID/cgroup), as seen from our cgroup
/// namespace.
pub fn of_process(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    v2_path(&text)
}

fn v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_owned())
}

/// The container id in a cgroup path: the last run of 64 hex digits in it (docker, podman,
/// containerd and CRI-O all name a container's cgroup after its 64-digit id).
pub fn container_id(path: &str) -> Option<&str> {
    let b = path.as_bytes();
    let mut best = None;
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_hexdigit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_hexdigit() {
                i += 1;
            }
            if i - start == 64 {
                best = Some(&path[start..i]);
            }
        } else {
            i += 1;
        }
    }
    best
}

/// What requests say about where their process runs: its cgroup v2 path and the container id
/// in it. Read once per process (/proc/PID/cgroup), dropped when the process exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub cgroup: String,
    pub container: Option<String>,
}

impl Label {
    /// None for the root cgroup: it says nothing about where a process runs.
    pub fn from_path(path: &str) -> Option<Label> {
        (path != "/" && !path.is_empty()).then(|| Label {
            cgroup: path.to_owned(),
            container: container_id(path).map(str::to_owned),
        })
    }
}

/// The labels of the processes seen, per pid.
#[derive(Debug, Default)]
pub struct Labels(std::collections::HashMap<u32, Option<std::sync::Arc<Label>>>);

impl Labels {
    pub fn get(&mut self, pid: u32) -> Option<std::sync::Arc<Label>> {
        self.0
            .entry(pid)
            .or_insert_with(|| {
                of_process(pid)
                    .and_then(|p| Label::from_path(&p))
                    .map(std::sync::Arc::new)
            })
            .clone()
    }
}

impl crate::reaper::PerProcess for Labels {
    fn pids(&self) -> Vec<u32> {
        self.0.keys().copied().collect()
    }

    fn forget_process(&mut self, pid: u32) -> bool {
        self.0.remove(&pid).is_some()
    }
}

/// `--cgroup`'s user-space half: the kernel makes a process a target when it moves into a
/// target cgroup or execs there; this finds what it cannot see — cgroups created below a
/// target after attach (their ids go to the kernel), and any process in them not yet traced
/// (one that joined before its cgroup id was known) — by walking the target trees.
#[derive(Debug)]
pub struct Watch {
    cgroups: Vec<Cgroup>,
    ids: HashSet<u64>,
    /// The processes in the targets at the last poll.
    pids: HashSet<u32>,
    last: Option<std::time::Instant>,
}

/// How often the agent walks the target trees: the kernel marks arrivals at once, this is the
/// backstop, and a tree can be large.
pub const POLL_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What a poll found: cgroup ids to add to the kernel's map, and the processes in the targets
/// that were not there at the last poll.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub new_ids: Vec<u64>,
    pub new_pids: Vec<u32>,
}

impl Watch {
    pub fn new(cgroups: Vec<Cgroup>) -> Self {
        Self {
            cgroups,
            ids: HashSet::new(),
            pids: HashSet::new(),
            last: None,
        }
    }

    /// `poll`, unless the last one was less than `POLL_EVERY` ago.
    pub fn poll_due(&mut self) -> Option<Found> {
        if self.last.is_some_and(|t| t.elapsed() < POLL_EVERY) {
            return None;
        }
        Some(self.poll())
    }

    pub fn is_empty(&self) -> bool {
        self.cgroups.is_empty()
    }

    /// Walk the target trees now.
    pub fn poll(&mut self) -> Found {
        self.last = Some(std::time::Instant::now());
        let mut found = Found::default();
        let mut now = HashSet::new();
        for cg in &self.cgroups {
            for id in subtree_ids(cg) {
                if self.ids.insert(id) {
                    found.new_ids.push(id);
                }
            }
            now.extend(procs(cg));
        }
        found.new_pids = now.difference(&self.pids).copied().collect();
        found.new_pids.sort_unstable();
        self.pids = now;
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3c1a0e9b8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";

    #[test]
    fn finds_the_v2_mount_on_hybrid_and_unified_hosts() {
        let hybrid =
            "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            v2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            v2_mount_in("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            v2_mount_in("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"),
            None
        );
        assert_eq!(unescape_mount(r"/mnt/a\040b"), "/mnt/a b");
    }

    #[test]
    fn reads_the_v2_line_of_proc_cgroup() {
        let text = "9:name=systemd:/\n8:pids:/x\n0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            v2_path(text).as_deref(),
            Some("/system.slice/docker-abc.scope")
        );
        assert_eq!(v2_path("1:cpu:/\n"), None);
    }

    #[test]
    fn container_ids_of_the_usual_runtimes() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{ID}.scope"),
            format!("/docker/{ID}"),
        ] {
            assert_eq!(container_id(&path), Some(ID), "{path}");
        }
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-3.scope"),
            None
        );
        // 63 or 65 digits are not an id.
        assert_eq!(container_id(&format!("/x/{}", &ID[1..])), None);
        assert_eq!(container_id(&format!("/x/{ID}a")), None);
    }

    #[test]
    fn the_outermost_component_naming_the_container() {
        assert_eq!(
            outermost_with("/machine.slice/libpod-abcd1234.scope/container", "abcd").as_deref(),
            Some("/machine.slice/libpod-abcd1234.scope")
        );
        assert_eq!(outermost_with("/a/b", "zz"), None);
    }

    #[test]
    fn labels_name_the_cgroup_and_the_container() {
        assert_eq!(Label::from_path("/"), None);
        let l = Label::from_path(&format!("/system.slice/docker-{ID}.scope")).unwrap();
        assert_eq!(l.container.as_deref(), Some(ID));
        let l = Label::from_path("/slowtrace-test").unwrap();
        assert_eq!((l.cgroup.as_str(), l.container), ("/slowtrace-test", None));
    }

    /// The watch on a tree shaped like cgroupfs (directories with cgroup.procs files).
    #[test]
    fn the_watch_reports_new_cgroups_and_new_processes_once() {
        let root = tempfile::tempdir().unwrap();
        let top = root.path().join("app.scope");
        let sub = top.join("worker");
        fs::create_dir_all(&sub).unwrap();
        fs::write(top.join("cgroup.procs"), "10\n11\n").unwrap();
        fs::write(sub.join("cgroup.procs"), "12\n").unwrap();
        let cg = Cgroup {
            dir: top.clone(),
            path: "/app.scope".into(),
            id: fs::metadata(&top).unwrap().ino(),
        };
        let mut w = Watch::new(vec![cg.clone()]);
        let first = w.poll();
        let mut ids = first.new_ids.clone();
        ids.sort_unstable();
        let mut want = vec![cg.id, fs::metadata(&sub).unwrap().ino()];
        want.sort_unstable();
        assert_eq!(ids, want);
        assert_eq!(first.new_pids, vec![10, 11, 12]);
        assert_eq!(w.poll(), Found::default(), "nothing new");
        assert!(w.poll_due().is_none(), "polled less than a second ago");
        fs::write(sub.join("cgroup.procs"), "12\n13\n").unwrap();
        fs::create_dir(sub.join("late")).unwrap();
        let later = w.poll();
        assert_eq!(later.new_pids, vec![13]);
        assert_eq!(
            later.new_ids,
            vec![fs::metadata(sub.join("late")).unwrap().ino()]
        );
    }

    #[test]
    fn a_short_container_id_is_refused() {
        assert!(matches!(
            find_container("ab"),
            Err(CgroupError::ContainerIdTooShort(_))
        ));
    }

    #[test]
    fn our_own_cgroup_resolves_to_itself() {
        let Some(mount) = v2_mount() else {
            eprintln!("skipped: no cgroup v2 here");
            return;
        };
        let Some(own) = of_process(std::process::id()) else {
            return;
        };
        let cg = resolve(&own).unwrap();
        assert_eq!(cg.path, own);
        assert!(cg.dir.starts_with(&mount));
        assert!(subtree_ids(&cg).contains(&cg.id));
        assert!(matches!(
            resolve("/no/such/cgroup-slowtrace"),
            Err(CgroupError::NotFound(_))
        ));
    }
}
