//! The dashboard without root or a terminal: synthetic `AgentEvent`s and keys in, ratatui's
//! `TestBackend` out, compared with the snapshots in `snapshots/` (`cargo insta review` after
//! an intended change). Time is injected, so every screen is the same on every run.

use std::{cell::Cell, collections::VecDeque, time::Duration};

use ratatui::{
    backend::TestBackend,
    crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers},
    style::Color,
    Terminal,
};

use super::{
    app::App,
    event_loop,
    feed::{Ended, Source},
    state::{
        tests::{meta, req, tick},
        Update,
    },
    terminal::Input,
    Exit, Io,
};
use crate::{agent::AgentEvent, model::Request};

pub(super) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

pub(super) fn render(app: &mut App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    let now = app.live().now;
    app.prepare(now);
    t.draw(|f| super::ui::draw(f, app)).unwrap();
    t
}

pub(super) fn screen(app: &mut App, w: u16, h: u16) -> String {
    render(app, w, h).backend().to_string()
}

pub(super) fn keys(app: &mut App, codes: &[KeyCode]) {
    for c in codes {
        app.on_key(KeyEvent::new(*c, KeyModifiers::NONE));
    }
}

pub(super) fn done(app: &mut App, r: Request, at: f64) {
    app.apply(AgentEvent::Request(Box::new(r)), secs(at));
}

/// A slow request with its own identity and time of day.
pub(super) fn slow(endpoint: &str, ms: u64, status: u16, pid: u32, clock: &str) -> Request {
    let mut r = req(endpoint, ms, status);
    r.pid = pid;
    r.tid = pid + 1;
    r.start = format!("2024-05-01T{clock}.000000Z");
    r
}

/// A dozen endpoints of a shop, with realistic spreads, over 30 s.
fn busy_app() -> App {
    let mut app = App::new(meta());
    let endpoints: &[(&str, &[u64], u16, usize)] = &[
        ("GET /", &[2, 3, 4, 5, 40], 200, 400),
        ("GET /products/:int", &[8, 10, 12, 30, 90], 200, 300),
        ("GET /search", &[40, 80, 120, 900, 2400], 200, 150),
        ("POST /cart", &[15, 20, 25, 60], 200, 120),
        ("POST /checkout", &[300, 450, 800, 1800], 200, 40),
        ("GET /api/v1/orders/:uuid", &[20, 25, 35, 70], 200, 90),
        ("GET /static/app.css", &[1, 1, 2], 200, 200),
        ("GET /healthz", &[1], 200, 60),
        ("POST /login", &[90, 110, 140], 200, 30),
        ("GET /report", &[1100, 1300, 2500], 200, 6),
        ("GET /admin/export", &[4000], 503, 2),
        ("DELETE /cart/:int", &[12, 14], 200, 25),
    ];
    // Spread over 30 s so rates are steady, applied in time order as the agent would.
    let mut timeline = vec![];
    for (name, spread, status, n) in endpoints {
        for i in 0..*n {
            let ms = spread[i % spread.len()];
            let st = if *name == "GET /search" && i % 25 == 0 {
                500
            } else {
                *status
            };
            timeline.push((30.0 * i as f64 / *n as f64, req(name, ms, st)));
        }
    }
    timeline.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, r) in timeline {
        done(&mut app, r, at);
    }
    app.apply(tick(vec![], 1500), secs(30.0));
    app
}

/// Two requests still running past the threshold, a killed worker's request, a 5xx, plain slow.
pub(super) fn incident_app() -> App {
    let mut app = App::new(meta());
    for i in 0..50 {
        done(&mut app, req("GET /hello", 3, 200), 0.1 * i as f64);
    }
    done(
        &mut app,
        slow("GET /sleep", 1520, 200, 311, "10:00:01"),
        5.0,
    );
    done(
        &mut app,
        slow("POST /upload", 2300, 502, 312, "10:00:02"),
        6.0,
    );
    let mut dead = slow("POST /upload", 870, 0, 313, "10:00:04");
    dead.status = None;
    dead.end = "process_exit";
    dead.ttfb_us = None;
    done(&mut app, dead, 7.0);
    let mut a = slow("GET /sleep", 4250, 0, 314, "10:00:03");
    a.status = None;
    a.ttfb_us = None;
    a.end = "in_flight";
    let mut b = slow("GET /report/:int", 1250, 0, 315, "10:00:06");
    b.status = None;
    b.ttfb_us = None;
    b.end = "in_flight";
    let fast = {
        let mut f = slow("GET /hello", 20, 0, 316, "10:00:07");
        f.end = "in_flight";
        f
    };
    app.apply(tick(vec![b, a, fast], 400), secs(7.25));
    app
}

