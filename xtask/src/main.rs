//! Project tasks: `cargo xtask setup | build | test | demo | bench | fuzz`.
//!
//! Every task installs what it needs first (idempotently), so a fresh machine needs nothing but
//! this repository and rustup.

mod bench;
mod bench_cost;
mod bench_fleet;
mod bench_nontarget;
mod bench_soak;
mod bpf_stats;
mod compare;
mod demo;
mod echo_load;
mod fuzz;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "slowtrace's build, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces, Debian packages and Python packages (idempotent).
    Setup {
        /// Only the build toolchain (nightly rust-src, bpf-linker), no test packages.
        #[arg(long)]
        build_only: bool,
    },
    /// Setup, then build the release binary (target/release/slowtrace).
    Build,
    /// Setup, build, then run every test: unit tests, then the root tests against real servers.
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, build, then measure tracing overhead on nginx and gunicorn; writes docs/benchmarks.md.
    Bench {
        /// More and longer pairs (10 × 10 s instead of 5 × 4 s).
        #[arg(long)]
        long: bool,
        /// Also run the worker-churn soak for this many minutes (gunicorn --max-requests 200
        /// under wrk, traced throughout; the check is 10).
        #[arg(long, value_name = "MINUTES")]
        soak: Option<u64>,
        /// Smoke test of the bench: 1 pair of this many seconds, core and non-target sections
        /// only, no setup/build, written to target/bench-smoke.md instead of docs/.
        #[arg(long, hide = true, value_name = "SECS")]
        smoke_secs: Option<u64>,
        /// Only the fleet section (the agent with its exporters), to target/bench-fleet.md.
        #[arg(long, hide = true)]
        fleet_only: bool,
        /// Only the soak (`--soak`, default 30 minutes), none of the overhead sections.
        #[arg(long, hide = true)]
        soak_only: bool,
        /// Only this soak phase: agent or record.
        #[arg(long, hide = true, value_name = "PHASE")]
        soak_phase: Option<String>,
    },
    /// Loopback TCP echo load for the bench's non-target measurement (prints round trips/s).
    #[command(hide = true)]
    EchoLoad {
        #[arg(long, default_value_t = 2)]
        secs: u64,
    },
    /// Setup, build, then profile a test app with slowtrace and py-spy (from PyPI) on the same
    /// run and compare their CPU shares per function (the acceptance check of the profiler).
    ComparePyspy {
        /// Seconds to record.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
    },
    /// Setup, build, start the demo web app with a load generator, and trace it.
    Demo {
        /// How long to trace.
        #[arg(long, default_value = "20s")]
        duration: String,
    },
    /// Setup, then build the fuzz targets (fuzz/, nightly cargo-fuzz) and run each for
    /// --seconds, one after the other; fails on any crash, hang or memory blow-up.
    Fuzz {
        /// Seconds per target (not in all).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { build_only } => setup::run(!build_only),
        Task::Build => setup::run(false).and_then(|()| util::build_release()),
        Task::Test { args } => test::run(&args),
        Task::Demo { duration } => demo::run(&duration),
        Task::Fuzz { seconds, targets } => setup::run(false)
            .and_then(|()| fuzz::run(seconds, &targets))
            .map(drop),
        Task::Bench {
            long,
            soak,
            smoke_secs,
            fleet_only,
            soak_only,
            soak_phase,
        } => bench::run(&bench::Args {
            long,
            soak_minutes: soak,
            soak_only,
            soak_phase,
            smoke_secs,
            fleet_only,
        }),
        Task::EchoLoad { secs } => echo_load::run(secs),
        Task::ComparePyspy { seconds } => compare::run(seconds),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
