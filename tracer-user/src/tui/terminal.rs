//! The real terminal: raw mode and the alternate screen, always undone (on return, on error, on
//! panic), and key/resize input from crossterm behind `Input`, which tests replace.

use std::{
    io::{self, Stdout},
    sync::{
        atomic::{AtomicBool, Ordering},
        Once,
    },
    time::Duration,
};

use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        cursor, event, execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    Terminal,
};

/// Where terminal events come from.
pub trait Input {
    /// The next event, or `None` if nothing happened within `timeout`.
    fn next(&mut self, timeout: Duration) -> io::Result<Option<event::Event>>;
}

/// Keys and resizes from the terminal.
pub struct Crossterm;

impl Input for Crossterm {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<event::Event>> {
        if event::poll(timeout)? {
            event::read().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The terminal is in raw mode / on the alternate screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Undo everything `enter` did, once: the panic hook and the guard may both call it, and leaving
/// the alternate screen twice would move the cursor back over what was printed in between.
fn restore() -> io::Result<()> {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return Ok(());
    }
    // Raw mode first: it matters most if the rest fails (a shell in raw mode is unusable).
    terminal::disable_raw_mode()?;
    execute!(io::stdout(), LeaveAlternateScreen, cursor::Show)
}

/// The terminal while the dashboard owns it; dropping it gives the terminal back.
pub struct Guard {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = restore();
    }
}

/// Set by the panic hook: the terminal has been given back, nothing more may be drawn on it.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// Whether some thread panicked (and the terminal was restored for its message).
pub fn panicked() -> bool {
    PANICKED.load(Ordering::Relaxed)
}

/// Raw mode, alternate screen, hidden cursor. A panic anywhere (the agent thread too) restores
/// the terminal before the panic message is printed, so the message is readable and the shell
/// usable.
pub fn enter() -> io::Result<Guard> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::Relaxed);
            let _ = restore();
            previous(info);
        }));
    });
    terminal::enable_raw_mode()?;
    ACTIVE.store(true, Ordering::SeqCst);
    let entered = execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)
        .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
    match entered {
        Ok(terminal) => Ok(Guard { terminal }),
        Err(e) => {
            // Halfway in: get out again.
            let _ = restore();
            Err(e)
        }
    }
}