#[test]
fn empty_80x24() {
    let mut app = App::new(meta());
    app.apply(tick(vec![], 0), secs(0.25));
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}

#[test]
fn many_endpoints_80x24() {
    insta::assert_snapshot!(screen(&mut busy_app(), 80, 24));
}

#[test]
fn many_endpoints_160x48() {
    insta::assert_snapshot!(screen(&mut busy_app(), 160, 48));
}

#[test]
fn narrow_terminal_keeps_the_endpoint_readable_60x18() {
    insta::assert_snapshot!(screen(&mut busy_app(), 60, 18));
}

#[test]
fn sorted_by_p99_and_filtered_80x24() {
    let mut app = busy_app();
    keys(
        &mut app,
        &[KeyCode::Char('6'), KeyCode::Char('/'), KeyCode::Char('G')],
    );
    // Still typing: the footer shows the filter being edited.
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}

#[test]
fn long_paths_80x24() {
    let mut app = App::new(meta());
    let long = [
        "GET /api/v2/organizations/:uuid/projects/:int/pipelines/:int/jobs/:int/artifacts/download",
        "POST /graphql/persisted-queries/very-long-operation-name-that-keeps-going-on-and-on",
        "GET /a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z/0/1/2/3/4/5/6/7/8/9",
    ];
    for (i, name) in long.iter().enumerate() {
        for _ in 0..=i {
            done(&mut app, req(name, 1200 + 100 * i as u64, 200), 1.0);
        }
    }
    app.apply(tick(vec![], 6), secs(2.0));
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}

#[test]
fn in_flight_and_killed_80x24() {
    insta::assert_snapshot!(screen(&mut incident_app(), 80, 24));
}

#[test]
fn in_flight_and_killed_160x48() {
    insta::assert_snapshot!(screen(&mut incident_app(), 160, 48));
}

#[test]
fn help_overlay_80x24() {
    let mut app = incident_app();
    keys(&mut app, &[KeyCode::Char('?')]);
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}

#[test]
fn detail_of_a_killed_request_80x24() {
    let mut app = incident_app();
    // Two running, then the killed one.
    keys(&mut app, &[KeyCode::Down, KeyCode::Down, KeyCode::Enter]);
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}

#[test]
fn detail_of_a_running_request_ticks_160x48() {
    let mut app = incident_app();
    // The top row: the longest-running request.
    keys(&mut app, &[KeyCode::Enter]);
    // The next scan: both still running, 250 ms longer.
    let running: Vec<Request> = app
        .live()
        .slow_in_flight
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.duration_us += 250_000;
            r
        })
        .collect();
    app.apply(tick(running, 410), secs(7.5));
    assert!(app.detail_request().unwrap().duration_us == 4_500_000);
    insta::assert_snapshot!(screen(&mut app, 160, 48));
}

#[test]
fn frames_view_is_honestly_empty_80x24() {
    let mut app = incident_app();
    // The captures (the CPU profile's empty screen is in cpu_tests.rs).
    keys(&mut app, &[KeyCode::Char('f'), KeyCode::Tab]);
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}

#[test]
fn paused_and_stopped_header_80x24() {
    let mut app = incident_app();
    keys(&mut app, &[KeyCode::Char('p')]);
    // Counting goes on underneath; the screen does not move.
    done(&mut app, req("GET /hello", 3, 200), 8.0);
    app.set_stopped("the command exiting".into());
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}

