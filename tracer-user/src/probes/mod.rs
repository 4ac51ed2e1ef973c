//! The kernel side as user space sees it: preflight checks, loading, attaching, and the maps.

pub mod btf;
pub mod kernel;
pub mod preflight;
pub mod tracefs;

use std::{collections::HashMap as StdHashMap, path::Path};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        PerfEvent, RawTracePoint, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{
    target, ConnKey, ConnState, Counter, HandlerStack, SignalNote, TracepointOffsets,
};

/// On-CPU sampling rate for watched (slow-request) threads when profiling is off.
const CAPTURE_HZ: u64 = 99;

/// What the profiler wants from the kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProfileSettings {
    /// On-CPU samples of every target thread at this rate (0: off).
    pub sample_hz: u64,
    /// Off-CPU records of threads serving a request (the wall-clock profile).
    pub off_cpu: bool,
}

/// Maps of the profiler.
pub struct ProfileMaps {
    pub samples: RingBuf<MapData>,
    pub py_procs: HashMap<MapData, u32, tracer_common::PyProcLayout>,
    /// Downstream exchanges (ring `DS_EVENTS`).
    pub downstream: RingBuf<MapData>,
}

/// Maps of the stack-capture programs, handed to the capture side.
pub struct CaptureMaps {
    pub watch: HashMap<MapData, u32, u8>,
    /// What the capture worker reads, on its own thread.
    pub stack_maps: crate::capture::worker::StackMaps,
    pub signals: HashMap<MapData, u32, SignalNote>,
    /// What could not be attached, for the user (capture degrades, tracing goes on).
    pub degraded: Vec<String>,
}

