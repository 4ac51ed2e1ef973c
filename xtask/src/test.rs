//! `cargo xtask test`: unit tests (no root), a short fuzz run (every target of fuzz/ for a few
//! seconds), then the root tests that load eBPF and trace real servers on 127.0.0.1. Integration tests run one at a time: they time real requests on a
//! 2-core machine and must not compete with each other. The root tests are `#[ignore]`d, so that
//! a plain `cargo test` without root reports them as ignored rather than passed; here, as root,
//! `--include-ignored` runs them all. The exact-count suites then run once more on the fallback
//! (syscall-tracepoint) kernel path.

use crate::{setup, util};

/// Seconds per fuzz target in the smoke run.
const FUZZ_SMOKE_SECONDS: u64 = 6;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    setup::run(true)?;
    util::build_release()?;
    util::run(
        util::cargo()
            .args([
                "test",
                "--release",
                "-p",
                "tracer-common",
                "-p",
                "tracer-user",
                "-p",
                "xtask",
                "--",
            ])
            .args(args),
    )?;
    // Every fuzz target for a few seconds (10 targets, ~60 s in all) from the committed corpus:
    // the decoders of untrusted bytes still hold on what once broke them and on fresh mutations.
    crate::fuzz::run(FUZZ_SMOKE_SECONDS, &[])?;
    integration(&[], args, false)?;
    // The syscall-tracepoint path is what kernels without the socket tracepoints (< 6.3) or BTF
    // get: the exact-count suites again on it, forced.
    integration(&["nginx_gunicorn", "python_servers"], args, true)
}

/// The root integration tests (`tests`: these test files only; none: all of them), one at a
/// time; `fallback` forces the syscall-tracepoint path.
fn integration(tests: &[&str], args: &[String], fallback: bool) -> anyhow::Result<()> {
    let mut cmd = util::cargo();
    cmd.env("SLOWTRACE_BIN", util::slowtrace_bin())
        .env("SLOWTRACE_VENV", util::venv())
        .args(["test", "--release", "-p", "integration-tests"]);
    if fallback {
        cmd.env("SLOWTRACE_SYSCALL_PATH", "1");
    }
    for t in tests {
        cmd.args(["--test", t]);
    }
    util::run(
        cmd.args(["--", "--test-threads=1", "--include-ignored"])
            .args(args),
    )
}
