//! The only things slowtrace ever does *to* a traced process, both opt-in:
//!
//! * `--interrupt-after DURATION:SIGNAL` (interruptingcow from outside): a request running past
//!   the deadline gets SIGNAL once, on the thread serving it, so an app that turns that signal
//!   into an exception fails the request cleanly before the server's own hard kill;
//! * `--dump-signal SIGNAL`: at the threshold, a signal the app registered for its own dump
//!   (e.g. Python's `faulthandler.register`).
//!
//! A signal the process does not catch would kill it (or stop it), so it is only sent when
//! /proc/PID/status says the process catches it, unless `--force`.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use crate::{capture::watchdog::RequestKey, model::slow::signal_name};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ActError {
    #[error("unknown signal {0:?} (use a name like SIGALRM or USR1, or a number)")]
    UnknownSignal(String),
    #[error("--interrupt-after {0:?}: expected DURATION:SIGNAL, e.g. 25s:SIGALRM")]
    Syntax(String),
    #[error("--interrupt-after {spec}: {source}")]
    Duration {
        spec: String,
        source: humantime::DurationError,
    },
    #[error(
        "pid {pid} ({comm}) does not catch {signal}: sending it would kill or stop the process. \
         Install a handler in the app, pick a signal it handles, or give --force"
    )]
    NotCaught {
        pid: u32,
        comm: String,
        signal: String,
    },
}

/// `SIGALRM`, `ALRM`, `alrm` or `14`.
pub fn parse_signal(s: &str) -> Result<i32, ActError> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    (1..=31)
        .find(|&n| signal_name(n) == name)
        .map(|n| n as i32)
        .ok_or_else(|| ActError::UnknownSignal(s.to_owned()))
}

/// `25s:SIGALRM`
pub fn parse_interrupt(spec: &str) -> Result<(Duration, i32), ActError> {
    let (d, sig) = spec
        .rsplit_once(':')
        .ok_or_else(|| ActError::Syntax(spec.to_owned()))?;
    let d = humantime::parse_duration(d).map_err(|source| ActError::Duration {
        spec: spec.to_owned(),
        source,
    })?;
    Ok((d, parse_signal(sig)?))
}