/// The compiled kernel programs, embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the eBPF programs failed: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("eBPF program {0} is missing from the embedded object")]
    MissingProgram(&'static str),
    #[error("eBPF map {0} is missing from the embedded object")]
    MissingMap(&'static str),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {name} to tracepoint {category}:{tracepoint}: {source}")]
    Attach {
        name: &'static str,
        category: &'static str,
        tracepoint: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching a uprobe ({name}) to {symbol} in {path}: {source}")]
    Uprobe {
        name: &'static str,
        symbol: String,
        path: String,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
}

/// Program → the tracepoints it attaches to, on the syscall path (the fallback for kernels
/// without the socket tracepoints or BTF). Exits first: an enter without its exit would leave
/// stashed arguments behind.
const SYSCALL_ATTACH: &[(&str, &str, &[&str])] = &[
    (
        "sys_exit_io",
        "syscalls",
        &[
            "sys_exit_read",
            "sys_exit_recvfrom",
            "sys_exit_readv",
            "sys_exit_recvmsg",
            "sys_exit_write",
            "sys_exit_sendto",
            "sys_exit_writev",
            "sys_exit_sendmsg",
            "sys_exit_sendfile64",
        ],
    ),
    (
        "sys_exit_accept",
        "syscalls",
        &["sys_exit_accept", "sys_exit_accept4"],
    ),
    ("exit_connect", "syscalls", &["sys_exit_connect"]),
    (
        "enter_accept",
        "syscalls",
        &["sys_enter_accept", "sys_enter_accept4"],
    ),
    (
        "enter_read",
        "syscalls",
        &["sys_enter_read", "sys_enter_recvfrom"],
    ),
    ("enter_readv", "syscalls", &["sys_enter_readv"]),
    ("enter_recvmsg", "syscalls", &["sys_enter_recvmsg"]),
    (
        "enter_write",
        "syscalls",
        &["sys_enter_write", "sys_enter_sendto"],
    ),
    ("enter_writev", "syscalls", &["sys_enter_writev"]),
    ("enter_sendmsg", "syscalls", &["sys_enter_sendmsg"]),
    ("enter_sendfile", "syscalls", &["sys_enter_sendfile64"]),
    ("enter_close", "syscalls", &["sys_enter_close"]),
    ("enter_bind", "syscalls", &["sys_enter_bind"]),
    ("enter_connect", "syscalls", &["sys_enter_connect"]),
];

/// The scheduler as classic tracepoints, with the waitable syscalls' entries and exits telling
/// why a thread waits: the fallback when kernel BTF is missing.
const CLASSIC_SCHED_ATTACH: &[(&str, &str, &[&str])] = &[
    ("exit_waitable", "syscalls", WAITABLE_EXITS),
    ("enter_waitable", "syscalls", WAITABLE_ENTRIES),
    ("sched_wakeup", "sched", &["sched_wakeup"]),
    ("sched_switch", "sched", &["sched_switch"]),
];

/// Always attached (rare events: a fork, an exit).
const PROCESS_ATTACH: &[(&str, &str, &[&str])] = &[
    ("sched_process_fork", "sched", &["sched_process_fork"]),
    ("sched_process_exit", "sched", &["sched_process_exit"]),
];

/// The socket path (default): raw tracepoints on the socket layer, plus TCP state changes.
const SOCK_RAW_ATTACH: &[(&str, &str)] = &[
    ("sock_recv", "sock_recv_length"),
    ("sock_send", "sock_send_length"),
    ("sock_state", "inet_sock_set_state"),
];

/// The scheduler as raw tracepoints (needs BTF for `task_struct.pid`).
const RAW_SCHED_ATTACH: &[(&str, &str)] = &[
    ("sched_switch_raw", "sched_switch"),
    ("sched_wakeup_raw", "sched_wakeup"),
];

/// Which attach path this kernel gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Socket tracepoints instead of syscall tracepoints for socket I/O.
    pub sock: bool,
    /// Raw sched tracepoints and registers instead of classic ones and waitable syscalls.
    pub raw_sched: bool,
}

impl Plan {
    /// The best this kernel allows: BTF (for struct offsets and the register helpers) and the
    /// socket tracepoints (Linux 6.3+). `SLOWTRACE_SYSCALL_PATH=1` forces the fallback (for
    /// tests and comparisons).
    pub fn detect(tracefs: &Path, btf_ok: bool) -> Plan {
        let forced = std::env::var_os("SLOWTRACE_SYSCALL_PATH").is_some_and(|v| v == "1");
        let sock_tps = tracefs.join("events/sock/sock_recv_length").is_dir()
            && tracefs.join("events/sock/sock_send_length").is_dir()
            && tracefs.join("events/sock/inet_sock_set_state").is_dir();
        Plan {
            sock: btf_ok && sock_tps && !forced,
            raw_sched: btf_ok && !forced,
        }
    }

    /// One line for the user, saying what was given up when the fallback is in use.
    pub fn describe(&self, attached: usize) -> String {
        match (self.sock, self.raw_sched) {
            (true, true) => format!(
                "socket and scheduler tracepoints ({attached} attach points; no syscall tracepoints)"
            ),
            (false, true) => format!(
                "syscall tracepoints ({attached} attach points): this kernel lacks the socket \
                 tracepoints (Linux 6.3+), so every process's syscalls pay a little while tracing"
            ),
            _ => format!(
                "syscall and classic sched tracepoints ({attached} attach points): no kernel BTF \
                 (/sys/kernel/btf/vmlinux), so every process's syscalls pay a little while tracing"
            ),
        }
    }
}

/// Syscalls a request's thread blocks in for a reason other than I/O on its sockets.
const WAITABLE_ENTRIES: &[&str] = &[
    "sys_enter_futex",
    "sys_enter_flock",
    "sys_enter_fcntl",
    "sys_enter_nanosleep",
    "sys_enter_clock_nanosleep",
    "sys_enter_poll",
    "sys_enter_ppoll",
    "sys_enter_select",
    "sys_enter_pselect6",
    "sys_enter_epoll_wait",
    "sys_enter_epoll_pwait",
    "sys_enter_epoll_pwait2",
];
const WAITABLE_EXITS: &[&str] = &[
    "sys_exit_futex",
    "sys_exit_flock",
    "sys_exit_fcntl",
    "sys_exit_nanosleep",
    "sys_exit_clock_nanosleep",
    "sys_exit_poll",
    "sys_exit_ppoll",
    "sys_exit_select",
    "sys_exit_pselect6",
    "sys_exit_epoll_wait",
    "sys_exit_epoll_pwait",
    "sys_exit_epoll_pwait2",
];

/// Loaded and attached programs with typed handles on their maps.
pub struct Probes {
    _ebpf: Ebpf,
    targets: aya::maps::Array<MapData, u8>,
    ports: HashMap<MapData, u16, u8>,
    conns: HashMap<MapData, ConnKey, ConnState>,
    counters: PerCpuArray<MapData, u64>,
    /// Handler calls, taken by the agent when `--handler` is given.
    pub handler_events: Option<RingBuf<MapData>>,
    hstack: HashMap<MapData, u32, HandlerStack>,
    served_ports: HashMap<MapData, u16, u8>,
    target_cgroups: HashMap<MapData, u64, u8>,
    links: Links,
    /// How the programs are attached, for the user.
    pub attach_mode: String,
}

impl Probes {
    /// Load the embedded object and attach every program.
    pub fn load(
        tracefs: &Path,
        offsets: TracepointOffsets,
        profile: ProfileSettings,
    ) -> Result<(Probes, RingBuf<MapData>, CaptureMaps, ProfileMaps), ProbeError> {
        let flags: u32 = u32::from(profile.sample_hz > 0) | (u32::from(profile.off_cpu) << 1);
        let kernel = match btf::Btf::from_file(Path::new(btf::VMLINUX))
            .and_then(|b| btf::kernel_offsets(&b))
        {
            Ok(k) => Some(k),
            Err(e) => {
                log::info!("kernel BTF unusable, falling back to syscall tracepoints: {e}");
                None
            }
        };
        let plan = Plan::detect(tracefs, kernel.is_some());
        let kernel = kernel.unwrap_or_default();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("TARGETS", pid_max())
            .override_global("OFFSETS", &offsets, true)
            .override_global("PROFILE_FLAGS", &flags, true)
            .override_global("KOFFS", &kernel, true)
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;
        let mut attached = 0;
        let mut tracepoints: Vec<&[(&str, &str, &[&str])]> = vec![PROCESS_ATTACH];
        let mut raw: Vec<&[(&str, &str)]> = Vec::new();
        if plan.sock {
            raw.push(SOCK_RAW_ATTACH);
        } else {
            tracepoints.push(SYSCALL_ATTACH);
        }
        if plan.raw_sched {
            raw.push(RAW_SCHED_ATTACH);
        } else {
            tracepoints.push(CLASSIC_SCHED_ATTACH);
        }
        let mut links = Links::default();
        for &(name, category, points) in tracepoints.into_iter().flatten() {
            let prog: &mut TracePoint = loaded(&mut ebpf, name)?;
            for &tracepoint in points {
                let attach_error = |source| ProbeError::Attach {
                    name,
                    category,
                    tracepoint,
                    source: Box::new(source),
                };
                let id = prog.attach(category, tracepoint).map_err(attach_error)?;
                links.keep(prog.take_link(id).map_err(attach_error)?);
                attached += 1;
            }
        }
        for &(name, tracepoint) in raw.into_iter().flatten() {
            let prog: &mut RawTracePoint = loaded(&mut ebpf, name)?;
            let attach_error = |source| ProbeError::Attach {
                name,
                category: "raw",
                tracepoint,
                source: Box::new(source),
            };
            let id = prog.attach(tracepoint).map_err(attach_error)?;
            links.keep(prog.take_link(id).map_err(attach_error)?);
            attached += 1;
        }
        let hz = if profile.sample_hz > 0 {
            profile.sample_hz
        } else {
            CAPTURE_HZ
        };
        let degraded = attach_capture(&mut ebpf, hz, &mut links);
        let profile_maps = ProfileMaps {
            samples: RingBuf::try_from(take(&mut ebpf, "SAMPLES")?).map_err(|source| {
                ProbeError::Map {
                    name: "SAMPLES",
                    source: Box::new(source),
                }
            })?,
            py_procs: typed(&mut ebpf, "PY_PROCS")?,
            downstream: RingBuf::try_from(take(&mut ebpf, "DS_EVENTS")?).map_err(|source| {
                ProbeError::Map {
                    name: "DS_EVENTS",
                    source: Box::new(source),
                }
            })?,
        };
        let capture = CaptureMaps {
            watch: typed(&mut ebpf, "WATCH")?,
            stack_maps: crate::capture::worker::StackMaps {
                on_cpu: typed(&mut ebpf, "ON_CPU")?,
                threads: Some(typed(&mut ebpf, "THREADS")?),
            },
            signals: typed(&mut ebpf, "SIGNALS")?,
            degraded,
        };
        let events =
            RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(|source| ProbeError::Map {
                name: "EVENTS",
                source: Box::new(source),
            })?;
        let probes = Probes {
            targets: typed(&mut ebpf, "TARGETS")?,
            ports: typed(&mut ebpf, "WATCH_PORTS")?,
            conns: typed(&mut ebpf, "CONNS")?,
            counters: typed(&mut ebpf, "COUNTERS")?,
            handler_events: Some(
                RingBuf::try_from(take(&mut ebpf, "HANDLER_EVENTS")?).map_err(|source| {
                    ProbeError::Map {
                        name: "HANDLER_EVENTS",
                        source: Box::new(source),
                    }
                })?,
            ),
            hstack: typed(&mut ebpf, "HSTACK")?,
            served_ports: typed(&mut ebpf, "SERVED_PORTS")?,
            target_cgroups: typed(&mut ebpf, "TARGET_CGROUPS")?,
            attach_mode: plan.describe(attached),
            links,
            _ebpf: ebpf,
        };
        Ok((probes, events, capture, profile_maps))
    }

    pub fn add_target(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.mark(tgid, target::EXPLICIT)
    }

    /// Mark `tgid` a target in the kernel, for reason `why` (`tracer_common::target`).
    fn mark(&mut self, tgid: u32, why: u8) -> Result<(), ProbeError> {
        self.targets
            .set(tgid, why, 0)
            .map_err(|source| ProbeError::Map {
                name: "TARGETS",
                source: Box::new(source),
            })
    }

    /// Connections to local TCP port `port` are served ones (requests), on the socket path.
    pub fn serve_port(&mut self, port: u16) -> Result<(), ProbeError> {
        self.served_ports
            .insert(port, 1, 0)
            .map_err(|source| ProbeError::Map {
                name: "SERVED_PORTS",
                source: Box::new(source),
            })
    }

    pub fn watch_port(&mut self, port: u16) -> Result<(), ProbeError> {
        self.ports
            .insert(port, 1, 0)
            .map_err(|source| ProbeError::Map {
                name: "WATCH_PORTS",
                source: Box::new(source),
            })
    }

    /// A snapshot of the connection map. Entries may change while we iterate; each one is a
    /// consistent copy of one value at one moment.
    pub fn conns(&self) -> Vec<(ConnKey, ConnState)> {
        self.conns.iter().filter_map(Result::ok).collect()
    }

    /// uprobe + uretprobe on every handler function, the index being the attach cookie. Any
    /// process mapping the binary hits the probe; the program keeps only targets' calls.
    pub fn attach_handlers(
        &mut self,
        handlers: &[crate::handlers::Handler],
    ) -> Result<(), ProbeError> {
        use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
        for name in ["handler_entry", "handler_return"] {
            let prog: &mut aya::programs::UProbe = loaded(&mut self._ebpf, name)?;
            for (i, h) in handlers.iter().enumerate() {
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::Symbol(&h.symbol),
                    cookie: Some(i as u64),
                };
                let uprobe_error = |source| ProbeError::Uprobe {
                    name,
                    symbol: h.name.clone(),
                    path: h.path.display().to_string(),
                    source: Box::new(source),
                };
                let id = prog
                    .attach(point, &h.path, UProbeScope::AllProcesses)
                    .map_err(uprobe_error)?;
                self.links.keep(prog.take_link(id).map_err(uprobe_error)?);
            }
        }
        Ok(())
    }

    /// `--cgroup`: attach the two programs that make later arrivals in a target cgroup targets
    /// (a process moved there, a process exec'd there). Not attached otherwise: nothing else
    /// pays for them.
    pub fn attach_cgroup_programs(&mut self) -> Result<(), ProbeError> {
        for (name, category, tracepoint) in [
            ("cgroup_attach_task", "cgroup", "cgroup_attach_task"),
            ("sched_process_exec", "sched", "sched_process_exec"),
        ] {
            let prog: &mut TracePoint = loaded(&mut self._ebpf, name)?;
            let attach_error = |source| ProbeError::Attach {
                name,
                category,
                tracepoint,
                source: Box::new(source),
            };
            let id = prog.attach(category, tracepoint).map_err(attach_error)?;
            self.links.keep(prog.take_link(id).map_err(attach_error)?);
        }
        Ok(())
    }

    /// Processes that arrive in cgroup `id` (v2) from now on are targets.
    pub fn add_target_cgroup(&mut self, id: u64) -> Result<(), ProbeError> {
        self.target_cgroups
            .insert(id, 1, 0)
            .map_err(|source| ProbeError::Map {
                name: "TARGET_CGROUPS",
                source: Box::new(source),
            })
    }

    /// Whether `tgid` is traced now (for whatever reason).
    pub fn is_target(&self, tgid: u32) -> bool {
        self.targets.get(&tgid, 0).is_ok_and(|why| why != 0)
    }

    /// Trace `tgid`, found in a target cgroup by user space.
    pub fn add_cgroup_member(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.mark(tgid, target::CGROUP)
    }

    /// Handler calls in progress: (tid, stack).
    pub fn handler_stacks(&self) -> Vec<(u32, HandlerStack)> {
        self.hstack.iter().filter_map(Result::ok).collect()
    }

    pub fn forget_conn(&mut self, key: &ConnKey) {
        // Gone already is fine: the process died and the kernel may have cleaned up.
        let _ = self.conns.remove(key);
    }

    /// Per-CPU counters summed.
    pub fn counters(&self) -> StdHashMap<Counter, u64> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let sum = self
                    .counters
                    .get(&(c as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (c, sum)
            })
            .collect()
    }
}

