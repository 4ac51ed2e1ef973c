//! slowtrace: the binary. Thin glue; each stage of the pipeline lives in its own module:
//! probes (kernel side) → events (decoding) → model (requests, stats) → sinks (files, summary).

mod act;
mod agent;
mod bounded;
mod capture;
mod cli;
mod config;
mod config_file;
mod doctor;
mod events;
mod exit;
mod handlers;
mod headless;
mod launch;
mod model;
mod probes;
mod procfs;
mod profile;
mod python;
mod reaper;
mod record;
mod sinks;
mod symbols;
mod tui;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // A panic on the main thread is a bug: exit code 70 after the hook's one line.
    std::panic::catch_unwind(run).unwrap_or(ExitCode::from(exit::SOFTWARE))
}

fn run() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // -v anywhere before `--` asks for the details (a panic's backtrace, the error's debug form).
    let verbose = args
        .iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--verbose" || a.to_str().is_some_and(is_short_verbose));
    one_line_panics(verbose);
    let args = match config_file::expand(args) {
        Ok(a) => a,
        Err(err) => {
            eprintln!("slowtrace: error: {err}");
            return ExitCode::from(exit::code(&err.into()));
        }
    };
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let code = exit::clap_code(&err);
            if code == 0 {
                // --help, --version: clap prints them.
                let _ = err.print();
            } else {
                eprintln!("slowtrace: error: {}", exit::clap_line(&err));
            }
            return ExitCode::from(code);
        }
    };
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        cli::Command::Record(args) => config::RecordConfig::from_args(&args)
            .map_err(anyhow::Error::from)
            .and_then(record::run),
        cli::Command::Top(args) => config::TopConfig::from_args(&args)
            .map_err(anyhow::Error::from)
            .and_then(tui::run),
        cli::Command::PyStack(args) => python::cli_main(args),
        cli::Command::Agent(args) => {
            config::HeadlessConfig::from_args(&args, |k| std::env::var(k).ok())
                .map_err(anyhow::Error::from)
                .and_then(headless::run)
        }
        cli::Command::Doctor(args) => doctor::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One clear line (plus causes), not a backtrace; -v adds the debug form.
            eprintln!("slowtrace: error: {}", one_line(&err));
            if cli.verbose > 0 {
                eprintln!("{err:?}");
            }
            ExitCode::from(exit::code(&err))
        }
    }
}

/// `-v`, `-vv`, or a cluster of short flags holding `v`.
fn is_short_verbose(a: &str) -> bool {
    a.strip_prefix('-')
        .is_some_and(|r| !r.starts_with('-') && !r.is_empty() && r.chars().all(|c| c == 'v'))
}

/// A panic is a bug: one line saying where instead of Rust's report (and its backtrace hint).
fn one_line_panics(verbose: bool) {
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("a thread");
        eprintln!(
            "slowtrace: internal error in {thread}: {msg}{at} (a bug: please report it; -v shows a backtrace)"
        );
        if verbose {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
    }));
}

/// The error and its causes on one line, each said once: many of our errors name their cause
/// in their own message too (`output directory X: No such file…`), and `{:#}` would repeat it.
fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let err = config::prepare_output_dir(std::path::Path::new("/proc/nonexistent/x"))
            .map_err(anyhow::Error::from)
            .unwrap_err();
        let line = one_line(&err);
        assert_eq!(
            line.matches("No such file or directory").count(),
            1,
            "{line}"
        );
        assert!(
            line.starts_with("output directory /proc/nonexistent/x: "),
            "{line}"
        );
        let outer = anyhow::anyhow!("inner cause").context("doing a thing");
        assert_eq!(one_line(&outer), "doing a thing: inner cause");
    }
}
