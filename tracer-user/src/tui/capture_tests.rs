//! Screens with stack captures: the detail view's capture history, killed requests, hot frames.
//! Same harness as `tests.rs` (synthetic updates, injected time, `TestBackend` snapshots).

use ratatui::crossterm::event::KeyCode;

use super::{
    app::App,
    captures::tests::{capture, kernel, native, py, slow_request},
    state::{tests::meta, Update},
    tests::{done, incident_app, keys, screen, secs, slow},
};
use crate::model::slow::{Capture, Killed};

const DJANGO: &str = "/srv/venv/lib/python3.12/site-packages/django";

/// A Django view waiting on the database: Python, native and kernel frames, innermost first.
fn db_wait(offset_ms: u64, leaf_line: u32) -> Capture {
    let mut c = capture(
        offset_ms,
        vec![
            py(
                "CursorWrapper._execute",
                &format!("{DJANGO}/db/backends/utils.py"),
                89,
            ),
            py("count_rows", "/srv/app/reports/queries.py", leaf_line),
            py("report", "/srv/app/reports/views.py", 18),
            py(
                "BaseHandler._get_response",
                &format!("{DJANGO}/core/handlers/base.py"),
                197,
            ),
        ],
        vec![
            native("__libc_recv", "libc.so.6"),
            native("pq_recvbuf", "libpq.so.5"),
            native("_PyEval_EvalFrameDefault", "libpython3.12.so.1.0"),
        ],
    );
    c.syscall = Some("recvfrom".into());
    c.kernel = vec![
        kernel("tcp_recvmsg"),
        kernel("inet_recvmsg"),
        kernel("__sys_recvfrom"),
    ];
    c
}

/// The incident screen, plus the agent's reports: a slow request with three captures (the
/// second the same as the first), a killed one with a capture, one with none.
fn captured_app() -> App {
    let mut app = incident_app();
    let report = slow("GET /report/:int", 2300, 200, 321, "10:00:08");
    done(&mut app, report.clone(), 8.0);
    let mut third = db_wait(2000, 57);
    third.state = "running".into();
    third.syscall = None;
    app.apply(
        Update::Slow(Box::new(slow_request(
            report,
            vec![db_wait(1000, 41), db_wait(1500, 41), third],
        ))),
        secs(8.1),
    );
    let mut dead = slow("POST /upload", 870, 0, 331, "10:00:09");
    dead.status = None;
    dead.ttfb_us = None;
    dead.end = "process_exit";
    done(&mut app, dead.clone(), 9.0);
    let mut s = slow_request(
        dead,
        vec![Capture {
            native_source: "none".into(),
            native: vec![],
            errors: vec!["native stack: no sample of the thread within 100 ms".into()],
            ..capture(
                500,
                vec![
                    py("write_chunk", "/srv/app/upload.py", 77),
                    py("upload", "/srv/app/views.py", 40),
                ],
                vec![],
            )
        }],
    );
    s.kind = "killed";
    s.killed = Some(Killed {
        signal: "SIGKILL".into(),
        signo: 9,
        sender_pid: 300,
        at_ms: 870,
        process_died: true,
    });
    app.apply(Update::Slow(Box::new(s)), secs(9.1));
    // A slow request the agent reported without captures (it ended before the next scan).
    let quick = slow("GET /export", 1100, 200, 341, "10:00:10");
    done(&mut app, quick.clone(), 9.5);
    app.apply(
        Update::Slow(Box::new(slow_request(quick, vec![]))),
        secs(9.5),
    );
    app.prepare(secs(9.75));
    app
}

/// Rows newest first: 2 running, /export, the killed /upload, /report, then the incident's.
fn open(app: &mut App, row: usize) {
    for _ in 0..row {
        keys(app, &[KeyCode::Down]);
    }
    keys(app, &[KeyCode::Enter]);
}

#[test]
fn slow_pane_counts_captures_80x24() {
    insta::assert_snapshot!(screen(&mut captured_app(), 80, 24));
}

