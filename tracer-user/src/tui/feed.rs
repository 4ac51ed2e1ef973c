//! The agent on its own thread, feeding the dashboard through a bounded channel.
//!
//! Every request goes to requests.jsonl on the agent thread first, so the file is complete
//! whatever happens to the screen; only then is the event offered to the dashboard. If the
//! dashboard falls behind, the channel is full and the event is dropped for the screen only, and
//! counted ("ui overflow" in the header): the agent never waits for drawing.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::Context as _;

use crate::{
    agent::{Agent, AgentConfig, AgentEvent, Consumer, Finished, Stop},
    sinks::{jsonl::JsonlSink, Sink as _},
};

/// Events queued for the dashboard at most. At 250 ms per frame this is tens of thousands of
/// requests per second before the screen misses any.
pub const CAPACITY: usize = 16 * 1024;

/// Where the dashboard's events come from: the agent thread, or a test.
pub trait Source {
    /// An event if one is ready, without waiting.
    fn try_next(&mut self) -> Option<AgentEvent>;
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

/// The agent's consumer: the file first, then the screen.
struct Forwarder {
    sink: JsonlSink,
    tx: SyncSender<AgentEvent>,
    overflow: Arc<AtomicU64>,
    flushed: Arc<AtomicU64>,
}

impl Consumer for Forwarder {
    fn on_event(&mut self, ev: AgentEvent) -> anyhow::Result<()> {
        match &ev {
            AgentEvent::Request(r) => self.sink.request(r).context("writing requests.jsonl")?,
            // Flushed every scan, as `record` does: on disk within 250 ms.
            AgentEvent::Tick { .. } => {
                self.sink.flush().context("writing requests.jsonl")?;
                self.flushed.store(self.sink.written, Ordering::Relaxed);
            }
        }
        match self.tx.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.overflow.fetch_add(1, Ordering::Relaxed);
            }
            // The dashboard has quit; the file still gets everything until the agent stops.
            Err(TrySendError::Disconnected(_)) => {}
        }
        Ok(())
    }
}

/// How the agent thread ended.
#[derive(Debug)]
pub struct Outcome {
    pub finished: Finished,
    /// Requests written to requests.jsonl.
    pub written: u64,
}

/// The running agent thread.
pub struct Feed {
    rx: Receiver<AgentEvent>,
    stop: Arc<AtomicBool>,
    overflow: Arc<AtomicU64>,
    flushed: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<Outcome>>>,
    /// Kept once the thread is joined.
    result: Option<anyhow::Result<Outcome>>,
    pub described: String,
    pub attach_mode: String,
}

impl Feed {
    /// Attach on a new thread and return once attached, so an attach error is reported before
    /// the dashboard takes the terminal. The agent is built on its thread and never moves.
    pub fn start(cfg: AgentConfig, sink: JsonlSink) -> anyhow::Result<Feed> {
        let (tx, rx) = mpsc::sync_channel(CAPACITY);
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<(String, String)>>();
        let stop = Arc::new(AtomicBool::new(false));
        let overflow = Arc::new(AtomicU64::new(0));
        let flushed = Arc::new(AtomicU64::new(0));
        let mut fwd = Forwarder {
            sink,
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
                let _ = ready_tx.send(Ok((agent.described.clone(), agent.attach_mode.clone())));
                let finished = agent.run(&mut fwd, None, stop_flag)?;
                fwd.sink.flush().context("writing requests.jsonl")?;
                Ok(Outcome {
                    finished,
                    written: fwd.sink.written,
                })
            })
            .context("starting the tracing thread")?;
        let (described, attach_mode) = match ready_rx.recv() {
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
    fn try_next(&mut self) -> Option<AgentEvent> {
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
            sink: JsonlSink::create(&path).unwrap(),
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
}
