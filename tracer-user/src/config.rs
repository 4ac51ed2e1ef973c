//! Validated configuration: what the rest of the program receives instead of raw flags.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    agent::CaptureConfig,
    cli::{CaptureArgs, RecordArgs, TargetArgs, TopArgs},
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "nothing to trace: give --pid PID, --port PORT or -- COMMAND (see slowtrace record --help)"
    )]
    NoTarget,
    #[error("no process with pid {0}")]
    PidNotFound(u32),
    #[error("command not found: {0}")]
    CommandNotFound(String),
    #[error("output directory {path}: {source}")]
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
    #[error("--endpoint {pattern:?}: {source}")]
    EndpointPattern {
        pattern: String,
        source: glob::PatternError,
    },
}

/// Above this the sampler itself would be the hotspot.
pub const MAX_SAMPLE_HZ: u64 = 1000;

fn profile_config(
    a: &crate::cli::ProfileArgs,
    flamegraph: Option<(&Path, Option<&str>)>,
) -> Result<Option<crate::profile::ProfilerConfig>, ConfigError> {
    if a.sample_hz > MAX_SAMPLE_HZ {
        return Err(ConfigError::SampleHz(a.sample_hz));
    }
    let endpoint = match flamegraph.and_then(|(_, e)| e) {
        Some(p) => Some(
            glob::Pattern::new(p).map_err(|source| ConfigError::EndpointPattern {
                pattern: p.to_owned(),
                source,
            })?,
        ),
        None => None,
    };
    if a.sample_hz == 0 && flamegraph.is_none() {
        return Ok(None);
    }
    Ok(Some(crate::profile::ProfilerConfig {
        sample_hz: a.sample_hz,
        out_dir: flamegraph.map(|(d, _)| d.to_owned()),
        endpoint,
        wall: flamegraph.is_some(),
    }))
}

#[derive(Debug, Clone)]
pub struct Targets {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    /// Resolved program path and its arguments.
    pub command: Option<(PathBuf, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub targets: Targets,
    pub duration: Option<Duration>,
    pub out_dir: PathBuf,
    pub keep_query: bool,
    pub idle_flush: Duration,
    pub capture: Option<CaptureConfig>,
    pub handlers: Vec<crate::handlers::Handler>,
    pub act: Option<crate::act::Policy>,
    pub profile: Option<crate::profile::ProfilerConfig>,
    pub n_plus_one: u32,
}

/// `--threshold 0` means no captures; resampling faster than the scan period is pointless.
pub fn capture_config(a: &CaptureArgs) -> Option<CaptureConfig> {
    if a.threshold.is_zero() {
        return None;
    }
    let resample = a
        .resample
        .unwrap_or(a.threshold / 2)
        .max(crate::agent::SCAN_EVERY);
    Some(CaptureConfig {
        threshold: a.threshold,
        resample,
        max_captures: a.max_captures.max(1),
    })
}

/// `--handler`, `--interrupt-after`, `--dump-signal`, resolved and checked.
pub fn probe_options(
    a: &CaptureArgs,
) -> Result<(Vec<crate::handlers::Handler>, Option<crate::act::Policy>), ConfigError> {
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
    let act = (interrupt.is_some() || dump.is_some()).then_some(crate::act::Policy {
        interrupt,
        dump,
        force: a.force,
    });
    Ok((handlers, act))
}

/// What `slowtrace top` runs with.
#[derive(Debug, Clone)]
pub struct TopConfig {
    pub targets: Targets,
    pub threshold: Duration,
    pub keep_query: bool,
    pub idle_flush: Duration,
    /// Checked writable; requests.jsonl is streamed there.
    pub export: Option<PathBuf>,
    /// As `record`'s: None with `--threshold 0`.
    pub capture: Option<CaptureConfig>,
    pub handlers: Vec<crate::handlers::Handler>,
    pub act: Option<crate::act::Policy>,
    pub profile: Option<crate::profile::ProfilerConfig>,
    pub n_plus_one: u32,
}

impl Targets {
    pub fn resolve(a: &TargetArgs) -> Result<Self, ConfigError> {
        if a.pids.is_empty() && a.ports.is_empty() && a.command.is_empty() {
            return Err(ConfigError::NoTarget);
        }
        for &pid in &a.pids {
            if !crate::procfs::alive(pid) {
                return Err(ConfigError::PidNotFound(pid));
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
            command,
        })
    }
}

impl RecordConfig {
    pub fn from_args(a: &RecordArgs) -> Result<Self, ConfigError> {
        let targets = Targets::resolve(&a.targets)?;
        if a.duration == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroDuration);
        }
        let (handlers, act) = probe_options(&a.capture)?;
        prepare_output_dir(&a.output)?;
        let flame = a
            .flamegraph
            .then_some((a.output.as_path(), a.endpoint.as_deref()));
        let profile = profile_config(&a.profile, flame)?;
        Ok(Self {
            n_plus_one: a.capture.n_plus_one,
            profile,
            targets,
            duration: a.duration,
            out_dir: a.output.clone(),
            keep_query: a.keep_query,
            idle_flush: a.idle_flush,
            capture: capture_config(&a.capture),
            handlers,
            act,
        })
    }
}

