//! Validated configuration: what the rest of the program receives instead of raw flags.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    act::Policy,
    cli::{PprofArgs, RecordArgs, TargetArgs, TopArgs, TraceArgs},
    handlers::Handler,
    profile::ProfilerConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "nothing to trace: give --pid PID, --port PORT or -- COMMAND (or --cgroup PATH, --container ID; see slowtrace record --help)"
    )]
    NoTarget,
    #[error("no process with pid {0}")]
    PidNotFound(u32),
    #[error("pid {pid} ({comm}) is a kernel thread: slowtrace traces user-space servers")]
    KernelThread { pid: u32, comm: String },
    #[error("pid {0} exited while slowtrace attached to it")]
    PidExited(u32),
    #[error("command not found: {0}")]
    CommandNotFound(String),
    #[error(transparent)]
    Cgroup(#[from] crate::procfs::cgroup::CgroupError),
    #[error("output directory {}: {}", path.display(), crate::exit::bare(&source.to_string()))]
    OutputDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--duration must be more than zero")]
    ZeroDuration,
    #[error(transparent)]
    Handler(#[from] crate::handlers::HandlerError),
    #[error(transparent)]
    Act(#[from] crate::act::ActError),
    #[error("--sample-hz {0}: use 1 to {MAX_SAMPLE_HZ} (or 0 to turn sampling off)")]
    SampleHz(u64),
    #[error("--metrics-addr {0:?}: give HOST:PORT such as 127.0.0.1:9464, or off")]
    MetricsAddr(String),
    #[error("--sample-ratio {0}: use a number from 0 to 1")]
    SampleRatio(f64),
    #[error("--max-endpoints must be at least 1")]
    MaxEndpoints,
    #[error("--log-every must be more than zero")]
    ZeroLogEvery,
    #[error(transparent)]
    Otlp(#[from] crate::sinks::otlp::settings::SettingsError),
    #[error("{0} needs sampling on: drop --sample-hz 0")]
    PprofNeedsSampling(&'static str),
    #[error(
        "--pyroscope {0:?}: give the server's http:// or https:// URL, e.g. http://pyroscope:4040"
    )]
    PyroscopeUrl(String),
    #[error("--pyroscope-every must be at least 1s")]
    PyroscopeEvery,
    #[error("--pprof {path}: {why}")]
    PprofFile { path: PathBuf, why: String },
    #[error("--endpoint {pattern:?}: {source}")]
    EndpointPattern {
        pattern: String,
        source: glob::PatternError,
    },
}

/// Above this the sampler itself would be the hotspot.
pub const MAX_SAMPLE_HZ: u64 = 1000;

/// How often the agent looks at the connection map (idle keep-alive ends, dead processes,
/// in-flight requests). Here rather than in `agent` because `--resample` is checked against it.
pub const SCAN_EVERY: Duration = Duration::from_millis(250);

/// Which processes to trace: `--pid`, `--port`, `-- CMD`, checked.
#[derive(Debug, Clone)]
pub struct Targets {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    /// `--cgroup` and `--container`, resolved to cgroup v2 directories.
    pub cgroups: Vec<crate::procfs::cgroup::Cgroup>,
    /// Resolved program path and its arguments.
    pub command: Option<(PathBuf, Vec<String>)>,
}

/// dogslow from outside: capture requests that run longer than `threshold`.
#[derive(Debug, Clone, Copy)]
pub struct CaptureConfig {
    pub threshold: Duration,
    pub resample: Duration,
    pub max_captures: u32,
}

/// Settings the agent needs: the flags `record` and `top` share (`cli::TraceArgs`), resolved and
/// checked once by `AgentConfig::from_args`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub targets: Targets,
    pub keep_query: bool,
    pub idle_flush: Duration,
    /// None: time requests only, no stack captures (`--threshold 0`).
    pub capture: Option<CaptureConfig>,
    /// `--handler` functions to time with uprobes.
    pub handlers: Vec<Handler>,
    /// `--interrupt-after` / `--dump-signal`: None unless asked for.
    pub act: Option<Policy>,
    /// Continuous profiling (`--sample-hz`, `--flamegraph`); None: off.
    pub profile: Option<ProfilerConfig>,
    /// `--n-plus-one`: the same statement this many times in one request is a finding.
    pub n_plus_one: u32,
    /// Where a launched command's stdin, stdout and stderr go. None: it shares our terminal
    /// (`record`). `top` draws on the terminal and reads keys from it, so it gives the command no
    /// stdin and sends its output to this file.
    pub command_output: Option<PathBuf>,
    /// Requests carry their downstream round trips one by one (the OTLP exporter's client
    /// spans); off, they carry only the summary.
    pub keep_round_trips: bool,
}

/// `record --flamegraph`: where the flamegraphs go, and `--endpoint`.
#[derive(Debug, Clone, Copy)]
pub struct Flamegraph<'a> {
    pub dir: &'a Path,
    pub endpoint: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub agent: AgentConfig,
    pub duration: Option<Duration>,
    pub out_dir: PathBuf,
    /// `--pprof FILE`: the whole run's profile, written at exit.
    pub pprof: Option<PathBuf>,
}

