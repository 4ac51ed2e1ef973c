//! Drawing: the `App` into a ratatui `Frame`. Reads state only (no clock, no I/O), so the same
//! state always draws the same screen, and what it costs depends on the rows on screen, not on
//! how many events came in.

use std::time::Duration;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Cell, HighlightSpacing, Paragraph, Row, Table, TableState, Wrap},
    Frame,
};

use super::{
    app::{App, Focus, Screen},
    state::{key, Dashboard},
};
use crate::{model::Request, sinks::summary::human_us};

const SELECTED: &str = "▶";

pub fn draw(f: &mut Frame, app: &App) {
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(f.area());
    draw_header(f, header, app);
    match app.screen {
        Screen::Main => draw_main(f, body, app),
        Screen::Detail => super::detail::draw(f, body, app),
        Screen::Frames => super::frames::draw(f, body, app),
        Screen::Findings => super::findings::draw(f, body, app),
    }
    super::footer::draw(f, footer, app);
    if app.help {
        super::footer::draw_help(f, f.area());
    }
}

fn draw_header(f: &mut Frame, area: Rect, app: &App) {
    let d = app.shown();
    let mut first = vec![" slowtrace top ".reversed().bold(), " ".into()];
    if app.paused() {
        first.push(" PAUSED ".black().on_yellow().bold());
        first.push(" ".into());
    }
    if let Some(why) = &d.stopped {
        first.push(format!(" STOPPED by {why} ").white().on_red().bold());
        first.push(" ".into());
    }
    // Short, fixed-size facts first: on a narrow terminal the long ones are cut.
    first.push(Span::raw(format!(
        "up {} · slow ≥ {} · {} · {}",
        uptime(d.now),
        humantime::format_duration(d.meta.threshold),
        d.meta.targets,
        d.meta.attach_mode
    )));
    let alarm = |n: u64| {
        if n > 0 {
            Style::new().fg(Color::Red).bold()
        } else {
            Style::new()
        }
    };
    let second = vec![
        Span::raw(format!(
            " req/s {} · events/s {} · in flight {} · ",
            rate(d.requests.per_sec(d.now)),
            rate(d.events.per_sec(d.now)),
            d.in_flight,
        )),
        Span::styled(format!("dropped {}", d.dropped()), alarm(d.dropped())),
        Span::raw(" · "),
        Span::styled(
            format!("ui overflow {}", d.ui_overflow),
            alarm(d.ui_overflow),
        ),
    ];
    f.render_widget(
        Paragraph::new(vec![Line::from(first), Line::from(second)]),
        area,
    );
}

fn draw_main(f: &mut Frame, area: Rect, app: &App) {
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    super::endpoints::draw(f, top, app);
    draw_slow(f, bottom, app);
}

