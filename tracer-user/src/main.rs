//! slowtrace: the binary. Thin glue; each stage of the pipeline lives in its own module:
//! probes (kernel side) → events (decoding) → model (requests, stats) → sinks (files, summary).

mod act;
mod agent;
mod bounded;
mod capture;
mod cli;
mod config;
mod config_file;
mod events;
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
    let args = match config_file::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(err) => {
            eprintln!("slowtrace: error: {err}");
            return ExitCode::from(2);
        }
    };
    let cli = cli::Cli::parse_from(args);
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
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One clear line (plus causes), not a backtrace.
            eprintln!("slowtrace: error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
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
