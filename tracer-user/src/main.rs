//! slowtrace: the binary. Thin glue; each stage of the pipeline lives in its own module:
//! probes (kernel side) → events (decoding) → model (requests, stats) → sinks (files, summary).

mod act;
mod agent;
mod bounded;
mod capture;
mod cli;
mod config;
mod events;
mod handlers;
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
    let cli = cli::Cli::parse();
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
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One clear line (plus causes), not a backtrace.
            eprintln!("slowtrace: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