/// What `slowtrace top` runs with.
#[derive(Debug, Clone)]
pub struct TopConfig {
    pub agent: AgentConfig,
    /// Checked writable; requests.jsonl is streamed there.
    pub export: Option<PathBuf>,
}

impl AgentConfig {
    /// The shared flags, resolved and checked: targets exist, handlers resolve, signals parse,
    /// the sampling rate is sane. `flamegraph` (only `record` has it) adds wall-clock profiling.
    pub fn from_args(
        a: &TraceArgs,
        flamegraph: Option<Flamegraph<'_>>,
    ) -> Result<Self, ConfigError> {
        let targets = Targets::resolve(&a.targets)?;
        let (handlers, act) = probe_options(a)?;
        Ok(Self {
            targets,
            keep_query: a.keep_query,
            idle_flush: a.idle_flush,
            capture: capture_config(a),
            handlers,
            act,
            profile: profile_config(a.sample_hz, flamegraph)?,
            n_plus_one: a.n_plus_one,
            command_output: None,
            keep_round_trips: false,
        })
    }

    /// `--threshold`: slow on the dashboard is slow for captures. Zero when captures are off.
    pub fn threshold(&self) -> Duration {
        self.capture.map_or(Duration::ZERO, |c| c.threshold)
    }
}

fn profile_config(
    sample_hz: u64,
    flamegraph: Option<Flamegraph<'_>>,
) -> Result<Option<ProfilerConfig>, ConfigError> {
    if sample_hz > MAX_SAMPLE_HZ {
        return Err(ConfigError::SampleHz(sample_hz));
    }
    let endpoint = match flamegraph.and_then(|f| f.endpoint) {
        Some(p) => Some(
            glob::Pattern::new(p).map_err(|source| ConfigError::EndpointPattern {
                pattern: p.to_owned(),
                source,
            })?,
        ),
        None => None,
    };
    if sample_hz == 0 && flamegraph.is_none() {
        return Ok(None);
    }
    Ok(Some(ProfilerConfig {
        sample_hz,
        out_dir: flamegraph.map(|f| f.dir.to_owned()),
        endpoint,
        wall: flamegraph.is_some(),
        labels: false,
        push: None,
    }))
}

/// `--pprof` and `--pyroscope`, checked and put on the profiler's settings; the pprof file's
/// path comes back (the output writes it at exit). The service name, when the command has one,
/// names the pushed application; without it the traced program's name does.
pub fn pprof_config(
    a: &PprofArgs,
    profile: Option<&mut ProfilerConfig>,
    service_name: Option<&str>,
) -> Result<Option<PathBuf>, ConfigError> {
    let PprofArgs {
        pprof,
        pyroscope,
        pyroscope_every,
    } = a;
    if pprof.is_none() && pyroscope.is_none() {
        return Ok(None);
    }
    let Some(profile) = profile else {
        return Err(ConfigError::PprofNeedsSampling(if pprof.is_some() {
            "--pprof"
        } else {
            "--pyroscope"
        }));
    };
    if let Some(url) = pyroscope {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
            return Err(ConfigError::PyroscopeUrl(url.clone()));
        }
        if *pyroscope_every < Duration::from_secs(1) {
            return Err(ConfigError::PyroscopeEvery);
        }
        profile.push = Some(crate::sinks::pyroscope::PushConfig {
            url: url.clone(),
            every: *pyroscope_every,
            app: service_name.map(str::to_owned),
        });
    }
    if let Some(path) = pprof {
        check_pprof_path(path)?;
        profile.labels = true;
    }
    Ok(pprof.clone())
}

