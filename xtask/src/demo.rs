//! `cargo xtask demo`: the bundled demo app under load, traced by `slowtrace record`.

use std::{
    io::IsTerminal as _,
    net::TcpStream,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{setup, util};

/// Kills the child when dropped, so an error never leaves a server behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM lets gunicorn stop its workers.
        unsafe { libc_kill(self.0.id() as i32, 15) };
        let _ = self.0.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn run(duration: &str) -> anyhow::Result<()> {
    // A free port, so a server already on some fixed port is never mistaken for the demo.
    let port_num = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    setup::run(true)?;
    util::build_release()?;
    let root = util::root();
    let venv = util::venv();
    let out = root.join("target/demo-out");

    // Redis for the demo's cache endpoint (a repeated-key finding); any free port.
    let redis_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _redis = Guard(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .spawn()
            .context("starting redis-server (cargo xtask setup installs it)")?,
    );
    wait_listening(redis_port)?;
    eprintln!("xtask: starting the demo app (gunicorn, 4 sync workers) on 127.0.0.1:{port_num}");
    let server = Guard(
        Command::new(venv.join("bin/gunicorn"))
            .current_dir(root.join("demo"))
            .env("REDIS_PORT", redis_port.to_string())
            .args([
                "--workers",
                "4",
                "--bind",
                &format!("127.0.0.1:{port_num}"),
                "--log-level",
                "warning",
                "app:app",
            ])
            .spawn()
            .context("starting gunicorn")?,
    );
    wait_listening(port_num)?;

    let secs = humantime_secs(duration)?;
    // In a terminal the demo is the live dashboard (quit with q); without one (CI, a pipe) it
    // records for the duration and prints the summary.
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let load_secs = if interactive { 3600 } else { secs + 2 };
    eprintln!("xtask: load generator running; tracing port {port_num}");
    let load = Guard(
        Command::new(venv.join("bin/python"))
            .arg(root.join("demo/load.py"))
            .args([
                "--port",
                &port_num.to_string(),
                "--seconds",
                &load_secs.to_string(),
            ])
            .spawn()
            .context("starting the load generator")?,
    );
    let port = port_num.to_string();
    let mut cmd = Command::new(util::slowtrace_bin());
    if interactive {
        eprintln!(
            "xtask: opening slowtrace top (q quits); files go to {}",
            out.display()
        );
        cmd.args(["top", "--port", &port, "--threshold", "300ms", "--export"])
            .arg(&out);
    } else {
        cmd.args([
            "record",
            "--port",
            &port,
            "--threshold",
            "300ms",
            "--duration",
            duration,
            "--flamegraph",
            "-o",
        ])
        .arg(&out);
    }
    let status = cmd.status().context("running slowtrace")?;
    drop(load);
    drop(server);
    if !status.success() {
        bail!("slowtrace record failed ({status}); run this as root");
    }
    eprintln!(
        "xtask: per-request records are in {}",
        out.join("requests.jsonl").display()
    );
    Ok(())
}

fn humantime_secs(s: &str) -> anyhow::Result<u64> {
    let n: String = s.chars().take_while(char::is_ascii_digit).collect();
    let unit = &s[n.len()..];
    let n: u64 = n.parse().with_context(|| format!("bad duration {s}"))?;
    Ok(match unit {
        "" | "s" => n,
        "m" => n * 60,
        _ => bail!("use a duration like 20s or 2m, not {s}"),
    })
}

fn wait_listening(port: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the demo app did not listen on port {port} within 20 s")
}
