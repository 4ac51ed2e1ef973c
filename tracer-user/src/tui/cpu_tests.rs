//! The hot-frames screen's CPU source. Hot-frame lists go in the way the agent hands them over
//! (`Consumer::on_profile` on the feed's forwarder, then the channel into the dashboard); the
//! screens are compared with the snapshots in `snapshots/`.

use std::sync::{mpsc, Arc};

use ratatui::crossterm::event::KeyCode;

use super::{
    app::{App, FramesSource},
    feed::Forwarder,
    state::{tests::meta, Update},
    tests::{incident_app, keys, render, screen, secs},
};
use crate::{
    agent::Consumer as _,
    model::profile::{FrameInfo, FrameKind, HotFrame},
    sinks::files::Files,
};

const SITE: &str = "/srv/venv/lib/python3.12/site-packages";

/// `where_` is `file:line` for Python frames, the file for native ones, empty when unknown.
fn hot(kind: FrameKind, name: &str, where_: &str, self_samples: u64, total: u64) -> HotFrame {
    let (file, line) = match where_.rsplit_once(':') {
        Some((f, l)) => (Some(f.to_owned()), l.parse().ok()),
        None => ((!where_.is_empty()).then(|| where_.to_owned()), None),
    };
    HotFrame {
        frame: FrameInfo {
            name: name.into(),
            file,
            line,
            kind,
        },
        self_samples,
        total_samples: total,
        of: 0,
    }
}

/// A Django app serializing reports: its hot frames by SELF, as `Profile::hot` ranks them.
fn profile(of: u64) -> Vec<HotFrame> {
    use FrameKind::{Kernel, Native, Python};
    let django = |path: &str| format!("{SITE}/django/{path}");
    let mut rows = vec![
        hot(
            Python,
            "render_row",
            "/srv/app/reports/views.py:52",
            412,
            655,
        ),
        hot(
            Native,
            "__memmove_avx_unaligned_erms",
            "memmove-vec-unaligned-erms.S",
            233,
            233,
        ),
        hot(
            Python,
            "JSONEncoder.iterencode",
            "/usr/lib/python3.12/json/encoder.py:258",
            180,
            301,
        ),
        hot(Kernel, "copy_user_enhanced_fast_string", "", 121, 121),
        hot(
            Python,
            "Model.__init__",
            &django("db/models/base.py:571"),
            96,
            188,
        ),
        hot(
            Native,
            "_PyEval_EvalFrameDefault",
            "libpython3.12.so.1.0",
            64,
            1100,
        ),
        hot(
            Python,
            "SQLCompiler.results_iter",
            &django("db/models/sql/compiler.py:1497"),
            55,
            150,
        ),
        hot(Kernel, "tcp_sendmsg_locked", "", 31, 58),
        hot(Native, "_PyObject_Malloc", "", 27, 27),
        hot(
            Python,
            "Decimal.__str__",
            "/usr/lib/python3.12/_pydecimal.py:1021",
            12,
            12,
        ),
        hot(Python, "report", "/srv/app/reports/views.py:18", 3, 1021),
        hot(
            Python,
            "BaseHandler._get_response",
            &django("core/handlers/base.py:197"),
            0,
            1024,
        ),
        hot(
            Python,
            "WSGIHandler.__call__",
            &django("core/handlers/wsgi.py:124"),
            0,
            1024,
        ),
        hot(Kernel, "entry_SYSCALL_64_after_hwframe", "", 0, 96),
    ];
    for r in &mut rows {
        r.of = of;
    }
    rows
}

/// `top`'s consumer of the agent, and the dashboard's end of its channel.
pub(super) fn forwarder(
    dir: &tempfile::TempDir,
    capacity: usize,
) -> (Forwarder, mpsc::Receiver<Update>) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let fwd = Forwarder {
        files: Files::create(dir.path(), false, false).unwrap(),
        tx,
        overflow: Arc::default(),
        flushed: Arc::default(),
    };
    (fwd, rx)
}

/// Hand `hot` to the dashboard as `top` does: the agent's consumer, then the channel.
fn send(app: &mut App, hot: &[HotFrame], at: f64) {
    let dir = tempfile::tempdir().unwrap();
    let (mut fwd, rx) = forwarder(&dir, 4);
    fwd.on_profile(hot).unwrap();
    for u in rx.try_iter() {
        app.apply(u, secs(at));
    }
}