/// The pprof file goes in an existing directory, and is not one itself: said now, not at exit.
fn check_pprof_path(path: &Path) -> Result<(), ConfigError> {
    let err = |why: &str| ConfigError::PprofFile {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    if path.as_os_str().is_empty() || path.is_dir() {
        return Err(err("is a directory; give a file name"));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(err("its directory does not exist"));
    }
    Ok(())
}

/// `--threshold 0` means no captures; resampling faster than the scan period is pointless.
fn capture_config(a: &TraceArgs) -> Option<CaptureConfig> {
    if a.threshold.is_zero() {
        return None;
    }
    let resample = a.resample.unwrap_or(a.threshold / 2).max(SCAN_EVERY);
    Some(CaptureConfig {
        threshold: a.threshold,
        resample,
        max_captures: a.max_captures.max(1),
    })
}

/// `--handler`, `--interrupt-after`, `--dump-signal`, resolved and checked.
fn probe_options(a: &TraceArgs) -> Result<(Vec<Handler>, Option<Policy>), ConfigError> {
    let mut handlers = Vec::new();
    for spec in &a.handlers {
        handlers.extend(crate::handlers::resolve(spec)?);
    }
    let interrupt = a
        .interrupt_after
        .as_deref()
        .map(crate::act::parse_interrupt)
        .transpose()?;
    let dump = match a.dump_signal.as_deref() {
        Some(s) => Some((a.threshold, crate::act::parse_signal(s)?)),
        None => None,
    };
    let act = (interrupt.is_some() || dump.is_some()).then_some(Policy {
        interrupt,
        dump,
        force: a.force,
    });
    Ok((handlers, act))
}

impl Targets {
    pub fn resolve(a: &TargetArgs) -> Result<Self, ConfigError> {
        if a.pids.is_empty()
            && a.ports.is_empty()
            && a.command.is_empty()
            && a.cgroups.is_empty()
            && a.containers.is_empty()
        {
            return Err(ConfigError::NoTarget);
        }
        let mut cgroups = Vec::new();
        for path in &a.cgroups {
            cgroups.push(crate::procfs::cgroup::resolve(path)?);
        }
        for id in &a.containers {
            cgroups.push(crate::procfs::cgroup::find_container(id)?);
        }
        for &pid in &a.pids {
            if !crate::procfs::alive(pid) {
                return Err(ConfigError::PidNotFound(pid));
            }
            if let Some(comm) = kernel_thread(pid) {
                return Err(ConfigError::KernelThread { pid, comm });
            }
        }
        let command = match a.command.split_first() {
            None => None,
            Some((prog, args)) => Some((
                find_program(prog).ok_or_else(|| ConfigError::CommandNotFound(prog.clone()))?,
                args.to_vec(),
            )),
        };
        Ok(Self {
            pids: a.pids.clone(),
            ports: a.ports.clone(),
            cgroups,
            command,
        })
    }
}

impl Targets {
    /// After attaching: a `--pid` that exited meanwhile would leave nothing to trace, silently.
    pub fn check_still_alive(&self) -> Result<(), ConfigError> {
        match self.pids.iter().find(|&&p| !crate::procfs::alive(p)) {
            Some(&pid) => Err(ConfigError::PidExited(pid)),
            None => Ok(()),
        }
    }
}

/// The name of `pid` if it is a kernel thread (PF_KTHREAD in /proc/PID/stat's flags).
fn kernel_thread(pid: u32) -> Option<String> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    // After "pid (comm)": state ppid pgrp session tty_nr tpgid flags.
    let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
    let comm = head.split_once('(').map_or("", |(_, c)| c);
    (flags & PF_KTHREAD != 0).then(|| comm.to_owned())
}

