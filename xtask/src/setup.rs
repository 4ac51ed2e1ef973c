//! `cargo xtask setup`: everything a fresh machine lacks, installed idempotently.
//!
//! * rust-src for the nightly toolchain (the eBPF crate is built with `-Z build-std=core`);
//! * bpf-linker built against the nightly's own libLLVM, because the linker must read the bitcode
//!   that exact LLVM wrote; the LLVM major and library file name come from the installed nightly;
//! * Debian packages and a Python venv for the tests and the demo;
//! * cargo-fuzz, for the fuzz targets (`cargo xtask fuzz`, and a short run in `cargo xtask test`).

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::util::{self, output};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The newest cargo-fuzz; it builds with the stable toolchain (`cargo xtask fuzz` runs it with
/// the nightly).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// nginx, wrk and curl for the request tests; tmux for the dashboard test; PostgreSQL, Redis and
/// memcached as the downstream servers of the downstream-call tests (started by the tests
/// themselves on free ports, never as system services); protoc decodes the pprof test's profile
/// with google/pprof's profile.proto.
const DEBIAN_PACKAGES: &[&str] = &[
    "nginx-light",
    "wrk",
    "curl",
    "tmux",
    "postgresql",
    "redis-server",
    "memcached",
    // The fleet tests' metrics receiver: scrapes the agent's /metrics, answers PromQL.
    "prometheus",
    // protoc decodes the pprof export in its test (a standard decoder of profile.proto).
    "protobuf-compiler",
    // uWSGI has no wheels: pip builds it from source (with the pyenv Python's own headers), as
    // the tests build their native servers.
    "gcc",
    "libc6-dev",
];

pub fn run(with_test_packages: bool) -> anyhow::Result<()> {
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    if with_test_packages {
        debian(DEBIAN_PACKAGES)?;
        python_venv()?;
        cargo_fuzz()?;
    }
    Ok(())
}

/// cargo-fuzz, for `cargo xtask fuzz` and the fuzz smoke run of `cargo xtask test`.
pub fn cargo_fuzz() -> anyhow::Result<()> {
    let installed = output(
        Command::new("cargo")
            .env_remove("RUSTUP_TOOLCHAIN")
            .args(["fuzz", "--version"]),
    )
    .is_some_and(|v| v.contains(CARGO_FUZZ_VERSION));
    if installed {
        return Ok(());
    }
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env_remove("RUSTUP_TOOLCHAIN").args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
        "--force",
    ]);
    util::run(&mut cmd)
}

fn rustup() -> Command {
    let mut c = Command::new("rustup");
    // Inside `cargo xtask`, rustup's proxy env would pin every nested call to stable.
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

fn nightly_sysroot() -> Option<PathBuf> {
    output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .map(|s| PathBuf::from(s.trim()))
}

fn nightly() -> anyhow::Result<()> {
    if nightly_sysroot().is_some() {
        return Ok(());
    }
    util::run(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

fn rust_src() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot().context("nightly toolchain missing after install")?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    util::run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The nightly's LLVM: (major version, shared library file name).
fn nightly_llvm(sysroot: &Path) -> anyhow::Result<(String, String)> {
    let vv = output(rustup().args(["run", "nightly", "rustc", "-vV"]))
        .context("running rustc +nightly -vV")?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc -vV printed no LLVM version")?;
    let major = version.split('.').next().unwrap_or_default().to_owned();
    let lib = sysroot.join("lib");
    let file = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    Ok((major, file))
}

/// A kept directory that looks like an LLVM install to bpf-linker's build (LLVM_PREFIX), made of
/// links to the nightly's library. bpf-linker keeps it in its RUNPATH, so it must stay.
fn llvm_prefix() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/slowtrace/llvm-nightly")
}

fn bpf_linker() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot().context("nightly toolchain missing")?;
    let (major, file) = nightly_llvm(&sysroot)?;
    let prefix = llvm_prefix();
    let stamp = prefix.join("stamp");
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION} llvm {file}\n");
    let works = output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if works && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} ({file})");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let target = sysroot.join("lib").join(&file);
    for name in [file.as_str(), "libLLVM.so"] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&target, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env_remove("RUSTUP_TOOLCHAIN")
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ]);
    util::run(&mut cmd)?;
    fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0")
}

fn debian(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}; run as root or: sudo apt-get install {}",
            missing.join(" ")
        );
    }
    util::run(Command::new("apt-get").args(["update", "-qq"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

/// The newest pyenv CPython `minor` (e.g. "3.12"), if installed.
pub fn pyenv_python(minor: &str) -> Option<PathBuf> {
    let pyenv = PathBuf::from("/root/.pyenv/versions");
    let mut v: Vec<String> = fs::read_dir(&pyenv)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix(minor)
                .is_some_and(|rest| rest.starts_with('.'))
        })
        .collect();
    v.sort_by_key(|n| {
        n.rsplit('.')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0)
    });
    v.last().map(|best| pyenv.join(best).join("bin/python3"))
}

/// Pythons the slow-request tests run against, besides the default venv's 3.11.
pub const EXTRA_PYTHONS: &[&str] = &["3.9", "3.10", "3.12", "3.13"];

/// The requirements file of a venv: 3.9 cannot install Django 5.
fn requirements_for(minor: &str) -> &'static str {
    match minor {
        "3.9" => "tests/requirements-py39.txt",
        _ => "tests/requirements.txt",
    }
}

fn python_venv() -> anyhow::Result<()> {
    let default = pyenv_python("3.11").unwrap_or_else(|| PathBuf::from("python3"));
    make_venv(&util::venv(), &default, requirements_for("3.11"))?;
    // The fleet tests' OTLP trace backend, Arize Phoenix, in a venv of its own (it pins many
    // packages of its own, and needs Python 3.10 or later).
    let phoenix_python = pyenv_python("3.12").unwrap_or_else(|| PathBuf::from("python3"));
    make_venv(
        &util::root().join("target/venv-phoenix"),
        &phoenix_python,
        "tests/requirements-phoenix.txt",
    )?;
    for minor in EXTRA_PYTHONS {
        match pyenv_python(minor) {
            Some(py) => make_venv(
                &util::root().join(format!("target/venv-{minor}")),
                &py,
                requirements_for(minor),
            )?,
            None => eprintln!("xtask: note: no pyenv CPython {minor}; its tests will be skipped"),
        }
    }
    Ok(())
}

fn make_venv(venv: &Path, base: &Path, requirements: &str) -> anyhow::Result<()> {
    let venv = venv.to_owned();
    let req_file = util::root().join(requirements);
    let req =
        fs::read_to_string(&req_file).with_context(|| format!("reading {}", req_file.display()))?;
    let stamp = venv.join(".slowtrace-requirements");
    let py = venv.join("bin/python");
    if py.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == req) {
        return Ok(());
    }
    if !py.exists() {
        util::run(Command::new(base).arg("-m").arg("venv").arg(&venv))?;
    }
    util::run(
        Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&req_file),
    )?;
    fs::write(&stamp, req).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}