impl TopConfig {
    pub fn from_args(a: &TopArgs) -> Result<Self, ConfigError> {
        let targets = Targets::resolve(&a.targets)?;
        let (handlers, act) = probe_options(&a.capture)?;
        if let Some(dir) = &a.export {
            prepare_output_dir(dir)?;
        }
        let profile = profile_config(&a.profile, None)?;
        Ok(Self {
            n_plus_one: a.capture.n_plus_one,
            profile,
            targets,
            // The same --threshold as captures: slow on the dashboard is slow for captures.
            threshold: a.capture.threshold,
            keep_query: a.keep_query,
            idle_flush: a.idle_flush,
            export: a.export.clone(),
            capture: capture_config(&a.capture),
            handlers,
            act,
        })
    }
}

/// Create an output directory and prove we can write there now, not after minutes of tracing.
pub fn prepare_output_dir(dir: &Path) -> Result<(), ConfigError> {
    let err = |source| ConfigError::OutputDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(".slowtrace-write-test");
    std::fs::write(&probe, b"").map_err(err)?;
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

    #[test]
    fn unwritable_output_dir() {
        let a = RecordArgs {
            targets: args(vec![std::process::id()], vec![]),
            duration: None,
            output: "/proc/slowtrace-cannot-be-here".into(),
            keep_query: false,
            idle_flush: Duration::from_millis(500),
            capture: CaptureArgs {
                threshold: Duration::from_secs(1),
                resample: None,
                max_captures: 20,
                n_plus_one: 10,
                handlers: vec![],
                interrupt_after: None,
                dump_signal: None,
                force: false,
            },
            profile: crate::cli::ProfileArgs { sample_hz: 99 },
            flamegraph: false,
            endpoint: None,
        };
        assert!(matches!(
            RecordConfig::from_args(&a),
            Err(ConfigError::OutputDir { .. })
        ));
    }

    #[test]
    fn top_checks_its_export_dir() {
        let mut a = TopArgs {
            targets: args(vec![std::process::id()], vec![]),
            keep_query: false,
            capture: CaptureArgs {
                threshold: Duration::from_secs(1),
                resample: None,
                max_captures: 20,
                n_plus_one: 10,
                handlers: vec![],
                interrupt_after: None,
                dump_signal: None,
                force: false,
            },
            profile: crate::cli::ProfileArgs { sample_hz: 99 },
            idle_flush: Duration::from_millis(500),
            export: Some("/proc/slowtrace-cannot-be-here".into()),
        };
        assert!(matches!(
            TopConfig::from_args(&a),
            Err(ConfigError::OutputDir { .. })
        ));
        a.export = None;
        let c = TopConfig::from_args(&a).unwrap();
        assert_eq!(c.threshold, Duration::from_secs(1));
        let cap = c.capture.expect("top takes captures, as record does");
        assert_eq!(
            (cap.resample, cap.max_captures),
            (Duration::from_millis(500), 20)
        );
        a.capture.threshold = Duration::ZERO;
        assert!(TopConfig::from_args(&a).unwrap().capture.is_none());
    }
}
