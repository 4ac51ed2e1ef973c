//! Indices of the per-CPU `COUNTERS` array: everything the kernel side drops or fails is counted,
//! and user space sums the CPUs and shows it.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Request records written to the ring buffer.
    Events = 0,
    /// Request records lost because the ring buffer was full.
    RingFull = 1,
    /// Accepted connections not tracked because the connection map was full.
    ConnMapFull = 2,
    /// Syscall arguments not stashed because the per-thread map was full.
    ArgsMapFull = 3,
    /// Request/response prefixes that could not be read from user memory.
    PrefixFault = 4,
    /// Tasks (processes and threads) added because a traced process created them.
    Forks = 5,
    /// Processes added because they bound a watched port.
    PortBinds = 6,
    /// Profiling samples written (on-CPU and off-CPU).
    Samples = 7,
    /// Profiling samples lost: the sample ring buffer was full.
    SampleRingFull = 8,
    /// Off-CPU intervals not recorded: the per-thread pending map was full.
    OffCpuMapFull = 9,
    /// Downstream (connected) sockets followed.
    DownstreamConns = 10,
    /// Downstream exchanges recorded.
    DownstreamCalls = 11,
    /// Downstream exchanges lost: ring buffer full.
    DownstreamRingFull = 12,
    /// Downstream sockets not followed: map full.
    DownstreamMapFull = 13,
    /// Socket I/O of a target from a syscall whose buffers cannot be located (io_uring,
    /// kernel-internal callers): not traced.
    SockOtherSyscall = 14,
    /// Stale connections found under a reused fd number (the close was not seen).
    FdReused = 15,
}

impl Counter {
    pub const COUNT: u32 = 16;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Self::Events,
        Self::RingFull,
        Self::ConnMapFull,
        Self::ArgsMapFull,
        Self::PrefixFault,
        Self::Forks,
        Self::PortBinds,
        Self::Samples,
        Self::SampleRingFull,
        Self::OffCpuMapFull,
        Self::DownstreamConns,
        Self::DownstreamCalls,
        Self::DownstreamRingFull,
        Self::DownstreamMapFull,
        Self::SockOtherSyscall,
        Self::FdReused,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::RingFull => "ring_full_drops",
            Self::ConnMapFull => "conn_map_full",
            Self::ArgsMapFull => "args_map_full",
            Self::PrefixFault => "prefix_read_faults",
            Self::Forks => "tasks_followed",
            Self::PortBinds => "port_binds",
            Self::Samples => "profile_samples",
            Self::SampleRingFull => "sample_ring_full_drops",
            Self::OffCpuMapFull => "off_cpu_map_full",
            Self::DownstreamConns => "downstream_connections",
            Self::DownstreamCalls => "downstream_calls",
            Self::DownstreamRingFull => "downstream_ring_full_drops",
            Self::DownstreamMapFull => "downstream_map_full",
            Self::SockOtherSyscall => "socket_io_untraceable_syscall",
            Self::FdReused => "fd_reused_without_close",
        }
    }
}
