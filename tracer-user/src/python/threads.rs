//! Which `PyThreadState` belongs to a kernel thread.
//!
//! CPython 3.11+ records `native_thread_id` (gettid() of the thread that created the state) in
//! each thread state. That is the TID in the target's PID namespace; eBPF and our /proc give host
//! TIDs, so inside a container the two differ and /proc/PID/task/TID/status `NSpid` maps them.
//!
//! 3.9/3.10 record only `thread_id`, the `pthread_t`: the address of glibc's `struct pthread`,
//! whose `tid` field holds the same namespace TID. One more read per thread state gets it.

use std::{collections::HashMap, io::Read as _};

use super::{
    layout::{Layout, ThreadId},
    memory::{AddressSpace, Fields as _, Read},
    PyError,
};

/// Bounds on the lists we walk: a torn `next` pointer must not keep us looping.
const MAX_INTERPRETERS: usize = 64;
const MAX_THREADS: usize = 16 * 1024;

pub struct Threads {
    pid: u32,
    /// We and the target share a PID namespace: host TID == `native_thread_id`.
    same_ns: bool,
    /// Host TID → namespace TID, for a target in another namespace.
    ns_tids: HashMap<u32, u32>,
    /// Namespace TID → thread state address (and for 3.9/3.10 its `pthread_t`), from the last
    /// scan.
    tstates: HashMap<u32, (u64, u64)>,
    /// System calls spent on /proc reads (3 per file: open, read, close).
    proc_syscalls: u32,
}

/// The last value of an `NSpid:` line: the ID in the innermost namespace. `None` if absent
/// (kernels before 4.1).
pub fn nspid(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|v| v.parse().ok()).collect()
}

impl Threads {
    pub fn new(pid: u32) -> Result<Threads, PyError> {
        let mut t = Threads::same_namespace(pid);
        let status = t.read_status(&format!("/proc/{pid}/status"))?;
        // One entry: the target's namespace is ours (as seen by the procfs we read).
        t.same_ns = nspid(&status).is_none_or(|ids| ids.len() <= 1);
        Ok(t)
    }

    /// For a target known to share our PID namespace (and for tests: never reads /proc).
    pub fn same_namespace(pid: u32) -> Threads {
        Threads {
            pid,
            same_ns: true,
            ns_tids: HashMap::new(),
            tstates: HashMap::new(),
            proc_syscalls: 0,
        }
    }

    pub fn proc_syscalls(&self) -> u32 {
        self.proc_syscalls
    }

