//! `slowtrace top`: a live dashboard over the same agent and model as `record`.
//!
//! Threads: the agent runs on its own thread (`feed`), writes every request to requests.jsonl
//! (slow ones with their captures to slow.jsonl and slow/*.txt) and offers events to this thread
//! over a bounded channel; this thread owns the terminal and
//! runs `event_loop`: apply events to the pure `App`/`Dashboard` state, draw it (`ui`), wait up
//! to one tick for a key. Events, keys and time all come in through `Io`, so tests drive the whole
//! loop with synthetic events, scripted keys and a fake clock on ratatui's `TestBackend`.

mod app;
#[cfg(test)]
mod bench;
mod breakdown;
pub(crate) mod captures;
mod cpu;
mod detail;
mod endpoints;
mod export;
mod feed;
mod findings;
mod footer;
mod frames;
mod rate;
pub(crate) mod state;
mod terminal;
mod ui;

#[cfg(test)]
mod capture_tests;
#[cfg(test)]
mod cpu_tests;
#[cfg(test)]
mod findings_tests;
#[cfg(test)]
mod tests;

use std::{
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ratatui::{backend::Backend, crossterm::event::Event, Terminal};

use self::{
    app::{Action, App},
    export::{Kept, Spool},
    feed::{Ended, Feed, Source},
    state::Meta,
    terminal::Input,
};
use crate::{cli::DEFAULT_OUTPUT_DIR, config::TopConfig, record::loss_report, sinks::files::Files};

/// The screen is redrawn at least this often: 4 frames per second, and the agent's scan
/// period, so in-flight durations move every frame.
pub const TICK: Duration = Duration::from_millis(250);

/// Events applied between two frames at most, so a flood cannot starve keys and drawing (the
/// rest wait in the channel; if it fills, the overflow is counted).
const MAX_EVENTS_PER_FRAME: usize = 50_000;

/// What the loop talks to: the world for `run`, fakes for tests.
pub struct Io<'a> {
    pub source: &'a mut dyn Source,
    pub input: &'a mut dyn Input,
    /// Time since the dashboard started.
    pub clock: &'a dyn Fn() -> Duration,
    /// The `e` key, given the number of requests on disk; returns the message to show.
    pub export: &'a mut dyn FnMut(u64) -> Result<String, String>,
}

/// Why the loop returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Quit,
    /// The agent stopped on its own, in a way that ends the dashboard too.
    Ended(Ended),
}

pub fn event_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    io: Io<'_>,
) -> anyhow::Result<Exit>
where
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut ended_seen = false;
    loop {
        let now = (io.clock)();
        drain(app, io.source, now);
        if !ended_seen {
            if let Some(end) = io.source.ended() {
                if end.quit {
                    return Ok(Exit::Ended(end));
                }
                // The command exited: keep the numbers on screen until the user quits.
                app.set_stopped(end.why);
                ended_seen = true;
            }
        }
        app.prepare(now);
        terminal.draw(|f| ui::draw(f, app))?;
        // A resize needs nothing more: the next draw takes the new size.
        if let Some(Event::Key(k)) = io.input.next(TICK)? {
            match app.on_key(k) {
                Action::Quit => return Ok(Exit::Quit),
                Action::Export => {
                    let msg = (io.export)(io.source.written())
                        .unwrap_or_else(|e| format!("export failed: {e}"));
                    app.status = Some(msg);
                }
                Action::None => {}
            }
        }
    }
}

/// Apply what the agent sent since the last frame (at most `MAX_EVENTS_PER_FRAME`). Returns how
/// many events were applied. Shared with `bench`, so it measures what `top` does.
fn drain(app: &mut App, source: &mut dyn Source, now: Duration) -> usize {
    let mut n = 0;
    while n < MAX_EVENTS_PER_FRAME {
        match source.try_next() {
            Some(ev) => app.apply(ev, now),
            None => break,
        }
        n += 1;
    }
    app.set_ui_overflow(source.overflow());
    n
}

