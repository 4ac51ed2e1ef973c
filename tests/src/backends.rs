//! Downstream servers for the downstream-call tests, from Debian's packages, each started on a
//! free port on 127.0.0.1 in a temporary directory and stopped when dropped. Never the system
//! services.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{free_port, python, server_script, venv, wait_port, Proc};

/// PostgreSQL's binaries (Debian keeps them under /usr/lib/postgresql/VERSION/bin).
fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (cargo xtask setup installs it)")
        .flatten()
        .map(|e| e.path())
        .collect();
    versions.sort();
    versions
        .last()
        .expect("no PostgreSQL version")
        .join("bin")
        .join(name)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway PostgreSQL cluster (trust auth, no fsync) run as the `postgres` user, since
/// PostgreSQL refuses to run as root. Database `slowtrace` exists.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("chown").arg("postgres").arg(dir.path()));
        let data = dir.path().join("data");
        let as_pg = |bin: &str| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_bin(bin));
            c
        };
        run(as_pg("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data));
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        run(as_pg("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-w", "-l"])
            .arg(dir.path().join("log"))
            .arg("start"));
        run(Command::new(pg_bin("createdb")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "slowtrace",
        ]));
        Postgres { port, dir }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// redis-server without persistence.
pub fn redis() -> (Proc, u16) {
    let port = free_port();
    let p = Proc::spawn(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null()),
    );
    wait_port(port);
    (p, port)
}

/// memcached, TCP only.
pub fn memcached() -> (Proc, u16) {
    let port = free_port();
    let p = Proc::spawn(
        Command::new("memcached")
            .args([
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-u",
                "root",
            ])
            .stdout(Stdio::null()),
    );
    wait_port(port);
    (p, port)
}

/// Whether a downstream server binary is installed (CI must have them all).
pub fn installed(bin: &str) -> bool {
    if bin == "postgres" {
        return Path::new("/usr/lib/postgresql").is_dir();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// tests/servers/downstream_app.py (Django) under gunicorn, 2 sync workers, with `env` (PGPORT,
/// REDIS_PORT, MEMCACHED_PORT, ...), its tables created first. The app and its port.
pub fn downstream_app(env: &[(&str, String)]) -> (Proc, u16) {
    let with_env = |c: &mut Command| {
        c.current_dir(server_script(""));
        for (k, v) in env {
            c.env(k, v);
        }
    };
    let mut init = Command::new(python());
    with_env(init.arg("downstream_app.py").arg("init"));
    assert!(init.status().unwrap().success(), "creating the test tables");
    let port = free_port();
    let mut gunicorn = Command::new(venv().join("bin/gunicorn"));
    with_env(
        gunicorn
            .args(["--workers", "2", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--log-level", "warning", "downstream_app:application"])
            .stdout(Stdio::null()),
    );
    let app = Proc::spawn(&mut gunicorn);
    wait_port(port);
    (app, port)
}
