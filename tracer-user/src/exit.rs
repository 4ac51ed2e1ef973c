//! Exit codes, after BSD's sysexits.h, so a script or a supervisor can tell a typo from a
//! missing privilege from a kernel that cannot do it. docs/errors.md lists every bad input with
//! its code; `slowtrace --help` points there.
//!
//! `record -- CMD` and `top -- CMD` exit with the launched command's own status instead when it
//! exits non-zero: that is not an error of ours, and wrappers rely on it.

use std::io;

use crate::{
    act::ActError, config::ConfigError, config_file::ConfigFileError, handlers::HandlerError,
    probes::preflight::PreflightError, probes::tracefs::TracefsError, probes::ProbeError,
    procfs::cgroup::CgroupError, python::PyError, sinks::otlp::settings::SettingsError,
};

/// Bad flags or values, clap's own usage errors included.
pub const USAGE: u8 = 64;
/// An input that is there but unusable: a non-ELF `--handler` binary, a pattern matching nothing.
pub const DATAERR: u8 = 65;
/// A pid, a command or a file that does not exist.
pub const NOINPUT: u8 = 66;
/// The kernel lacks something slowtrace needs (BTF-less fallbacks aside, which only degrade).
pub const UNAVAILABLE: u8 = 69;
/// A failure of a kind not listed here (an untyped error, e.g. pystack's "runs no CPython").
pub const OTHER: u8 = 1;
/// A bug: a panic, or an eBPF object missing a program it should have.
pub const SOFTWARE: u8 = 70;
/// The OS refused something that should work (a map update, a thread).
pub const OSERR: u8 = 71;
/// An output file or directory cannot be created.
pub const CANTCREAT: u8 = 73;
/// Writing output failed midway (disk full, directory removed).
pub const IOERR: u8 = 74;
/// Missing privileges: capabilities, or ptrace access to the target.
pub const NOPERM: u8 = 77;
/// A bad `--config` file or OTEL_* environment variable.
pub const CONFIG: u8 = 78;

/// `slowtrace doctor`: record would run, but degraded (see its ✗ lines).
pub const DOCTOR_DEGRADED: u8 = 1;

/// The exit code for an error: the first cause in its chain whose type we know decides.
pub fn code(err: &anyhow::Error) -> u8 {
    err.chain().find_map(classify).unwrap_or(OTHER)
}

fn classify(e: &(dyn std::error::Error + 'static)) -> Option<u8> {
    if let Some(e) = e.downcast_ref::<ConfigError>() {
        return Some(config(e));
    }
    // Checked again after attaching (a signal the target would die of), outside ConfigError.
    if let Some(e) = e.downcast_ref::<ActError>() {
        return Some(act(e));
    }
    if let Some(e) = e.downcast_ref::<ConfigFileError>() {
        return Some(match e {
            ConfigFileError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                NOINPUT
            }
            ConfigFileError::Missing => USAGE,
            _ => CONFIG,
        });
    }
    if let Some(e) = e.downcast_ref::<PreflightError>() {
        return Some(match e {
            PreflightError::Privileges { .. } => NOPERM,
            PreflightError::KernelTooOld(_) => UNAVAILABLE,
        });
    }
    if let Some(e) = e.downcast_ref::<TracefsError>() {
        return Some(match e {
            TracefsError::MountFailed(io) if is_perm(io) => NOPERM,
            _ => UNAVAILABLE,
        });
    }
    if let Some(e) = e.downcast_ref::<ProbeError>() {
        return Some(probe(e));
    }
    if let Some(e) = e.downcast_ref::<PyError>() {
        return Some(match e {
            PyError::ProcessGone(_) | PyError::NoSuchThread { .. } => NOINPUT,
            PyError::Permission(_) => NOPERM,
            PyError::Unsupported(_) => DATAERR,
            _ => OSERR,
        });
    }
    if let Some(e) = e.downcast_ref::<io::Error>() {
        return Some(io(e));
    }
    None
}

