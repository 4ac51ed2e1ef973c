//! The one stack resolver: native and kernel addresses through blazesym, the CPython processes
//! (one reader and code-object cache each) and the cutting of frames that belong to how a
//! stack was taken, shared by slow-request captures and the continuous profiler.
//!
//! blazesym's `Symbolizer` is neither Send nor Sync, and it is the memory: the kernel's symbol
//! table (/proc/kallsyms, 100k+ symbols) and the parsed DWARF of every library it touched. So
//! one thread owns the [`Resolver`] and the others hand it work as closures through [`Stacks`]:
//! the capture side runs whole captures there (a Python stack must be read with the Python
//! reader, which lives there), the profiler has batches of samples resolved and waits for them.
//! The queue is bounded; the event loop only ever `try_run`s (a full queue is a counted miss,
//! never a wait), and the profiler, which may wait, sends one batch at a time, so a capture
//! queued behind it waits for at most one batch.
//!
//! One retry policy for everything resolved here:
//! - a process found not to be Python, or that could not be looked at, is looked at again after
//!   2 s, 5 times at most (it may exec into Python, or not have mapped its runtime yet);
//! - a torn read of a live Python stack is read again at once, 3 times at most;
//! - a batch of addresses (or of code objects) that fails is retried one by one, and what still
//!   fails is shown as unknown, never costing the rest of the stack.
//!
//! State of exited processes is swept here every `SWEEP_EVERY` (counted as the stack
//! resolver's in the memory summary).

mod cut;
mod python;
mod resolve;
mod symbolizer;

use std::{
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
        Arc,
    },
    thread::JoinHandle,
};

pub use cut::Taken;
pub use python::KernelTable;
pub use resolve::Resolver;

use crate::reaper::{self, Sweep, STATS, SWEEP_EVERY};

/// Work waiting for the resolver thread at most. Each is a capture or a profiler batch.
const QUEUE: usize = 256;

type Task = Box<dyn FnOnce(&mut Resolver) + Send>;

/// A handle on the resolver thread; clones share it. The thread ends (and is joined) when the
/// last handle is dropped, once the work queued before is done.
#[derive(Clone)]
pub struct Stacks {
    // Dropped before `thread`: the last handle disconnects the queue, then joins.
    tx: SyncSender<Task>,
    #[expect(
        dead_code,
        reason = "held for its Drop: the last handle joins the thread"
    )]
    thread: Arc<Joined>,
}

impl Stacks {
    /// Start the resolver thread. `kernel`: the kernel walker's table of Python processes, to
    /// register the ones found (when profiling).
    pub fn spawn(kernel: Option<KernelTable>) -> std::io::Result<Stacks> {
        let (tx, rx) = mpsc::sync_channel::<Task>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("stacks".into())
            .spawn(move || serve(kernel, &rx))?;
        Ok(Stacks {
            tx,
            thread: Arc::new(Joined(Some(thread))),
        })
    }

    /// Run `task` on the resolver thread, unless its queue is full: false then (not run; the
    /// caller counts it). Never waits.
    pub fn try_run(&self, task: impl FnOnce(&mut Resolver) + Send + 'static) -> bool {
        self.tx.try_send(Box::new(task)).is_ok()
    }

    /// Run `f` on the resolver thread and wait for its result (None: the thread is gone). Waits
    /// for room in the queue and for the work ahead: for threads that may wait, never the
    /// event loop.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Resolver) -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, result) = mpsc::sync_channel(1);
        let task = move |r: &mut Resolver| {
            let _ = reply.send(f(r));
        };
        self.tx.send(Box::new(task)).ok()?;
        result.recv().ok()
    }
}

fn serve(kernel: Option<KernelTable>, rx: &Receiver<Task>) {
    let mut resolver = Resolver::new(kernel);
    let mut sweep = Sweep::new(SWEEP_EVERY);
    loop {
        let task = match rx.recv_timeout(SWEEP_EVERY) {
            Ok(task) => Some(task),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if sweep.due() {
            forget_exited(&mut resolver, &[], true);
            log::debug!("stack resolver memory: {}", resolver.sizes());
        }
        if let Some(task) = task {
            task(&mut resolver);
        }
    }
}

/// Drop what is held for `dead` and, when `sweep`, for every process that exited; counted.
pub fn forget_exited(resolver: &mut Resolver, dead: &[u32], sweep: bool) {
    let gone = reaper::reap(&mut [resolver], dead, sweep, crate::procfs::alive);
    reaper::add(&STATS.forgotten_stacks, gone.len() as u64);
}

/// The resolver thread, joined when the last handle goes.
struct Joined(Option<JoinHandle<()>>);

impl Drop for Joined {
    fn drop(&mut self) {
        let Some(t) = self.0.take() else { return };
        // A task holding the last handle would otherwise wait for its own thread.
        if t.thread().id() != std::thread::current().id() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_one_thread_and_ends_with_the_last_handle() {
        let stacks = Stacks::spawn(None).unwrap();
        let other = stacks.clone();
        let here = std::thread::current().id();
        let a = stacks.call(|_| std::thread::current().id()).unwrap();
        let b = other.call(|_| std::thread::current().id()).unwrap();
        assert_eq!(a, b, "one resolver thread");
        assert_ne!(a, here);
        let (tx, rx) = mpsc::channel();
        assert!(other.try_run(move |r| tx.send(r.python_procs()).unwrap()));
        assert_eq!(rx.recv().unwrap(), 0);
        drop(stacks);
        // The thread still serves the remaining handle.
        assert_eq!(other.call(|r| r.python_procs()), Some(0));
        drop(other);
    }

    #[test]
    fn a_full_queue_refuses_instead_of_waiting() {
        let stacks = Stacks::spawn(None).unwrap();
        let (hold, held) = mpsc::channel::<()>();
        let (started, start) = mpsc::channel();
        // Keep the thread busy, then fill its queue.
        assert!(stacks.try_run(move |_| {
            started.send(()).unwrap();
            let _ = held.recv();
        }));
        start.recv().unwrap();
        let queued = (0..QUEUE + 10).filter(|_| stacks.try_run(|_| {})).count();
        assert_eq!(queued, QUEUE);
        drop(hold);
    }
}