    /// A /proc status file, in one read: status files are far below 4 KiB.
    fn read_status(&mut self, path: &str) -> Result<String, PyError> {
        self.proc_syscalls += 3;
        let mut buf = Vec::with_capacity(4096);
        std::fs::File::open(path)
            .and_then(|f| f.take(64 * 1024).read_to_end(&mut buf))
            .map_err(|e| PyError::from_proc(self.pid, "status", e))?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// The TID the target itself sees for host thread `tid`.
    fn ns_tid(&mut self, tid: u32) -> Result<u32, PyError> {
        if self.same_ns {
            return Ok(tid);
        }
        if let Some(&t) = self.ns_tids.get(&tid) {
            return Ok(t);
        }
        let pid = self.pid;
        let status = self
            .read_status(&format!("/proc/{pid}/task/{tid}/status"))
            .map_err(|e| match e {
                PyError::ProcessGone(_) => PyError::NoSuchThread { pid, tid },
                e => e,
            })?;
        let ns = nspid(&status)
            .and_then(|ids| ids.last().copied())
            .unwrap_or(tid);
        self.ns_tids.insert(tid, ns);
        Ok(ns)
    }

    /// Forget what we know about host thread `tid` (it may have exited and its TID been reused).
    pub fn forget(&mut self, tid: u32) {
        self.ns_tids.remove(&tid);
    }

    /// The thread state of host thread `tid` and its first `layout.tstate_span()` bytes, or
    /// `None` if no thread state is that thread's.
    pub fn find(
        &mut self,
        mem: &mut dyn AddressSpace,
        layout: &Layout,
        runtime: u64,
        tid: u32,
    ) -> Result<Option<(u64, Vec<u8>)>, PyError> {
        let ns_tid = self.ns_tid(tid)?;
        if let Some(&(addr, pthread)) = self.tstates.get(&ns_tid) {
            if let Some(buf) = read_tstate(mem, layout, addr, pthread, ns_tid)? {
                return Ok(Some((addr, buf)));
            }
        }
        // Unknown, or the state at that address now belongs to someone else: rescan.
        self.scan(mem, layout, runtime)?;
        match self.tstates.get(&ns_tid) {
            Some(&(addr, pthread)) => {
                Ok(read_tstate(mem, layout, addr, pthread, ns_tid)?.map(|buf| (addr, buf)))
            }
            None => match self.forked_without_hook(mem, layout, ns_tid)? {
                Some(found) => Ok(Some(found)),
                None => {
                    self.forget(tid);
                    Ok(None)
                }
            },
        }
    }

    /// A process forked without CPython's after-fork hook (uWSGI's workers, unless
    /// `--py-call-osafterfork`) keeps the parent's thread id in its one thread state, so its
    /// main thread has no state of its own id. Then the single state whose id names no live
    /// thread of this process is the main thread's (py-spy shows such a worker's frames under
    /// the parent's pid for the same reason). Only for the main thread, only when exactly one
    /// state is unclaimed, only for `native_thread_id` layouts (3.9/3.10 find threads through
    /// the pthread, which fork renews).
    fn forked_without_hook(
        &mut self,
        mem: &mut dyn AddressSpace,
        layout: &Layout,
        ns_tid: u32,
    ) -> Result<Option<(u64, Vec<u8>)>, PyError> {
        if !self.same_ns || ns_tid != self.pid || layout.thread_id != ThreadId::Native {
            return Ok(None);
        }
        self.proc_syscalls += 3;
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return Ok(None);
        };
        let live: Vec<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        let mut orphans = self.tstates.iter().filter(|(id, _)| !live.contains(id));
        let (Some((_, &(addr, _))), None) = (orphans.next(), orphans.next()) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; layout.tstate_span() as usize];
        let mut r = [Read::new(addr, &mut buf)];
        mem.read_batch(&mut r)?;
        Ok(r[0].complete().then_some((addr, buf)))
    }

    /// Walk every interpreter's thread list and record `native_thread_id → state`.
    fn scan(
        &mut self,
        mem: &mut dyn AddressSpace,
        layout: &Layout,
        runtime: u64,
    ) -> Result<(), PyError> {
        self.tstates.clear();
        // Addresses from the target are only numbers to read at: wrapping, never overflowing.
        let mut interp = mem.read_u64(runtime.wrapping_add(layout.runtime_interpreters_head))?;
        let mut interps = 0;
        let mut threads = 0;
        while interp != 0 && interps < MAX_INTERPRETERS {
            interps += 1;
            let (mut next_interp, mut head) = ([0u8; 8], [0u8; 8]);
            let mut reads = [
                Read::new(interp.wrapping_add(layout.interp_next), &mut next_interp),
                Read::new(interp.wrapping_add(layout.interp_threads_head), &mut head),
            ];
            mem.read_batch(&mut reads)?;
            if !reads.iter().all(Read::complete) {
                return Err(PyError::Torn("interpreter state unreadable"));
            }
            let mut ts = u64::from_le_bytes(head);
            while ts != 0 {
                threads += 1;
                if threads > MAX_THREADS {
                    return Err(PyError::Torn("thread list does not end"));
                }
                let mut buf = vec![0u8; layout.tstate_span() as usize];
                mem.read_exact(ts, &mut buf)
                    .map_err(|_| PyError::Torn("thread state unreadable"))?;
                let id = buf
                    .u64_at(layout.tstate_native_thread_id as usize)
                    .unwrap_or(0);
                let native = match layout.thread_id {
                    ThreadId::Native => Some(id),
                    ThreadId::Pthread { tid } => {
                        let mut t = [0u8; 4];
                        let mut r = [Read::new(id.wrapping_add(tid), &mut t)];
                        mem.read_batch(&mut r)?;
                        // A thread state being set up or torn down has no pthread yet.
                        r[0].complete().then(|| u64::from(u32::from_le_bytes(t)))
                    }
                };
                if let Some(native) = native.and_then(|n| u32::try_from(n).ok()) {
                    self.tstates.entry(native).or_insert((ts, id));
                }
                ts = buf.u64_at(layout.tstate_next as usize).unwrap_or(0);
            }
            interp = u64::from_le_bytes(next_interp);
        }
        Ok(())
    }
}

/// Read a thread state and check it is still `ns_tid`'s (3.9/3.10: its `pthread_t` is still
/// `pthread` and that thread's TID `ns_tid`, read in the same system call).
fn read_tstate(
    mem: &mut dyn AddressSpace,
    layout: &Layout,
    addr: u64,
    pthread: u64,
    ns_tid: u32,
) -> Result<Option<Vec<u8>>, PyError> {
    let mut buf = vec![0u8; layout.tstate_span() as usize];
    let mut t = [0u8; 4];
    let complete = match layout.thread_id {
        ThreadId::Native => {
            let mut r = [Read::new(addr, &mut buf)];
            mem.read_batch(&mut r)?;
            r[0].complete()
        }
        ThreadId::Pthread { tid } => {
            let mut r = [
                Read::new(addr, &mut buf),
                Read::new(pthread.wrapping_add(tid), &mut t),
            ];
            mem.read_batch(&mut r)?;
            r.iter().all(Read::complete)
        }
    };
    if !complete {
        // Freed and unmapped: the thread is gone.
        return Ok(None);
    }
    let id = buf.u64_at(layout.tstate_native_thread_id as usize);
    let ours = match layout.thread_id {
        ThreadId::Native => id == Some(u64::from(ns_tid)),
        ThreadId::Pthread { .. } => id == Some(pthread) && u32::from_le_bytes(t) == ns_tid,
    };
    Ok(ours.then_some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_lines() {
        let status = "Name:\tpython3\nTgid:\t4242\nNSpid:\t4242\t17\nNSsid:\t1\n";
        assert_eq!(nspid(status), Some(vec![4242, 17]));
        assert_eq!(nspid("Name:\tx\nNSpid:\t99\n"), Some(vec![99]));
        assert_eq!(nspid("Name:\tx\n"), None);
    }

    #[test]
    fn our_own_namespace() {
        let me = std::process::id();
        let mut t = Threads::new(me).unwrap();
        assert!(t.same_ns, "the test runs in its own namespace");
        assert_eq!(t.ns_tid(me).unwrap(), me);
        assert!(Threads::new(u32::MAX - 1).is_err());
    }
}