fn profiled_app() -> App {
    let mut app = incident_app();
    send(&mut app, &profile(1200), 7.5);
    keys(&mut app, &[KeyCode::Char('f')]);
    app
}

#[test]
fn cpu_profile_80x24() {
    let s = screen(&mut profiled_app(), 80, 24);
    assert!(s.contains("CPU samples · 1200 at 99 Hz"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn cpu_profile_160x48() {
    let s = screen(&mut profiled_app(), 160, 48);
    let row = |t: &str| {
        s.lines()
            .find(|l| l.contains(t))
            .unwrap_or_else(|| panic!("{t} not in\n{s}"))
    };
    // 412 of 1200 samples in render_row itself; 655 with what it calls.
    assert!(row("render_row").contains("412  34%    655  55% py"), "{s}");
    assert!(row("/srv/app/reports/views.py:52").contains("render_row"));
    assert!(row("copy_user_enhanced_fast_string").contains("kernel"));
    assert!(row("_PyObject_Malloc").contains("27 2.2%"));
    assert!(s.contains("Tab: slow-request captures"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn cpu_profile_empty_80x24() {
    let mut app = incident_app();
    // Sampling is on, but nothing ran yet: the agent sends an empty list.
    send(&mut app, &[], 7.5);
    keys(&mut app, &[KeyCode::Char('f')]);
    let s = screen(&mut app, 80, 24);
    assert!(
        s.contains("Sampling every traced thread at 99 Hz; no samples yet."),
        "{s}"
    );
    insta::assert_snapshot!(s);
}

#[test]
fn the_latest_profile_replaces_the_last() {
    let mut app = profiled_app();
    let mut newer = profile(2400);
    newer.truncate(1);
    send(&mut app, &newer, 8.0);
    assert_eq!(app.live().cpu, newer);
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("2400 at 99 Hz ≈ 24.2s on CPU"), "{s}");
    assert!(!s.contains("JSONEncoder"), "{s}");
}

#[test]
fn tab_switches_to_the_captures_and_back() {
    let mut app = profiled_app();
    assert_eq!(app.frames_source, FramesSource::Cpu);
    keys(&mut app, &[KeyCode::Tab]);
    let s = screen(&mut app, 80, 24);
    assert!(
        s.contains("Slow-request captures") && s.contains("Tab CPU samples"),
        "{s}"
    );
    keys(&mut app, &[KeyCode::Esc, KeyCode::Char('f')]);
    assert_eq!(
        app.frames_source,
        FramesSource::Captures,
        "kept between visits"
    );
    keys(&mut app, &[KeyCode::BackTab]);
    assert!(screen(&mut app, 80, 24).contains("render_row"));
}

#[test]
fn sampling_off_opens_on_the_captures_and_says_so() {
    let mut m = meta();
    m.sample_hz = 0;
    let mut app = App::new(m);
    keys(&mut app, &[KeyCode::Char('f')]);
    assert_eq!(app.frames_source, FramesSource::Captures);
    keys(&mut app, &[KeyCode::Tab]);
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("CPU sampling is off (--sample-hz 0)."), "{s}");
    let mut m = meta();
    m.sampling_note = Some("on-CPU stacks (perf event) unavailable: EACCES".into());
    let mut app = App::new(m);
    keys(&mut app, &[KeyCode::Char('f')]);
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("perf event) unavailable: EACCES"), "{s}");
}

#[test]
fn a_profile_that_does_not_fit_is_not_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fwd, rx) = forwarder(&dir, 1);
    fwd.on_profile(&profile(10)).unwrap();
    fwd.on_profile(&profile(20)).unwrap();
    assert_eq!(rx.try_iter().count(), 1);
    assert_eq!(
        fwd.overflow.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the next one replaces it"
    );
}

#[test]
fn any_size_draws_the_profile_without_panicking() {
    for (w, h) in [(1, 1), (10, 3), (20, 6), (40, 10), (300, 100)] {
        render(&mut profiled_app(), w, h);
    }
}