fn config(e: &ConfigError) -> u8 {
    match e {
        ConfigError::PidNotFound(_)
        | ConfigError::PidExited(_)
        | ConfigError::CommandNotFound(_)
        | ConfigError::Cgroup(CgroupError::NotFound(_) | CgroupError::ContainerNotFound(_)) => {
            NOINPUT
        }
        ConfigError::Cgroup(CgroupError::NoV2(_)) => UNAVAILABLE,
        ConfigError::OutputDir { .. } | ConfigError::PprofFile { .. } => CANTCREAT,
        ConfigError::Handler(h) => match h {
            HandlerError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                NOINPUT
            }
            HandlerError::Read { source, .. } if is_perm(source) => NOPERM,
            HandlerError::Read { .. } => IOERR,
            HandlerError::Elf { .. } | HandlerError::NoMatch { .. } => DATAERR,
            HandlerError::Syntax(_) | HandlerError::Pattern { .. } => USAGE,
        },
        ConfigError::Act(e) => act(e),
        // An OTEL_* variable is configuration; a flag's value is usage.
        ConfigError::Otlp(SettingsError::Env { .. }) => CONFIG,
        _ => USAGE,
    }
}

fn act(e: &ActError) -> u8 {
    match e {
        ActError::NotCaught { .. } => DATAERR,
        _ => USAGE,
    }
}

fn probe(e: &ProbeError) -> u8 {
    // A missing privilege surfaces as EPERM/EACCES deep inside aya: find it in the chain.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<io::Error>().is_some_and(is_perm) {
            return NOPERM;
        }
        cause = c.source();
    }
    match e {
        ProbeError::Map { .. } => OSERR,
        ProbeError::MissingMap(_) | ProbeError::MissingProgram(_) => SOFTWARE,
        _ => UNAVAILABLE,
    }
}

/// Errors only creating a file gives are CANTCREAT; the rest of I/O is IOERR.
fn io(e: &io::Error) -> u8 {
    if is_perm(e) {
        return NOPERM;
    }
    if e.get_ref()
        .is_some_and(|inner| inner.is::<crate::sinks::Refused>())
    {
        return CANTCREAT;
    }
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::EROFS | libc::EEXIST | libc::EISDIR | libc::ENOTDIR) => CANTCREAT,
        _ => IOERR,
    }
}

fn is_perm(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EPERM)
}

/// A message without an io::Error's "(os error N)" tail: the text is for people, and the same
/// cause then reads the same wherever it is repeated.
pub fn bare(s: &str) -> String {
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s.to_owned(),
    }
}

/// clap's own errors: help and version are not errors; the rest are usage errors.
pub fn clap_code(err: &clap::Error) -> u8 {
    use clap::error::ErrorKind as K;
    match err.kind() {
        K::DisplayHelp | K::DisplayVersion => 0,
        _ => USAGE,
    }
}

/// clap's error as one line: its first paragraph (the message, and the names of missing
/// arguments clap lists below it) without the `error: ` prefix, and where to look; clap's usage
/// and "For more information" paragraphs are left out.
pub fn clap_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let para: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = para.join(" ");
    let msg = joined.strip_prefix("error: ").unwrap_or(&joined);
    format!("{msg} (see --help)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_known_cause_decides() {
        let e = anyhow::Error::from(ConfigError::PidNotFound(7)).context("starting");
        assert_eq!(code(&e), NOINPUT);
        let e = anyhow::Error::from(io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(code(&e), NOPERM);
        let e = anyhow::Error::from(io::Error::from_raw_os_error(libc::ENOSPC)).context("writing");
        assert_eq!(code(&e), IOERR);
        assert_eq!(code(&anyhow::anyhow!("something new")), OTHER);
        let e = TracefsError::MountFailed(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(code(&e.into()), NOPERM);
        let e = TracefsError::MountFailed(io::Error::from_raw_os_error(libc::ENODEV));
        assert_eq!(code(&e.into()), UNAVAILABLE);
    }
}
