//! A real terminal for `slowtrace top`: a private tmux server with one session, read with
//! `capture-pane`, typed into with `send-keys`, killed on drop.

use std::{
    process::Command,
    time::{Duration, Instant},
};

pub struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// A `width`×`height` session running `shell_cmd`; `name` keeps tests apart.
    pub fn start(name: &str, width: u16, height: u16, shell_cmd: &str) -> Tmux {
        let t = Tmux {
            socket: format!("slowtrace-{name}-{}", std::process::id()),
        };
        let ok = t
            .cmd()
            .args(["new-session", "-d", "-s", "top", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg(shell_cmd)
            .status()
            .expect("running tmux")
            .success();
        assert!(ok, "tmux new-session failed");
        t
    }

    pub fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn keys(&self, keys: &str) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "top", keys])
            .status()
            .expect("tmux send-keys")
            .success();
        assert!(ok, "tmux send-keys {keys}");
    }

    /// Poll the screen until `ok` holds; the last screen either way.
    pub fn wait_for(&self, timeout: Duration, ok: impl Fn(&str) -> bool) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if ok(&s) {
                return Ok(s);
            }
            if start.elapsed() > timeout {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}