#[test]
fn detail_with_python_native_and_kernel_frames_80x24() {
    let mut app = captured_app();
    open(&mut app, 4);
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("GET /report/:int"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn detail_with_python_native_and_kernel_frames_160x48() {
    let mut app = captured_app();
    open(&mut app, 4);
    let s = screen(&mut app, 160, 48);
    // Python's order: outermost first, the leaf last; native and kernel innermost first.
    let at = |t: &str| s.find(t).unwrap_or_else(|| panic!("{t} not in\n{s}"));
    assert!(at("in BaseHandler._get_response") < at("in CursorWrapper._execute"));
    assert!(at("__libc_recv [libc.so.6]") < at("pq_recvbuf [libpq.so.5]"));
    assert!(
        s.contains("#2 +1500ms  blocked in recvfrom  same stacks as #1"),
        "{s}"
    );
    insta::assert_snapshot!(s);
}

#[test]
fn detail_scrolls_to_the_end_and_back_80x24() {
    let mut app = captured_app();
    open(&mut app, 4);
    screen(&mut app, 80, 24);
    keys(&mut app, &[KeyCode::End]);
    let end = screen(&mut app, 80, 24);
    assert!(end.contains("lines 27-35 of 35"), "{end}");
    assert!(
        end.contains("__sys_recvfrom"),
        "the last frame of #3: {end}"
    );
    insta::assert_snapshot!(end);
    // At the end already: one key up moves at once, and Home is the top again.
    let max = app.detail_scroll;
    keys(&mut app, &[KeyCode::Down, KeyCode::Down, KeyCode::Up]);
    assert_eq!(app.detail_scroll, max - 1);
    keys(&mut app, &[KeyCode::Home]);
    assert_eq!(app.detail_scroll, 0);
    // ← → step through requests; each opens at the top.
    keys(&mut app, &[KeyCode::End, KeyCode::Left]);
    assert_eq!(app.detail_scroll, 0);
    assert_eq!(app.detail_request().unwrap().endpoint, "POST /upload");
}

#[test]
fn detail_of_a_killed_request_with_captures_80x24() {
    let mut app = captured_app();
    open(&mut app, 3);
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("SIGKILL from pid 300 at +870ms"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn killed_detail_is_red() {
    let mut app = captured_app();
    open(&mut app, 3);
    let t = super::tests::render(&mut app, 80, 24);
    let buf = t.backend().buffer();
    let row = (0..buf.area.height)
        .find(|y| {
            let line: String = (0..buf.area.width).map(|x| buf[(x, *y)].symbol()).collect();
            line.contains("killed     SIGKILL")
        })
        .expect("the killed line");
    assert_eq!(buf[(1, row)].fg, ratatui::style::Color::Red);
}

#[test]
fn detail_without_captures_says_why_80x24() {
    let mut app = captured_app();
    open(&mut app, 2);
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("No capture was taken"), "{s}");
    // A running request: captures come when it ends.
    let mut app = captured_app();
    open(&mut app, 0);
    assert!(screen(&mut app, 80, 24).contains("Still running"));
}

#[test]
fn hot_frames_80x24() {
    let mut app = captured_app();
    // Tab: from the CPU profile (empty here) to the captures.
    keys(&mut app, &[KeyCode::Char('f'), KeyCode::Tab]);
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}

#[test]
fn hot_frames_160x48() {
    let mut app = captured_app();
    // Tab: from the CPU profile (empty here) to the captures.
    keys(&mut app, &[KeyCode::Char('f'), KeyCode::Tab]);
    let s = screen(&mut app, 160, 48);
    // Four captures: the /report leaf twice at line 41, once at 57; the killed upload's once.
    assert!(s.contains("4 captures of 2 slow requests"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn hot_frames_forget_evicted_requests() {
    let mut app = App::new(meta());
    let r = slow("GET /report", 2000, 200, 7, "10:00:00");
    done(&mut app, r.clone(), 1.0);
    app.apply(
        Update::Slow(Box::new(slow_request(r, vec![db_wait(1000, 41)]))),
        secs(1.0),
    );
    assert_eq!(app.live().hot.captures, 1);
    for i in 0..super::state::MAX_SLOW {
        done(
            &mut app,
            slow("GET /other", 1500, 200, 8 + i as u32, "10:00:01"),
            2.0,
        );
    }
    assert_eq!(app.live().hot.captures, 0);
    assert_eq!(app.live().hot.distinct(), 0);
    assert!(app.live().captured.is_empty());
}
