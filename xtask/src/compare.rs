//! `cargo xtask compare-pyspy`: slowtrace's CPU profile next to py-spy's on the same run, and a
//! slow request's capture next to `py-spy dump --native` on the same stuck thread.

use std::process::Command;

use anyhow::{bail, Context as _};

use crate::{setup, util};

/// The py-spy the comparison installs (PyPI wheel, into the test venv).
const PY_SPY: &str = "py-spy==0.4.3";

pub fn run(seconds: u32) -> anyhow::Result<()> {
    setup::run(true)?;
    util::build_release()?;
    let venv = util::venv();
    let py_spy = venv.join("bin/py-spy");
    if !py_spy.exists() {
        util::run(Command::new(venv.join("bin/pip")).args(["install", "-q", PY_SPY]))?;
    }
    let status = Command::new(venv.join("bin/python"))
        .arg(util::root().join("tests/acceptance/compare_pyspy.py"))
        .arg("--slowtrace")
        .arg(util::slowtrace_bin())
        .arg("--python")
        .arg(venv.join("bin/python"))
        .arg("--py-spy")
        .arg(&py_spy)
        .args(["--seconds", &seconds.to_string()])
        .status()
        .context("running tests/acceptance/compare_pyspy.py")?;
    if !status.success() {
        bail!("slowtrace and py-spy disagree (or the comparison failed): {status}");
    }
    // Frame by frame, Python and native, on a thread stuck in C code built without frame
    // pointers (three frames under ctypes).
    let status = Command::new(venv.join("bin/python"))
        .arg(util::root().join("tests/acceptance/compare_native.py"))
        .arg("--slowtrace")
        .arg(util::slowtrace_bin())
        .arg("--python")
        .arg(venv.join("bin/python"))
        .arg("--py-spy")
        .arg(&py_spy)
        .status()
        .context("running tests/acceptance/compare_native.py")?;
    if !status.success() {
        bail!("a capture and py-spy dump --native disagree (or the comparison failed): {status}");
    }
    Ok(())
}
