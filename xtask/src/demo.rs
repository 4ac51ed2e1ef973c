//! `cargo xtask demo`: the bundled demo app under load, traced by `slowtrace record`.

use std::{
    net::TcpStream,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{setup, util};

const PORT: u16 = 8765;

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
    setup::run(true)?;
    util::build_release()?;
    let root = util::root();
    let venv = util::venv();
    let out = root.join("target/demo-out");

    eprintln!("xtask: starting the demo app (gunicorn, 4 sync workers) on 127.0.0.1:{PORT}");
    let server = Guard(
        Command::new(venv.join("bin/gunicorn"))
            .current_dir(root.join("demo"))
            .args([
                "--workers",
                "4",
                "--bind",
                &format!("127.0.0.1:{PORT}"),
                "--log-level",
                "warning",
                "app:app",
            ])
            .spawn()
            .context("starting gunicorn")?,
    );
    wait_listening(PORT)?;

    let secs = humantime_secs(duration)?;
    eprintln!("xtask: load generator for {secs}s; tracing with slowtrace record --port {PORT}");
    let load = Guard(
        Command::new(venv.join("bin/python"))
            .arg(root.join("demo/load.py"))
            .args([
                "--port",
                &PORT.to_string(),
                "--seconds",
                &(secs + 2).to_string(),
            ])
            .spawn()
            .context("starting the load generator")?,
    );
    let status = Command::new(util::slowtrace_bin())
        .args([
            "record",
            "--port",
            &PORT.to_string(),
            "--duration",
            duration,
            "-o",
        ])
        .arg(&out)
        .status()
        .context("running slowtrace")?;
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
