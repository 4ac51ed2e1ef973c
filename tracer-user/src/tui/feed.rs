//! The agent on its own thread, feeding the dashboard through a bounded channel.
//!
//! Every request goes to requests.jsonl on the agent thread first (slow requests also to
//! slow.jsonl and slow/*.txt, handler calls to handlers.jsonl, as `record` writes them), so the
//! files are complete whatever happens to the screen; only then is the event offered to the
//! dashboard. If the dashboard falls behind, the channel is full and the event is dropped for the
//! screen only, and counted ("ui overflow" in the header): the agent never waits for drawing.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::Context as _;

use super::state::Update;
use crate::{
    agent::{Agent, AgentEvent, Consumer, Finished, Stop},
    config::AgentConfig,
    model::{handler::HandlerCall, profile::HotFrame, slow::SlowRequest},
    sinks::files::Files,
};

/// Events queued for the dashboard at most. At 250 ms per frame this is tens of thousands of
/// requests per second before the screen misses any.
pub const CAPACITY: usize = 16 * 1024;

/// Where the dashboard's events come from: the agent thread, or a test.
pub trait Source {
    /// An event if one is ready, without waiting.
    fn try_next(&mut self) -> Option<Update>;
    /// Events the dashboard missed so far.
    fn overflow(&self) -> u64;
    /// Requests on disk in requests.jsonl so far.
    fn written(&self) -> u64;
    /// Once the agent has stopped on its own, why.
    fn ended(&mut self) -> Option<Ended>;
}

/// The agent stopped without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// What stopped it ("the command exiting", "SIGTERM"), or the error.
    pub why: String,
    /// Leave the dashboard too (a signal, an error); otherwise it stays up for reading.
    pub quit: bool,
}

/// The agent's consumer: the files first, then the screen.
pub(super) struct Forwarder {
    pub(super) files: Files,
    pub(super) tx: SyncSender<Update>,
    pub(super) overflow: Arc<AtomicU64>,
    pub(super) flushed: Arc<AtomicU64>,
}

impl Forwarder {
    fn offer(&self, u: Update) {
        match self.tx.try_send(u) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.overflow.fetch_add(1, Ordering::Relaxed);
            }
            // The dashboard has quit; the files still get everything until the agent stops.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Consumer for Forwarder {
    fn on_event(&mut self, ev: AgentEvent) -> anyhow::Result<()> {
        match &ev {
            AgentEvent::Request(r) => self.files.request(r)?,
            // Flushed every scan, as `record` does: on disk within 250 ms.
            AgentEvent::Tick { .. } => {
                self.files.flush()?;
                self.flushed
                    .store(self.files.requests.written, Ordering::Relaxed);
            }
        }
        self.offer(Update::Agent(ev));
        Ok(())
    }

    fn on_slow(&mut self, slow: &SlowRequest) -> anyhow::Result<()> {
        self.files.slow(slow)?;
        self.offer(Update::Slow(Box::new(slow.clone())));
        Ok(())
    }

    /// The CPU profile's hot frames, every scan while sampling. Each list replaces the last, so
    /// one that does not fit is not missed (the next comes in 250 ms): not counted as overflow.
    fn on_profile(&mut self, hot: &[HotFrame]) -> anyhow::Result<()> {
        let _ = self.tx.try_send(Update::Profile(hot.to_vec()));
        Ok(())
    }

    fn on_handler(&mut self, call: &HandlerCall) -> anyhow::Result<()> {
        self.files.handler(call)?;
        self.offer(Update::Handler(Box::new(call.clone())));
        Ok(())
    }
}

/// How the agent thread ended.
#[derive(Debug)]
pub struct Outcome {
    pub finished: Finished,
    /// Requests written to requests.jsonl.
    pub written: u64,
    /// Slow and killed requests written to slow.jsonl (None: captures were off).
    pub slow: Option<(u64, u64)>,
    /// Calls written to handlers.jsonl.
    pub handler_calls: u64,
    /// Request lines written to findings.jsonl.
    pub findings: u64,
}

/// The running agent thread.
pub struct Feed {
    rx: Receiver<Update>,
    stop: Arc<AtomicBool>,
    overflow: Arc<AtomicU64>,
    flushed: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<Outcome>>>,
    /// Kept once the thread is joined.
    result: Option<anyhow::Result<Outcome>>,
    pub described: String,
    pub attach_mode: String,
    /// Capture pieces that could not be attached (e.g. no perf events: no native stacks).
    pub degraded: Vec<String>,
}

/// What the agent thread reports once attached.
type Ready = (String, String, Vec<String>);

