//! Where a request's time goes: the serving thread's on-CPU segments, its waits for a CPU, and
//! its blocked time by reason (from the syscall it blocked in), accumulated by the scheduler
//! tracepoints into `RequestRecord::sched`.

/// Completed on-CPU segments (the one still running at the end is added by user space).
pub const ON_CPU: usize = 0;
/// Runnable, waiting for a CPU (preempted, or woken and not yet running).
pub const RUNQUEUE: usize = 1;
/// Blocked on a downstream socket (a call to a database, cache or service).
pub const DOWNSTREAM: usize = 2;
/// Blocked uninterruptibly (disk and file I/O).
pub const DISK: usize = 3;
/// Blocked on a lock: futex, flock, fcntl(F_SETLKW).
pub const LOCK: usize = 4;
/// nanosleep / clock_nanosleep.
pub const SLEEP: usize = 5;
/// Blocked for any other reason (poll on a non-downstream fd, pipes, the client...).
pub const OTHER: usize = 6;
/// Number of times the thread left the CPU (a count, not ns).
pub const SWITCHES: usize = 7;
pub const PARTS: usize = 8;

/// Per-thread scheduler bookkeeping (map `THREADS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSched {
    /// The syscall the thread is in (or last entered) and its first two arguments.
    pub nr: i64,
    pub arg0: u64,
    pub arg1: u64,
    /// When it left the CPU inside a request (0: it is running, or not in a request).
    pub out_ts: u64,
    /// When it was woken after `out_ts` (0: not yet).
    pub wake_ts: u64,
    /// The request the interval is charged to.
    pub conn_id: u64,
    pub seq: u32,
    pub fd: u32,
    /// Index into `sched` the blocked part goes to.
    pub reason: u32,
    /// Non-zero: a downstream call was sent and its answer has not been read yet.
    pub ds_waiting: u32,
    pub tgid: u32,
    pub _pad: u32,
    /// User registers (instruction, stack and frame pointer) saved when the thread left the CPU
    /// inside a request (`out_ts`), from its `pt_regs`: while it stays off, its user stack
    /// holds still, so a capture can copy and unwind it from these (0: not known; the classic
    /// sched tracepoint cannot read them).
    pub user_ip: u64,
    pub user_sp: u64,
    pub user_bp: u64,
}