pub fn run(cfg: TopConfig) -> anyhow::Result<ExitCode> {
    let TopConfig { mut agent, export } = cfg;
    let mut spool = Spool::new(export.as_deref()).context("creating requests.jsonl")?;
    let files = Files::create(
        spool.dir(),
        agent.capture.is_some(),
        !agent.handlers.is_empty(),
    )?;
    // The terminal is the dashboard's: a launched command writes to a file next to the others.
    if agent.targets.command.is_some() {
        agent.command_output = Some(spool.command_log());
    }
    // Attach errors come back from here, before the terminal changes.
    let mut feed = Feed::start(agent.clone(), files)?;
    let feed_degraded = feed.degraded.clone();
    let mut app = App::new(Meta {
        targets: feed.described.clone(),
        attach_mode: feed.attach_mode.clone(),
        threshold: agent.threshold(),
        sample_hz: agent.profile.as_ref().map_or(0, |p| p.sample_hz),
        // The perf event that takes on-CPU samples also takes the captures' native stacks.
        sampling_note: feed_degraded
            .iter()
            .find(|d| d.starts_with("on-CPU stacks"))
            .cloned(),
        n_plus_one: agent.n_plus_one,
    });
    // Log lines would be drawn over the dashboard: off while it owns the terminal.
    let level = log::max_level();
    log::set_max_level(log::LevelFilter::Off);
    let started = Instant::now();
    let looped = terminal::enter()
        .context("setting up the terminal")
        .and_then(|mut guard| {
            let clock = || started.elapsed();
            let mut export = |flushed| spool.export_now(flushed, Path::new(DEFAULT_OUTPUT_DIR));
            event_loop(
                &mut guard.terminal,
                &mut app,
                Io {
                    source: &mut feed,
                    input: &mut terminal::Crossterm,
                    clock: &clock,
                    export: &mut export,
                },
            )
            // The guard drops here: the terminal is back before anything is printed.
        });
    log::set_max_level(level);
    let elapsed = started.elapsed();
    // Detaching the probes takes a moment; the terminal is already back.
    eprintln!("slowtrace: stopping…");
    let outcome = feed.finish();
    let kept = spool.finish();
    let exit = looped?;
    let outcome = outcome?;
    let kept = kept.context("completing the export")?;

    let d = app.live();
    let why = match (&exit, &d.stopped) {
        (Exit::Ended(e), _) => e.why.as_str(),
        // The command exited and the numbers stayed on screen until q.
        (Exit::Quit, Some(why)) => why.as_str(),
        (Exit::Quit, None) => "quitting the dashboard",
    };
    let mut lines = vec![format!(
        "slowtrace: {} requests in {:.1}s, {} endpoints; stopped by {why}",
        d.total,
        elapsed.as_secs_f64(),
        d.endpoints().len(),
    )];
    lines.push(match &kept {
        Kept::In(dir) => format!(
            "slowtrace: {} records written to {}",
            outcome.written,
            dir.join(export::REQUESTS).display()
        ),
        Kept::Discarded => format!(
            "slowtrace: {} records not kept (press e, or run with --export DIR)",
            outcome.written
        ),
    });
    if let Some((slow, killed)) = outcome.slow {
        let whither = match &kept {
            Kept::In(dir) => format!(
                "in {} and {}",
                dir.join(export::SLOW).display(),
                dir.join(export::SLOW_REPORTS).display()
            ),
            Kept::Discarded => "not kept".into(),
        };
        lines.push(format!(
            "slowtrace: {slow} slow requests, {killed} killed with a request in flight; \
             captures {whither}"
        ));
    }
    if let (n @ 1.., Kept::In(dir)) = (outcome.findings, &kept) {
        lines.push(format!(
            "slowtrace: {n} requests with findings in {}",
            dir.join(export::FINDINGS).display()
        ));
    }
    if let (n @ 1.., Kept::In(dir)) = (outcome.handler_calls, &kept) {
        lines.push(format!(
            "slowtrace: {n} handler calls in {}",
            dir.join(export::HANDLERS).display()
        ));
    }
    // Said at the end: while the dashboard runs, the terminal is its.
    for d in &feed_degraded {
        lines.push(format!("slowtrace: note: {d}"));
    }
    if let (Some(_), Kept::In(dir)) = (&agent.targets.command, &kept) {
        lines.push(format!(
            "slowtrace: the command's output is in {}",
            dir.join(export::COMMAND_LOG).display()
        ));
    }
    if d.ui_overflow > 0 {
        lines.push(format!(
            "slowtrace: the dashboard fell behind and skipped {} events; the file has them all",
            d.ui_overflow
        ));
    }
    lines.extend(loss_report(&outcome.finished.counters));
    lines.extend(crate::reaper::STATS.report());
    for l in lines {
        eprintln!("{l}");
    }
    Ok(match outcome.finished.command_status {
        Some(code) if code != 0 => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        _ => ExitCode::SUCCESS,
    })
}