impl RecordConfig {
    pub fn from_args(a: &RecordArgs) -> Result<Self, ConfigError> {
        let RecordArgs {
            trace,
            duration,
            output,
            flamegraph,
            endpoint,
            pprof,
        } = a;
        let flamegraph = flamegraph.then_some(Flamegraph {
            dir: output,
            endpoint: endpoint.as_deref(),
        });
        let mut agent = AgentConfig::from_args(trace, flamegraph)?;
        let pprof = pprof_config(pprof, agent.profile.as_mut(), None)?;
        if *duration == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroDuration);
        }
        // Last: every flag is checked before anything is created on disk.
        prepare_output_dir(output)?;
        Ok(Self {
            agent,
            duration: *duration,
            out_dir: output.clone(),
            pprof,
        })
    }
}

/// What `slowtrace agent` runs with.
#[derive(Debug, Clone)]
pub struct HeadlessConfig {
    pub agent: AgentConfig,
    pub duration: Option<Duration>,
    /// `--output DIR`: the per-request files too.
    pub output: Option<PathBuf>,
    pub log_every: Duration,
    /// None: no /metrics listener.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub max_endpoints: usize,
    /// None: no OTLP export.
    pub otlp: Option<crate::sinks::otlp::settings::OtlpSettings>,
    pub sample_ratio: f64,
    pub otlp_queue: usize,
    /// `--service-name` or OTEL_SERVICE_NAME: one service name for every target.
    pub service_name: Option<String>,
    /// `--pprof FILE`: the whole run's profile, written at exit.
    pub pprof: Option<PathBuf>,
}

impl HeadlessConfig {
    /// `env` is the process environment (a function, for tests).
    pub fn from_args(
        a: &crate::cli::AgentArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let x = &a.export;
        let mut agent = AgentConfig::from_args(&a.trace, None)?;
        if a.duration == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroDuration);
        }
        if a.log_every.is_zero() {
            return Err(ConfigError::ZeroLogEvery);
        }
        if !(0.0..=1.0).contains(&x.sample_ratio) {
            return Err(ConfigError::SampleRatio(x.sample_ratio));
        }
        if x.max_endpoints == 0 {
            return Err(ConfigError::MaxEndpoints);
        }
        let metrics_addr = match x.metrics_addr.trim() {
            "off" | "none" | "" => None,
            addr => Some(
                addr.parse()
                    .map_err(|_| ConfigError::MetricsAddr(addr.to_owned()))?,
            ),
        };
        let otlp = crate::sinks::otlp::settings::resolve(
            &crate::sinks::otlp::settings::Flags {
                endpoint: x.otlp_endpoint.as_deref(),
                protocol: x.otlp_protocol.as_deref(),
                service_name: x.service_name.as_deref(),
                metrics: !x.no_otlp_metrics,
            },
            &env,
        )?;
        let service_name = match &otlp {
            Some(o) => o.service_name.clone(),
            None => x.service_name.clone().or_else(|| env("OTEL_SERVICE_NAME")),
        };
        // Client spans need each round trip; only the OTLP exporter draws them.
        agent.keep_round_trips = otlp.is_some();
        // The profiler feeds the profile outputs only: an agent without one does not sample.
        agent.profile = None;
        if a.pprof.pprof.is_some() || a.pprof.pyroscope.is_some() {
            agent.profile = profile_config(a.trace.sample_hz, None)?;
        }
        let pprof = pprof_config(&a.pprof, agent.profile.as_mut(), service_name.as_deref())?;
        if let Some(dir) = &a.output {
            prepare_output_dir(dir)?;
        }
        Ok(Self {
            agent,
            duration: a.duration,
            output: a.output.clone(),
            log_every: a.log_every,
            metrics_addr,
            max_endpoints: x.max_endpoints,
            otlp,
            sample_ratio: x.sample_ratio,
            otlp_queue: x.otlp_queue,
            service_name,
            pprof,
        })
    }
}

impl TopConfig {
    pub fn from_args(a: &TopArgs) -> Result<Self, ConfigError> {
        let TopArgs { trace, export } = a;
        let agent = AgentConfig::from_args(trace, None)?;
        if let Some(dir) = export {
            prepare_output_dir(dir)?;
        }
        Ok(Self {
            agent,
            export: export.clone(),
        })
    }
}