#[test]
fn killed_rows_are_red_and_running_ones_yellow() {
    let mut app = incident_app();
    let t = render(&mut app, 80, 24);
    let buf = t.backend().buffer();
    let find = |text: &str| {
        (0..buf.area.height)
            .find_map(|y| {
                let line: String = (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect();
                line.find(text)
                    .map(|byte| (line[..byte].chars().count() as u16, y))
            })
            .unwrap_or_else(|| panic!("{text} not on screen"))
    };
    let (x, y) = find("KILLED");
    assert_eq!(buf[(x, y)].fg, Color::Red);
    let (x, y) = find("RUNNING");
    assert_eq!(buf[(x, y)].fg, Color::Yellow);
}

#[test]
fn any_size_draws_without_panicking() {
    for (w, h) in [(1, 1), (10, 3), (20, 6), (40, 10), (80, 24), (300, 100)] {
        for k in ['x', '?', 'f'] {
            let mut app = incident_app();
            keys(&mut app, &[KeyCode::Char(k)]);
            render(&mut app, w, h);
        }
        let mut app = incident_app();
        keys(&mut app, &[KeyCode::Enter]);
        render(&mut app, w, h);
    }
}

/// Synthetic agent: a queue of events, then "ended" if asked to.
struct FakeSource {
    events: VecDeque<Update>,
    end: Option<Ended>,
}

impl Source for FakeSource {
    fn try_next(&mut self) -> Option<Update> {
        self.events.pop_front()
    }
    fn overflow(&self) -> u64 {
        3
    }
    fn written(&self) -> u64 {
        42
    }
    fn ended(&mut self) -> Option<Ended> {
        if self.events.is_empty() {
            self.end.clone()
        } else {
            None
        }
    }
}

/// Scripted keys and resizes; every wait advances the fake clock by one tick. Quits when the
/// script is done, so a test can never hang.
struct Script<'a> {
    events: VecDeque<Event>,
    clock: &'a Cell<Duration>,
}

impl Input for Script<'_> {
    fn next(&mut self, timeout: Duration) -> std::io::Result<Option<Event>> {
        self.clock.set(self.clock.get() + timeout);
        Ok(Some(self.events.pop_front().unwrap_or(Event::Key(
            KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE),
        ))))
    }
}

fn key(c: char) -> Event {
    Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

#[test]
fn the_loop_applies_events_exports_and_quits() {
    let mut source = FakeSource {
        events: [
            AgentEvent::Request(Box::new(req("GET /hello", 4, 200))).into(),
            AgentEvent::Request(Box::new(slow("GET /sleep", 1500, 200, 9, "12:00:00"))).into(),
            tick(vec![], 2).into(),
        ]
        .into(),
        end: None,
    };
    let clock = Cell::new(Duration::ZERO);
    let mut input = Script {
        events: [
            key('x'),
            Event::Resize(100, 30),
            key('x'),
            key('x'),
            key('e'),
        ]
        .into(),
        clock: &clock,
    };
    let mut exported = vec![];
    let mut export = |n| {
        exported.push(n);
        Ok(format!("exported {n} requests"))
    };
    let mut app = App::new(meta());
    let mut term = Terminal::new(TestBackend::new(100, 30)).unwrap();
    let exit = event_loop(
        &mut term,
        &mut app,
        Io {
            source: &mut source,
            input: &mut input,
            clock: &|| clock.get(),
            export: &mut export,
        },
    )
    .unwrap();
    assert_eq!(exit, Exit::Quit);
    assert_eq!(exported, [42]);
    assert_eq!(app.live().total, 2);
    assert_eq!(app.live().ui_overflow, 3);
    let shown = term.backend().to_string();
    assert!(shown.contains("exported 42 requests"), "{shown}");
    assert!(shown.contains("GET /sleep"), "{shown}");
    assert!(shown.contains("ui overflow 3"), "{shown}");
    assert!(
        shown.contains("up 1s"),
        "five ticks of the fake clock: {shown}"
    );
}

#[test]
fn the_loop_leaves_on_a_signal_and_stays_when_the_command_exits() {
    let clock = Cell::new(Duration::ZERO);
    let run = |end: Ended, script: Vec<Event>| {
        let mut source = FakeSource {
            events: [tick(vec![], 0).into()].into(),
            end: Some(end),
        };
        let mut input = Script {
            events: script.into(),
            clock: &clock,
        };
        let mut app = App::new(meta());
        let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let exit = event_loop(
            &mut term,
            &mut app,
            Io {
                source: &mut source,
                input: &mut input,
                clock: &|| clock.get(),
                export: &mut |_| Err("unused".into()),
            },
        )
        .unwrap();
        (exit, term.backend().to_string())
    };
    let sig = Ended {
        why: "SIGTERM".into(),
        quit: true,
    };
    assert_eq!(run(sig.clone(), vec![]).0, Exit::Ended(sig));
    let cmd = Ended {
        why: "the command exiting".into(),
        quit: false,
    };
    let (exit, shown) = run(cmd, vec![key('x'), key('x')]);
    assert_eq!(exit, Exit::Quit, "stays until q");
    assert!(shown.contains("STOPPED"), "{shown}");
}