/// Whether `pid` has a handler for `sig` (SigCgt in /proc/PID/status).
pub fn catches(pid: u32, sig: i32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
    let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
    Some((1..=64).contains(&sig) && mask & (1u64 << (sig - 1)) != 0)
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Refuse at start-up when a target already running does not catch the signal. A pre-fork
/// server's master never serves requests (its workers do), so a target passes when it or one of
/// its children catches the signal; each send is checked again for the process it goes to.
pub fn check_catches(pids: &[u32], sig: i32, force: bool) -> Result<(), ActError> {
    if force {
        return Ok(());
    }
    for &pid in pids {
        let family = std::iter::once(pid).chain(children(pid));
        if !family.into_iter().any(|p| catches(p, sig) == Some(true)) && catches(pid, sig).is_some()
        {
            return Err(ActError::NotCaught {
                pid,
                comm: comm(pid),
                signal: signal_name(sig as u32),
            });
        }
    }
    Ok(())
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// What was done to a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sent {
    pub signal: String,
    /// Since request start.
    pub at_ms: u64,
    /// `interrupt` or `dump`.
    pub why: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub interrupt: Option<(Duration, i32)>,
    pub dump: Option<(Duration, i32)>,
    pub force: bool,
}

/// Sends each signal at most once per request and remembers what it sent.
#[derive(Debug)]
pub struct Actor {
    policy: Policy,
    sent: HashMap<RequestKey, Vec<Sent>>,
    /// (pid, signal) pairs refused because the process does not catch the signal.
    refused: HashSet<(u32, i32)>,
}

impl Actor {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            sent: HashMap::new(),
            refused: HashSet::new(),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Running requests → signals to send now: (key, pid, tid, signal, why).
    /// `catches` is injected so the decision is testable without processes.
    pub fn due(
        &mut self,
        running: &[(RequestKey, u32, u32, u64)],
        now_ns: u64,
        catches: impl Fn(u32, i32) -> Option<bool>,
    ) -> Vec<(RequestKey, u32, u32, i32, &'static str)> {
        let mut out = Vec::new();
        for &(key, pid, tid, start_ns) in running {
            let age = Duration::from_nanos(now_ns.saturating_sub(start_ns));
            for (rule, why) in [
                (self.policy.interrupt, "interrupt"),
                (self.policy.dump, "dump"),
            ] {
                let Some((after, sig)) = rule else { continue };
                if age < after
                    || self
                        .sent
                        .get(&key)
                        .is_some_and(|v| v.iter().any(|s| s.why == why))
                {
                    continue;
                }
                if !self.policy.force && catches(pid, sig) != Some(true) {
                    if self.refused.insert((pid, sig)) {
                        eprintln!(
                            "slowtrace: not sending {} to pid {pid}: it does not catch it (--force to send anyway)",
                            signal_name(sig as u32)
                        );
                    }
                    continue;
                }
                self.sent.entry(key).or_default().push(Sent {
                    signal: signal_name(sig as u32),
                    at_ms: age.as_millis() as u64,
                    why,
                });
                out.push((key, pid, tid, sig, why));
            }
        }
        out
    }

    /// The earliest deadline among running requests of a signal not sent yet (the agent's timer
    /// fires then, so a signal leaves within a few ms of its deadline, not on the next scan).
    pub fn next_due(&self, running: &[(RequestKey, u32, u32, u64)]) -> Option<u64> {
        running
            .iter()
            .flat_map(|&(key, pid, _, start_ns)| {
                [
                    (self.policy.interrupt, "interrupt"),
                    (self.policy.dump, "dump"),
                ]
                .into_iter()
                .filter_map(move |(rule, why)| {
                    let (after, sig) = rule?;
                    let sent = self
                        .sent
                        .get(&key)
                        .is_some_and(|v| v.iter().any(|s| s.why == why));
                    (!sent && !self.refused.contains(&(pid, sig)))
                        .then(|| start_ns + after.as_nanos() as u64)
                })
            })
            .min()
    }

    /// What was sent to a request that ended (and forget it).
    pub fn finish(&mut self, key: &RequestKey) -> Vec<Sent> {
        self.sent.remove(key).unwrap_or_default()
    }
}

/// What was sent to requests of a process that died before they ended, and its refusals (a
/// new process with the same pid may catch the signal).
impl crate::reaper::PerProcess for Actor {
    fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .sent
            .keys()
            .map(|k| k.0)
            .chain(self.refused.iter().map(|r| r.0))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn forget_process(&mut self, pid: u32) -> bool {
        let before = self.sent.len() + self.refused.len();
        self.sent.retain(|k, _| k.0 != pid);
        self.refused.retain(|r| r.0 != pid);
        self.sent.len() + self.refused.len() != before
    }
}

/// tgkill: the signal goes to the one thread serving the request.
pub fn send(pid: u32, tid: u32, sig: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            pid as libc::c_long,
            tid as libc::c_long,
            sig as libc::c_long,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGALRM"), Ok(14));
        assert_eq!(parse_signal("usr1"), Ok(10));
        assert_eq!(parse_signal("15"), Ok(15));
        assert!(parse_signal("SIGNOPE").is_err());
        assert_eq!(
            parse_interrupt("1s:SIGALRM"),
            Ok((Duration::from_secs(1), 14))
        );
        assert!(parse_interrupt("SIGALRM").is_err());
        assert!(parse_interrupt("soon:SIGALRM").is_err());
    }

    #[test]
    fn sends_once_and_only_if_caught() {
        let mut a = Actor::new(Policy {
            interrupt: Some((Duration::from_secs(1), 14)),
            dump: None,
            force: false,
        });
        let r = [((1, 2, 3), 10, 11, 0u64)];
        assert!(
            a.due(&r, 500_000_000, |_, _| Some(true)).is_empty(),
            "before the deadline"
        );
        assert_eq!(a.due(&r, 1_100_000_000, |_, _| Some(true)).len(), 1);
        assert!(
            a.due(&r, 2_000_000_000, |_, _| Some(true)).is_empty(),
            "once per request"
        );
        let sent = a.finish(&(1, 2, 3));
        assert_eq!(
            sent,
            [Sent {
                signal: "SIGALRM".into(),
                at_ms: 1100,
                why: "interrupt"
            }]
        );
        let other = [((1, 2, 4), 10, 11, 0u64)];
        assert!(
            a.due(&other, 5_000_000_000, |_, _| Some(false)).is_empty(),
            "not caught: refused"
        );
    }

    #[test]
    fn next_due_is_the_earliest_unsent_deadline() {
        let mut a = Actor::new(Policy {
            interrupt: Some((Duration::from_secs(1), 14)),
            dump: Some((Duration::from_millis(300), 10)),
            force: false,
        });
        let r = [((1, 2, 3), 10, 11, 5_000_000u64)];
        assert_eq!(a.next_due(&[]), None);
        assert_eq!(a.next_due(&r), Some(305_000_000), "the dump first");
        assert_eq!(a.due(&r, 305_000_000, |_, _| Some(true)).len(), 1);
        assert_eq!(a.next_due(&r), Some(1_005_000_000), "then the interrupt");
        assert_eq!(a.due(&r, 1_005_000_000, |_, _| Some(true)).len(), 1);
        assert_eq!(a.next_due(&r), None, "all sent");
        let other = [((1, 2, 4), 20, 21, 0u64)];
        a.due(&other, 2_000_000_000, |_, _| Some(false));
        assert_eq!(a.next_due(&other), None, "refused pids are not retried");
    }

    #[test]
    fn forgets_one_process() {
        use crate::reaper::PerProcess as _;
        let mut a = Actor::new(Policy {
            interrupt: Some((Duration::from_secs(1), 14)),
            dump: None,
            force: false,
        });
        // pid 10 catches the signal, pid 20 does not (refused, remembered).
        let running = [((10, 1, 0), 10, 10, 0u64), ((20, 1, 0), 20, 20, 0u64)];
        let sent = a.due(&running, 2_000_000_000, |pid, _| Some(pid == 10));
        assert_eq!(sent.len(), 1);
        assert_eq!(a.pids(), [10, 20]);
        assert!(a.forget_process(20));
        assert_eq!(a.pids(), [10]);
        assert!(a.forget_process(10));
        assert!(a.pids().is_empty());
        assert!(a.finish(&(10, 1, 0)).is_empty());
    }

    #[test]
    fn this_process_catch_mask_reads() {
        assert!(catches(std::process::id(), 9).is_some());
    }
}
