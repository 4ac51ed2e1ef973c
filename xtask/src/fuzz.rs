//! `cargo xtask fuzz --seconds N`: build the cargo-fuzz targets of `fuzz/` and run each for N
//! seconds, one after the other (one core), failing on any crash, hang or memory blow-up.
//!
//! Each target runs from the committed seeds (`fuzz/corpus/<target>`, read only) plus a working
//! corpus it adds to (`target/fuzz/<target>/corpus`, kept between runs); crashing inputs go to
//! `target/fuzz/<target>/artifacts/`, libFuzzer's log to `target/fuzz/<target>/log`. Built
//! without a sanitizer (the code under test is safe Rust: what we look for is panics, overflows
//! — debug assertions are on — and unbounded time or memory, which libFuzzer's `-timeout` and
//! `-rss_limit_mb` turn into failures).

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{setup, util};

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "http_request",
    "downstream_redis",
    "downstream_memcached",
    "downstream_postgres",
    "downstream_mysql",
    "downstream_http",
    "sql_fingerprint",
    "records",
    "python_reader",
    "linetable",
];

/// One input may take this long (libFuzzer's `-timeout`): the slowest seen is ~0.05 s.
const INPUT_TIMEOUT_S: u64 = 2;
/// A target using more memory than this fails (`-rss_limit_mb`, also the per-allocation limit).
const RSS_LIMIT_MB: u64 = 2048;

/// What one run of one target did.
pub struct Stats {
    pub target: &'static str,
    pub execs: u64,
    pub execs_per_s: u64,
    pub corpus: String,
    pub seconds: u64,
}

/// Build, then run the targets (all, or those named) `seconds` each.
pub fn run(seconds: u64, only: &[String]) -> anyhow::Result<Vec<Stats>> {
    setup::cargo_fuzz()?;
    let targets: Vec<&'static str> = TARGETS
        .iter()
        .copied()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t))
        .collect();
    if targets.is_empty() {
        bail!(
            "no fuzz target named {only:?}; targets: {}",
            TARGETS.join(", ")
        );
    }
    build()?;
    let mut stats = Vec::new();
    let mut failed = Vec::new();
    for t in targets {
        match run_one(t, seconds) {
            Ok(s) => stats.push(s),
            Err(e) => {
                eprintln!("xtask: fuzz {t}: {e:#}");
                failed.push(t);
            }
        }
    }
    println!(
        "{:<22} {:>12} {:>9} {:>14} {:>6}",
        "TARGET", "EXECS", "EXEC/S", "CORPUS", "SECS"
    );
    for s in &stats {
        println!(
            "{:<22} {:>12} {:>9} {:>14} {:>6}",
            s.target, s.execs, s.execs_per_s, s.corpus, s.seconds
        );
    }
    let total: u64 = stats.iter().map(|s| s.execs).sum();
    println!("{total} executions in all");
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in target/fuzz/<target>/artifacts/)",
            failed.join(", ")
        );
    }
    Ok(stats)
}

/// `cargo fuzz build` with the nightly, no sanitizer, debug assertions (overflow checks) on.
fn build() -> anyhow::Result<()> {
    util::run(
        Command::new("rustup")
            .env_remove("RUSTUP_TOOLCHAIN")
            .current_dir(util::root())
            .args([
                "run",
                "nightly",
                "cargo",
                "fuzz",
                "build",
                "--sanitizer",
                "none",
            ])
            .arg("--debug-assertions"),
    )
}

fn binary(target: &str) -> PathBuf {
    util::root()
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target)
}

fn run_one(target: &'static str, seconds: u64) -> anyhow::Result<Stats> {
    let work = util::root().join("target/fuzz").join(target);
    let corpus = work.join("corpus");
    let artifacts = work.join("artifacts");
    for d in [&corpus, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let seeds = util::root().join("fuzz/corpus").join(target);
    let log_path = work.join("log");
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    eprintln!("xtask: fuzzing {target} for {seconds} s");
    let started = Instant::now();
    let mut child = Command::new(binary(target))
        .arg(&corpus)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary(target).display()))?;
    // libFuzzer stops itself; this only guards against it not doing so.
    let deadline = started + Duration::from_secs(seconds + 120);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running {} s after its time", 120);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{status}; the end of {}:\n{}",
            log_path.display(),
            tail.join("\n")
        );
    }
    Ok(Stats {
        target,
        execs: stat(&text, "stat::number_of_executed_units:"),
        execs_per_s: stat(&text, "stat::average_exec_per_sec:"),
        corpus: corpus_size(&text),
        seconds: started.elapsed().as_secs(),
    })
}

/// A number libFuzzer printed after `key` (its `-print_final_stats`).
fn stat(log: &str, key: &str) -> u64 {
    log.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `corp: N/SIZE` from libFuzzer's last status line.
fn corpus_size(log: &str) -> String {
    log.lines()
        .rev()
        .find_map(|l| l.split("corp: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_stats() {
        let log =
            "#1234\tDONE   cov: 880 ft: 1895 corp: 79/612Kb lim: 13091 exec/s: 20550 rss: 28Mb\n\
                   Done 637072 runs in 31 second(s)\n\
                   stat::number_of_executed_units: 637072\n\
                   stat::average_exec_per_sec:     20550\n";
        assert_eq!(stat(log, "stat::number_of_executed_units:"), 637072);
        assert_eq!(stat(log, "stat::average_exec_per_sec:"), 20550);
        assert_eq!(corpus_size(log), "79/612Kb");
    }

    #[test]
    fn every_target_has_seeds_and_a_source() {
        let root = util::root();
        for t in TARGETS {
            let seeds = root.join("fuzz/corpus").join(t);
            let n = fs::read_dir(&seeds).map(|d| d.count()).unwrap_or(0);
            assert!(n > 0, "{} has no seeds", seeds.display());
            let src = std::path::Path::new("fuzz/fuzz_targets").join(format!("{t}.rs"));
            assert!(root.join(&src).is_file(), "{}", src.display());
        }
    }
}
