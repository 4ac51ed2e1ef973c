//! `cargo xtask test`: unit tests (no root), then the root tests that load eBPF and trace real
//! servers on 127.0.0.1. Integration tests run one at a time: they time real requests on a
//! 2-core machine and must not compete with each other. The root tests are `#[ignore]`d, so that
//! a plain `cargo test` without root reports them as ignored rather than passed; here, as root,
//! `--include-ignored` runs them all. The exact-count suites then run once more on the fallback
//! (syscall-tracepoint) kernel path.

use crate::{setup, util};

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
    util::run(
        util::cargo()
            .env("SLOWTRACE_BIN", util::slowtrace_bin())
            .env("SLOWTRACE_VENV", util::venv())
            .args([
                "test",
                "--release",
                "-p",
                "integration-tests",
                "--",
                "--test-threads=1",
                "--include-ignored",
            ])
            .args(args),
    )?;
    // The syscall-tracepoint path is what kernels without the socket tracepoints (< 6.3) or BTF
    // get: the exact-count suites again on it, forced.
    util::run(
        util::cargo()
            .env("SLOWTRACE_BIN", util::slowtrace_bin())
            .env("SLOWTRACE_VENV", util::venv())
            .env("SLOWTRACE_SYSCALL_PATH", "1")
            .args([
                "test",
                "--release",
                "-p",
                "integration-tests",
                "--test",
                "nginx_gunicorn",
                "--test",
                "python_servers",
                "--",
                "--test-threads=1",
                "--include-ignored",
            ])
            .args(args),
    )
}