/// Every attachment, owned here rather than by its program so that stopping can detach them
/// all at once.
#[derive(Default)]
struct Links(Vec<Box<dyn Send>>);

impl Links {
    fn keep(&mut self, link: impl Send + 'static) {
        self.0.push(Box::new(link));
    }
}

/// Threads that detach at stop.
const DETACHERS: usize = 4;

impl Drop for Links {
    /// Each detach waits for an RCU grace period (25-30 ms each here, more under load, 3.9 s
    /// for the 54 tracepoints of an older version): from a few threads at once they share
    /// grace periods.
    fn drop(&mut self) {
        let mut groups: Vec<Vec<Box<dyn Send>>> = (0..DETACHERS).map(|_| Vec::new()).collect();
        for (i, link) in std::mem::take(&mut self.0).into_iter().enumerate() {
            groups[i % DETACHERS].push(link);
        }
        std::thread::scope(|s| {
            for group in groups {
                s.spawn(move || drop(group));
            }
        });
    }
}

/// Highest pid + 1 this kernel hands out: the size of the `TARGETS` array.
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304)
}

/// Stack capture and signal notes: each piece that fails to attach is reported and skipped, since
/// request timing does not depend on it.
fn attach_capture(ebpf: &mut Ebpf, hz: u64, links: &mut Links) -> Vec<String> {
    let mut degraded = Vec::new();
    let mut note = |what: &str, e: &dyn std::fmt::Display| {
        degraded.push(format!("{what} unavailable: {e}"));
    };
    match ebpf
        .program_mut("on_cpu_sample")
        .map(TryInto::<&mut PerfEvent>::try_into)
    {
        Some(Ok(prog)) => match prog.load() {
            Ok(()) => match aya::util::online_cpus() {
                Ok(cpus) => {
                    for cpu in cpus {
                        match prog
                            .attach(
                                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                                PerfEventScope::AllProcessesOneCpu { cpu },
                                SamplePolicy::Frequency(hz),
                                false,
                            )
                            .and_then(|id| prog.take_link(id))
                        {
                            Ok(link) => links.keep(link),
                            Err(e) => note(&format!("on-CPU stacks (perf event, cpu {cpu})"), &e),
                        }
                    }
                }
                Err((what, e)) => note("on-CPU stacks", &format!("{what}: {e}")),
            },
            Err(e) => note("on-CPU stacks (perf event)", &e),
        },
        Some(Err(e)) => note("on-CPU stacks", &e),
        None => note("on-CPU stacks", &"program missing"),
    }
    match ebpf
        .program_mut("signal_generate")
        .map(TryInto::<&mut TracePoint>::try_into)
    {
        Some(Ok(prog)) => {
            match prog
                .load()
                .and_then(|()| prog.attach("signal", "signal_generate"))
                .and_then(|id| prog.take_link(id))
            {
                Ok(link) => links.keep(link),
                Err(e) => note("signal notes (tracepoint signal:signal_generate)", &e),
            }
        }
        Some(Err(e)) => note("signal notes", &e),
        None => note("signal notes", &"program missing"),
    }
    degraded
}

/// A program of the object, as its type, loaded into the kernel.
fn loaded<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    T: ProgramLoad,
{
    let prog: &mut T = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::Program {
            name,
            source: Box::new(source),
        })?;
    prog.load_it().map_err(|source| ProbeError::Program {
        name,
        source: Box::new(source),
    })?;
    Ok(prog)
}

/// The `load()` that tracepoint and uprobe programs share without a common trait in aya.
trait ProgramLoad {
    fn load_it(&mut self) -> Result<(), aya::programs::ProgramError>;
}

impl ProgramLoad for TracePoint {
    fn load_it(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

impl ProgramLoad for RawTracePoint {
    fn load_it(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

impl ProgramLoad for aya::programs::UProbe {
    fn load_it(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

fn typed<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    T::try_from(take(ebpf, name)?).map_err(|source| ProbeError::Map {
        name,
        source: Box::new(source),
    })
}