pub fn pane(title: Line<'static>, focused: bool) -> Block<'static> {
    let b = Block::bordered().title(title);
    if focused {
        b.border_style(Style::new().fg(Color::Cyan))
    } else {
        b
    }
}

/// START, STATE, DURATION, CAPS, (ENDPOINT), PID/TID.
const SLOW_COLS: [u16; 5] = [8, 7, 8, 4, 13];

fn draw_slow(f: &mut Frame, area: Rect, app: &App) {
    let d = app.shown();
    let rows = app.slow_rows();
    let title = format!(
        " Slow requests ≥ {} · {} running · {} finished, newest first ",
        humantime::format_duration(d.meta.threshold),
        d.slow_in_flight.len(),
        d.slow.len()
    );
    let block = pane(Line::from(title).bold(), app.focus == Focus::Slow);
    if rows.is_empty() {
        let mut msg = format!(
            "No request slower than {} yet.",
            humantime::format_duration(d.meta.threshold)
        );
        if !app.filter.is_empty() {
            msg = format!("No slow request matches \"{}\" (Esc clears).", app.filter);
        }
        f.render_widget(
            Paragraph::new(msg).block(block).wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let fixed: u16 = SLOW_COLS.iter().sum();
    let name_width = usize::from(area.width.saturating_sub(fixed + 5 + 3)).max(8);
    let header = Row::new([
        Cell::from("START"),
        Cell::from("STATE"),
        Cell::from(Line::from("DURATION").right_aligned()),
        Cell::from(Line::from("CAPS").right_aligned()),
        Cell::from("ENDPOINT"),
        Cell::from("PID/TID"),
    ])
    .bold();
    let running: Vec<_> = d.slow_in_flight.iter().map(key).collect();
    let body = rows.iter().map(|r| {
        let is_running = r.end == "in_flight" || running.contains(&key(r));
        let (state, style) = state_of(d, r, is_running);
        let mut dur = human_us(r.duration_us);
        if is_running {
            // Still going: at least this long.
            dur.push('+');
        }
        // How many stacks Enter will show; blank until the agent has reported on it (captures
        // follow the end of a request).
        let caps = d
            .captured(r)
            .map_or(String::new(), |c| c.stacks.len().to_string());
        let row = Row::new([
            Cell::from(r.start.get(11..19).unwrap_or("-").to_owned()),
            Cell::from(state).style(style),
            Cell::from(Line::from(dur).right_aligned()),
            Cell::from(Line::from(caps).right_aligned()),
            Cell::from(ellipsize_middle(&r.endpoint, name_width)),
            Cell::from(format!("{}/{}", r.pid, r.tid)),
        ]);
        if d.is_killed(r) {
            row.style(Style::new().fg(Color::Red))
        } else {
            row
        }
    });
    let widths = [
        Constraint::Length(SLOW_COLS[0]),
        Constraint::Length(SLOW_COLS[1]),
        Constraint::Length(SLOW_COLS[2]),
        Constraint::Length(SLOW_COLS[3]),
        Constraint::Fill(1),
        Constraint::Length(SLOW_COLS[4]),
    ];
    let selected = (app.focus == Focus::Slow).then(|| app.selected_slow_index(&rows));
    render_selectable(
        f,
        area,
        Table::new(body, widths).header(header).block(block),
        selected,
    );
}

/// Both panes draw their rows the same way: the selection marked and reversed when focused.
pub(super) fn render_selectable(
    f: &mut Frame,
    area: Rect,
    table: Table<'_>,
    selected: Option<usize>,
) {
    let table = table
        .highlight_spacing(HighlightSpacing::Always)
        .highlight_symbol(SELECTED)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default();
    state.select(selected);
    f.render_stateful_widget(table, area, &mut state);
}

/// The STATE column: what happened to the request, and how loudly to say it.
pub fn state_of(d: &Dashboard, r: &Request, running: bool) -> (String, Style) {
    if d.is_killed(r) {
        return ("KILLED".into(), Style::new().fg(Color::Red).bold());
    }
    if running {
        return ("RUNNING".into(), Style::new().fg(Color::Yellow).bold());
    }
    match r.status {
        Some(s) if s >= 500 => (s.to_string(), Style::new().fg(Color::Red)),
        Some(s) => (s.to_string(), Style::new()),
        None => ("-".into(), Style::new()),
    }
}

/// Keep both ends of a long name (the method and the last segments say the most):
/// `GET /api/v1/org…/artifacts`.
pub fn ellipsize_middle(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_owned();
    }
    if width < 2 {
        return "…".chars().take(width).collect();
    }
    let keep = width - 1;
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

/// About three significant digits, at most six columns.
pub(super) fn rate(r: f64) -> String {
    if r < 10.0 {
        format!("{r:.2}")
    } else if r < 100.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

/// Counts fit six columns.
pub(super) fn count(n: u64) -> String {
    match n {
        0..=999_999 => n.to_string(),
        1_000_000..=999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ellipsis_keeps_both_ends() {
        assert_eq!(ellipsize_middle("GET /short", 20), "GET /short");
        assert_eq!(ellipsize_middle("GET /abcdefghijklmnop", 10), "GET /…mnop");
        assert_eq!(
            ellipsize_middle("GET /abcdefghijklmnop", 10)
                .chars()
                .count(),
            10
        );
        assert_eq!(ellipsize_middle("abc", 1), "…");
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(uptime(Duration::from_secs(59)), "59s");
        assert_eq!(uptime(Duration::from_secs(65)), "1m05s");
        assert_eq!(uptime(Duration::from_secs(3725)), "1h02m05s");
        assert_eq!(rate(4.56789), "4.57");
        assert_eq!(rate(31.4159), "31.4");
        assert_eq!(rate(314.159), "314");
        assert_eq!(rate(31415.9), "31416");
        assert_eq!(count(1_234_567), "1.2M");
    }
}
