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
}

impl Counter {
    pub const COUNT: u32 = 7;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Self::Events,
        Self::RingFull,
        Self::ConnMapFull,
        Self::ArgsMapFull,
        Self::PrefixFault,
        Self::Forks,
        Self::PortBinds,
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
        }
    }
}
