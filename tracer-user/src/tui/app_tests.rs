//! Keys in, `App` state out: sorting, filtering, pausing, selection, screens.

use super::*;
use crate::agent::AgentEvent;
use crate::tui::state::tests::{meta, req, tick};

pub fn press(app: &mut App, keys: &str) -> Action {
    let mut last = Action::None;
    for c in keys.chars() {
        last = app.on_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
    }
    last
}

fn code(app: &mut App, c: KeyCode) -> Action {
    app.on_key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn app_with(endpoints: &[(&str, u64, usize)]) -> App {
    let mut app = App::new(meta());
    for (name, ms, n) in endpoints {
        for _ in 0..*n {
            app.apply(
                AgentEvent::Request(Box::new(req(name, *ms, 200))),
                Duration::from_secs(1),
            );
        }
    }
    app.apply(tick(vec![], 0), Duration::from_secs(2));
    app
}

fn names(app: &App) -> Vec<String> {
    app.endpoint_rows()
        .iter()
        .map(|r| r.e.name.clone())
        .collect()
}

#[test]
fn sorts_by_any_column_and_reverses() {
    let mut app = app_with(&[("GET /a", 10, 3), ("GET /b", 300, 1), ("GET /c", 50, 2)]);
    assert_eq!(
        names(&app),
        ["GET /a", "GET /c", "GET /b"],
        "count, biggest first"
    );
    press(&mut app, "4");
    assert_eq!(app.sort, SortColumn::P50);
    assert_eq!(names(&app), ["GET /b", "GET /c", "GET /a"]);
    press(&mut app, "S");
    assert_eq!(names(&app), ["GET /a", "GET /c", "GET /b"]);
    press(&mut app, "1");
    assert_eq!(names(&app), ["GET /a", "GET /b", "GET /c"], "names A→Z");
    press(&mut app, "1");
    assert_eq!(names(&app), ["GET /c", "GET /b", "GET /a"]);
    // s cycles through every column and back.
    for _ in 0..SortColumn::ALL.len() {
        press(&mut app, "s");
    }
    assert_eq!(app.sort, SortColumn::Endpoint);
}

#[test]
fn filter_by_typing_and_escape_clears() {
    let mut app = app_with(&[("GET /users/:int", 10, 1), ("POST /login", 10, 1)]);
    press(&mut app, "/USERq");
    assert!(app.editing);
    assert_eq!(app.filter, "USERq", "q is typed, not quit");
    code(&mut app, KeyCode::Backspace);
    code(&mut app, KeyCode::Enter);
    assert!(!app.editing);
    assert_eq!(names(&app), ["GET /users/:int"], "case-insensitive");
    code(&mut app, KeyCode::Esc);
    assert_eq!(names(&app).len(), 2);
    assert_eq!(press(&mut app, "q"), Action::Quit);
}

#[test]
fn ctrl_c_quits_even_while_typing() {
    let mut app = App::new(meta());
    press(&mut app, "/");
    let a = app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert_eq!(a, Action::Quit);
}

#[test]
fn pause_freezes_the_screen_not_the_counting() {
    let mut app = app_with(&[("GET /a", 10, 1)]);
    press(&mut app, "p");
    assert!(app.paused());
    app.apply(
        AgentEvent::Request(Box::new(req("GET /a", 10, 200))),
        Duration::from_secs(3),
    );
    assert_eq!(app.shown().total, 1);
    assert_eq!(app.live().total, 2);
    press(&mut app, "p");
    assert_eq!(app.shown().total, 2);
}

#[test]
fn selection_follows_the_request_and_enter_opens_it() {
    let mut app = app_with(&[("GET /slow1", 1500, 1), ("GET /slow2", 2500, 1)]);
    // Newest first: slow2 then slow1.
    code(&mut app, KeyCode::Down);
    code(&mut app, KeyCode::Enter);
    assert_eq!(app.screen, Screen::Detail);
    assert_eq!(app.detail_request().unwrap().endpoint, "GET /slow1");
    code(&mut app, KeyCode::Esc);
    assert_eq!(app.screen, Screen::Main);
    // A newer slow request arrives: the selection stays on the same request.
    app.apply(
        AgentEvent::Request(Box::new(req("GET /slow3", 3000, 200))),
        Duration::from_secs(3),
    );
    let rows = app.slow_rows();
    assert_eq!(rows[app.selected_slow_index(&rows)].endpoint, "GET /slow1");
    // Home goes back to following the newest.
    press(&mut app, "g");
    let rows = app.slow_rows();
    assert_eq!(rows[app.selected_slow_index(&rows)].endpoint, "GET /slow3");
}

#[test]
fn enter_on_an_endpoint_shows_its_slow_requests() {
    let mut app = app_with(&[("GET /a", 1500, 1), ("GET /b", 1500, 2)]);
    code(&mut app, KeyCode::Tab);
    assert_eq!(app.focus, Focus::Endpoints);
    code(&mut app, KeyCode::Down);
    code(&mut app, KeyCode::Enter);
    assert_eq!(app.filter, "GET /a");
    assert_eq!(app.focus, Focus::Slow);
    assert_eq!(app.slow_rows().len(), 1);
}

#[test]
fn help_and_frames_screens() {
    let mut app = App::new(meta());
    press(&mut app, "?");
    assert!(app.help);
    press(&mut app, "x");
    assert!(!app.help, "any key closes help");
    press(&mut app, "f");
    assert_eq!(app.screen, Screen::Frames);
    assert_eq!(app.frames_source, FramesSource::Cpu, "sampling at 99 Hz");
    code(&mut app, KeyCode::Tab);
    assert_eq!(app.frames_source, FramesSource::Captures);
    assert_eq!(
        app.focus,
        Focus::Slow,
        "Tab there switches the source, not the pane"
    );
    code(&mut app, KeyCode::Esc);
    assert_eq!(app.screen, Screen::Main);
    code(&mut app, KeyCode::Enter);
    assert!(app.status.is_some(), "nothing to open says so");
    assert_eq!(press(&mut app, "e"), Action::Export);
}
