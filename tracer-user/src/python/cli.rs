//! `slowtrace pystack`: print the Python stacks of a running process, or time reading them.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{PyError, PyFrame, PythonProcess};

/// Attempts per thread when its stack keeps changing under us.
const ATTEMPTS: u32 = 10;

/// Arguments of `slowtrace pystack`.
#[derive(Debug, clap::Args)]
pub struct PyStackArgs {
    /// Process to read (CPython 3.9 to 3.13). It keeps running: nothing is paused.
    #[arg(short, long, value_name = "PID")]
    pub pid: u32,

    /// Only this thread (a host TID, as in /proc/PID/task). Default: every thread.
    #[arg(short, long, value_name = "TID")]
    pub tid: Option<u32>,

    /// Benchmark: read each stack N times and print latency percentiles and system calls.
    #[arg(long, value_name = "N", hide_short_help = true)]
    pub bench: Option<u32>,
}

pub fn cli_main(args: PyStackArgs) -> anyhow::Result<ExitCode> {
    let pid = args.pid;
    let Some(mut proc) = PythonProcess::attach(pid)? else {
        bail!("process {pid} runs no CPython (-vv says why)");
    };
    let tids = match args.tid {
        Some(t) if std::path::Path::new(&format!("/proc/{pid}/task/{t}")).exists() => vec![t],
        Some(t) => bail!("thread {t} is not a thread of process {pid}"),
        None => threads_of(pid)?,
    };
    let (major, minor) = proc.version();
    println!("Process {pid} ({}): Python {major}.{minor}", comm(pid, pid));
    for tid in tids {
        println!();
        match args.bench {
            Some(n) => bench(&mut proc, pid, tid, n.max(1))?,
            None => print_thread(&mut proc, pid, tid)?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// TIDs of every thread, main thread first.
fn threads_of(pid: u32) -> anyhow::Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/task");
    let mut tids: Vec<u32> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {dir}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

fn comm(pid: u32, tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

/// A stack, read again while the thread keeps changing it under us.
fn read(proc: &mut PythonProcess, tid: u32) -> Result<Vec<PyFrame>, PyError> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match proc.stack(tid) {
            Err(e @ PyError::Torn(_)) => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or(PyError::Torn("no attempt made")))
}

fn print_thread(proc: &mut PythonProcess, pid: u32, tid: u32) -> anyhow::Result<()> {
    let name = comm(pid, tid);
    match read(proc, tid) {
        Ok(frames) if frames.is_empty() => println!("Thread {tid} \"{name}\": no Python frames"),
        Ok(frames) => {
            println!("Thread {tid} \"{name}\" (most recent call last):");
            print!("{}", format_traceback(&frames));
        }
        // The process exiting under us is an error; one odd thread is not.
        Err(e @ (PyError::ProcessGone(_) | PyError::Permission(_))) => return Err(e.into()),
        Err(e) => println!("Thread {tid} \"{name}\": {e}"),
    }
    Ok(())
}

/// Frames (innermost first) as Python prints a traceback: outermost first.
pub fn format_traceback(frames: &[PyFrame]) -> String {
    frames
        .iter()
        .rev()
        .map(|f| {
            let line = f.line.map_or_else(|| "???".to_string(), |l| l.to_string());
            format!("  File \"{}\", line {line}, in {}\n", f.file, f.function)
        })
        .collect()
}

fn bench(proc: &mut PythonProcess, pid: u32, tid: u32, n: u32) -> anyhow::Result<()> {
    let mut times: Vec<Duration> = Vec::with_capacity(n as usize);
    let mut syscalls: Vec<u32> = Vec::with_capacity(n as usize);
    let mut frames = 0;
    let mut torn = 0;
    // One read first so the code-object cache is warm, as it is for a sampler.
    let _ = proc.stack(tid);
    for _ in 0..n {
        let start = Instant::now();
        let r = proc.stack(tid);
        times.push(start.elapsed());
        syscalls.push(proc.last_syscalls());
        match r {
            Ok(f) => frames = f.len(),
            Err(PyError::Torn(_)) => torn += 1,
            Err(e) => return Err(e.into()),
        }
    }
    times.sort_unstable();
    syscalls.sort_unstable();
    let pct = |p: usize| times[(times.len() - 1) * p / 100];
    println!(
        "Thread {tid} \"{}\": {n} reads of {frames} frames: p50 {:.1?} p99 {:.1?} max {:.1?}; \
         syscalls per read p50 {} max {}; torn {torn}",
        comm(pid, tid),
        pct(50),
        pct(99),
        pct(100),
        syscalls[syscalls.len() / 2],
        syscalls[syscalls.len() - 1],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceback_order_and_format() {
        let frames = vec![
            PyFrame {
                function: "inner".into(),
                file: "/a.py".into(),
                line: Some(3),
            },
            PyFrame {
                function: "<module>".into(),
                file: "/a.py".into(),
                line: None,
            },
        ];
        assert_eq!(
            format_traceback(&frames),
            "  File \"/a.py\", line ???, in <module>\n  File \"/a.py\", line 3, in inner\n"
        );
    }
}