/// Create an output directory and prove we can write there now, not after minutes of tracing.
/// A symbolic link, or a file, where the directory goes is refused.
pub fn prepare_output_dir(dir: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| ConfigError::OutputDir {
        path: dir.to_owned(),
        source,
    };
    if let Err(e) = crate::sinks::refuse_symlinked_dir(dir) {
        // Its message names the path already; say what is wrong only.
        let why = e
            .to_string()
            .replacen(&format!("{} ", dir.display()), "", 1);
        return Err(err(std::io::Error::other(why)));
    }
    // New directories are private; an existing one keeps its mode (the operator chose it).
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(err)?;
    let probe = dir.join(".slowtrace-write-test");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe)
        .map_err(err)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// PATH lookup the way a shell does it, so "command not found" is ours, before attaching.
fn find_program(name: &str) -> Option<PathBuf> {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| executable(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pids: Vec<u32>, command: Vec<&str>) -> TargetArgs {
        TargetArgs {
            pids,
            ports: vec![],
            command: command.into_iter().map(String::from).collect(),
            ..TargetArgs::default()
        }
    }

    #[test]
    fn needs_a_target() {
        assert!(matches!(
            Targets::resolve(&args(vec![], vec![])),
            Err(ConfigError::NoTarget)
        ));
    }

    #[test]
    fn missing_pid_and_command() {
        assert!(matches!(
            Targets::resolve(&args(vec![u32::MAX - 3], vec![])),
            Err(ConfigError::PidNotFound(_))
        ));
        assert!(matches!(
            Targets::resolve(&args(vec![], vec!["no-such-program-slowtrace"])),
            Err(ConfigError::CommandNotFound(_))
        ));
        let t =
            Targets::resolve(&args(vec![std::process::id()], vec!["sh", "-c", "true"])).unwrap();
        assert!(t.command.unwrap().0.ends_with("sh"));
    }

    /// The flags' defaults, tracing this test process.
    fn trace_args() -> TraceArgs {
        TraceArgs {
            targets: args(vec![std::process::id()], vec![]),
            keep_query: false,
            threshold: Duration::from_secs(1),
            resample: None,
            n_plus_one: 10,
            max_captures: 20,
            handlers: vec![],
            interrupt_after: None,
            dump_signal: None,
            force: false,
            sample_hz: 99,
            idle_flush: Duration::from_millis(500),
        }
    }

    #[test]
    fn unwritable_output_dir() {
        let a = RecordArgs {
            trace: trace_args(),
            duration: None,
            output: "/proc/slowtrace-cannot-be-here".into(),
            flamegraph: false,
            endpoint: None,
            pprof: PprofArgs::default(),
        };
        assert!(matches!(
            RecordConfig::from_args(&a),
            Err(ConfigError::OutputDir { .. })
        ));
    }

    #[test]
    fn top_checks_its_export_dir() {
        let mut a = TopArgs {
            trace: trace_args(),
            export: Some("/proc/slowtrace-cannot-be-here".into()),
        };
        assert!(matches!(
            TopConfig::from_args(&a),
            Err(ConfigError::OutputDir { .. })
        ));
        a.export = None;
        let c = TopConfig::from_args(&a).unwrap();
        assert_eq!(c.agent.threshold(), Duration::from_secs(1));
        let cap = c.agent.capture.expect("top takes captures, as record does");
        assert_eq!(
            (cap.resample, cap.max_captures),
            (Duration::from_millis(500), 20)
        );
        a.trace.threshold = Duration::ZERO;
        let c = TopConfig::from_args(&a).unwrap();
        assert!(c.agent.capture.is_none());
        assert_eq!(c.agent.threshold(), Duration::ZERO);
    }

    #[test]
    fn record_and_top_build_the_same_agent_config() {
        let mut trace = trace_args();
        trace.keep_query = true;
        trace.resample = Some(Duration::from_millis(100));
        trace.sample_hz = 0;
        let dir = std::env::temp_dir().join(format!("slowtrace-config-{}", std::process::id()));
        let rec = RecordConfig::from_args(&RecordArgs {
            trace: trace.clone(),
            duration: Some(Duration::from_secs(3)),
            output: dir.clone(),
            flamegraph: false,
            endpoint: None,
            pprof: PprofArgs::default(),
        })
        .unwrap();
        let _ = std::fs::remove_dir(&dir);
        let top = TopConfig::from_args(&TopArgs {
            trace,
            export: None,
        })
        .unwrap();
        for agent in [&rec.agent, &top.agent] {
            assert!(agent.keep_query);
            let cap = agent.capture.unwrap();
            assert_eq!(
                cap.resample, SCAN_EVERY,
                "--resample is at least the scan period"
            );
            assert!(agent.profile.is_none(), "--sample-hz 0 and no flamegraph");
            assert!(agent.command_output.is_none());
        }
        assert_eq!(rec.duration, Some(Duration::from_secs(3)));
    }

    #[test]
    fn flamegraph_turns_on_wall_clock_profiling() {
        let dir = std::env::temp_dir().join(format!("slowtrace-flame-{}", std::process::id()));
        let mut a = RecordArgs {
            trace: trace_args(),
            duration: None,
            output: dir.clone(),
            flamegraph: true,
            endpoint: Some("GET /api/*".into()),
            pprof: PprofArgs::default(),
        };
        let c = RecordConfig::from_args(&a).unwrap();
        let _ = std::fs::remove_dir(&dir);
        let p = c.agent.profile.expect("profiling on");
        assert!(p.wall);
        assert_eq!(p.out_dir.as_deref(), Some(dir.as_path()));
        assert!(p.endpoint.is_some());
        a.endpoint = Some("[".into());
        assert!(matches!(
            RecordConfig::from_args(&a),
            Err(ConfigError::EndpointPattern { .. })
        ));
        a.trace.sample_hz = MAX_SAMPLE_HZ + 1;
        assert!(matches!(
            RecordConfig::from_args(&a),
            Err(ConfigError::SampleHz(_))
        ));
    }

    #[test]
    fn pprof_and_pyroscope_flags_are_checked_and_turn_labels_on() {
        let dir = std::env::temp_dir().join(format!("slowtrace-pprof-{}", std::process::id()));
        let mut a = RecordArgs {
            trace: trace_args(),
            duration: None,
            output: dir.clone(),
            flamegraph: false,
            endpoint: None,
            pprof: PprofArgs {
                pprof: Some(dir.join("profile.pb.gz")),
                pyroscope: Some("http://127.0.0.1:4040".into()),
                pyroscope_every: Duration::from_secs(15),
            },
        };
        // The output directory is created last: the pprof file's directory must exist first.
        assert!(matches!(
            RecordConfig::from_args(&a),
            Err(ConfigError::PprofFile { .. })
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let c = RecordConfig::from_args(&a).unwrap();
        assert_eq!(c.pprof, Some(dir.join("profile.pb.gz")));
        let p = c.agent.profile.expect("profiling on");
        assert!(p.labels);
        let push = p.push.expect("pushing");
        assert_eq!(push.every, Duration::from_secs(15));
        assert!(push.app.is_none());
        a.pprof.pprof = Some(dir.clone());
        assert!(matches!(
            RecordConfig::from_args(&a),
            Err(ConfigError::PprofFile { .. })
        ));
        a.pprof.pprof = None;
        for bad in ["pyroscope:4040", "http://", "ftp://x"] {
            a.pprof.pyroscope = Some(bad.into());
            assert!(
                matches!(
                    RecordConfig::from_args(&a),
                    Err(ConfigError::PyroscopeUrl(_))
                ),
                "{bad}"
            );
        }
        a.pprof.pyroscope = Some("https://p.example/x".into());
        a.pprof.pyroscope_every = Duration::from_millis(10);
        assert!(matches!(
            RecordConfig::from_args(&a),
            Err(ConfigError::PyroscopeEvery)
        ));
        a.pprof.pyroscope_every = Duration::from_secs(1);
        a.trace.sample_hz = 0;
        let e = RecordConfig::from_args(&a).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--pyroscope needs sampling on: drop --sample-hz 0"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