impl Feed {
    /// Attach on a new thread and return once attached, so an attach error is reported before
    /// the dashboard takes the terminal. The agent is built on its thread and never moves.
    pub fn start(cfg: AgentConfig, files: Files) -> anyhow::Result<Feed> {
        let (tx, rx) = mpsc::sync_channel(CAPACITY);
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<Ready>>();
        let stop = Arc::new(AtomicBool::new(false));
        let overflow = Arc::new(AtomicU64::new(0));
        let flushed = Arc::new(AtomicU64::new(0));
        let mut fwd = Forwarder {
            files,
            tx,
            overflow: overflow.clone(),
            flushed: flushed.clone(),
        };
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("slowtrace-agent".into())
            .spawn(move || -> anyhow::Result<Outcome> {
                let agent = match Agent::attach(&cfg) {
                    Ok(a) => a,
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let _ = ready_tx.send(Err(e));
                        anyhow::bail!(msg);
                    }
                };
                let _ = ready_tx.send(Ok((
                    agent.described.clone(),
                    agent.attach_mode.clone(),
                    agent.degraded.clone(),
                )));
                let finished = agent.run(&mut fwd, None, stop_flag)?;
                let f = &mut fwd.files;
                f.flush()?;
                Ok(Outcome {
                    finished,
                    written: f.requests.written,
                    slow: f.slow.as_ref().map(|s| (s.slow, s.killed)),
                    handler_calls: f.handlers.as_ref().map_or(0, |h| h.written),
                    findings: f.findings.out.written,
                })
            })
            .context("starting the tracing thread")?;
        let (described, attach_mode, degraded) = match ready_rx.recv() {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                // The thread died without a word: it panicked (the hook printed why).
                let _ = thread.join();
                anyhow::bail!("the tracing thread failed while attaching");
            }
        };
        Ok(Feed {
            rx,
            stop,
            overflow,
            flushed,
            thread: Some(thread),
            result: None,
            described,
            attach_mode,
            degraded,
        })
    }

    fn reap_if_done(&mut self) {
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            if let Some(t) = self.thread.take() {
                self.result = Some(join(t));
            }
        }
    }

    /// Ask the agent to stop (it looks every 250 ms) and wait for it: open requests are written
    /// to the file before it returns.
    pub fn finish(mut self) -> anyhow::Result<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            self.result = Some(join(t));
        }
        self.result
            .take()
            .unwrap_or_else(|| Err(anyhow::anyhow!("the tracing thread was already joined")))
    }
}

fn join(t: JoinHandle<anyhow::Result<Outcome>>) -> anyhow::Result<Outcome> {
    t.join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the tracing thread panicked")))
}

impl Source for Feed {
    fn try_next(&mut self) -> Option<Update> {
        self.rx.try_recv().ok()
    }

    fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    fn written(&self) -> u64 {
        self.flushed.load(Ordering::Relaxed)
    }

    fn ended(&mut self) -> Option<Ended> {
        // A panicking agent thread gave the terminal back in the panic hook, before it is seen
        // as finished here: stop drawing at once, so the message is not drawn over.
        if super::terminal::panicked() {
            return Some(Ended {
                why: "a panic (see above)".into(),
                quit: true,
            });
        }
        self.reap_if_done();
        Some(match self.result.as_ref()? {
            Ok(o) => Ended {
                why: o.finished.stop.to_string(),
                // Signals mean "go away"; a command that exited leaves its numbers to read.
                quit: matches!(o.finished.stop, Stop::CtrlC | Stop::Sigterm),
            },
            Err(e) => Ended {
                why: format!("{e:#}"),
                quit: true,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_channel_drops_for_the_screen_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.jsonl");
        let (tx, rx) = mpsc::sync_channel(2);
        let mut fwd = Forwarder {
            files: Files::create(dir.path(), false, false).unwrap(),
            tx,
            overflow: Arc::default(),
            flushed: Arc::default(),
        };
        let req = crate::tui::state::tests::req("GET /a", 5, 200);
        for _ in 0..5 {
            fwd.on_event(AgentEvent::Request(Box::new(req.clone())))
                .unwrap();
        }
        fwd.on_event(AgentEvent::Tick {
            in_flight: vec![],
            counters: Default::default(),
        })
        .unwrap();
        assert_eq!(rx.try_iter().count(), 2);
        assert_eq!(
            fwd.overflow.load(Ordering::Relaxed),
            4,
            "3 requests and the tick"
        );
        assert_eq!(fwd.flushed.load(Ordering::Relaxed), 5);
        let lines = std::fs::read_to_string(&path).unwrap();
        assert_eq!(lines.lines().count(), 5, "the file has every request");
        drop(rx);
        fwd.on_event(AgentEvent::Request(Box::new(req))).unwrap();
        assert_eq!(
            fwd.overflow.load(Ordering::Relaxed),
            4,
            "quitting is not overflow"
        );
    }

    #[test]
    fn slow_requests_go_to_their_files_then_the_screen() {
        use crate::tui::captures::tests::{capture, py, slow_request};
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::sync_channel(1);
        let mut fwd = Forwarder {
            files: Files::create(dir.path(), true, false).unwrap(),
            tx,
            overflow: Arc::default(),
            flushed: Arc::default(),
        };
        let r = crate::tui::state::tests::req("GET /slow", 1500, 200);
        let s = slow_request(
            r,
            vec![capture(1000, vec![py("view", "app.py", 3)], vec![])],
        );
        fwd.on_slow(&s).unwrap();
        fwd.on_slow(&s).unwrap();
        assert_eq!(
            fwd.overflow.load(Ordering::Relaxed),
            1,
            "the second did not fit"
        );
        match rx.try_recv().unwrap() {
            Update::Slow(got) => assert_eq!(*got, s),
            other => panic!("{other:?}"),
        }
        fwd.files.flush().unwrap();
        let lines = std::fs::read_to_string(dir.path().join("slow.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 2, "the file has both");
        let reports = std::fs::read_dir(dir.path().join("slow")).unwrap().count();
        assert_eq!(reports, 2);
    }
}
