//! Drawing: the `App` into a ratatui `Frame`. Reads state only (no clock, no I/O), so the same
//! state always draws the same screen, and what it costs depends on the rows on screen, not on
//! how many events came in.

use std::time::Duration;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Cell, Clear, HighlightSpacing, Paragraph, Row, Table, TableState, Wrap},
    Frame,
};

use super::{
    app::{App, Focus, FramesSource, Screen, SortColumn},
    rate::WINDOW_SECS,
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
    }
    draw_footer(f, footer, app);
    if app.help {
        draw_help(f, f.area());
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
    draw_endpoints(f, top, app);
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

/// Width of each number column (the endpoint column takes the rest).
fn column_width(c: SortColumn) -> u16 {
    match c {
        SortColumn::Endpoint => 0,
        SortColumn::Count | SortColumn::Rate => 6,
        SortColumn::P50 | SortColumn::P95 | SortColumn::P99 | SortColumn::Max => 7,
        SortColumn::Errors | SortColumn::Slow => 4,
    }
}

/// Below this the endpoint column is unreadable: number columns give way, least telling first.
const MIN_NAME_WIDTH: u16 = 16;
const DROPPED_FIRST: [SortColumn; 4] = [
    SortColumn::P50,
    SortColumn::P95,
    SortColumn::Errors,
    SortColumn::Rate,
];

/// The columns that fit in `width`, and the endpoint column's width.
fn endpoint_columns(width: u16) -> (Vec<SortColumn>, usize) {
    let mut cols = SortColumn::ALL.to_vec();
    // Borders and the selection mark take 3 columns; each number column has a space before it.
    let name = |cols: &[SortColumn]| {
        let fixed: u16 = cols.iter().map(|c| column_width(*c) + 1).sum::<u16>() - 1;
        width.saturating_sub(fixed + 3)
    };
    for drop in DROPPED_FIRST {
        if name(&cols) >= MIN_NAME_WIDTH {
            break;
        }
        cols.retain(|c| *c != drop);
    }
    let w = name(&cols);
    (cols, usize::from(w.max(1)))
}

fn draw_endpoints(f: &mut Frame, area: Rect, app: &App) {
    let rows = app.endpoint_rows();
    let total = app.shown().endpoints().len();
    let requests = app.shown().total;
    let mut title = format!(" Endpoints ({total}) · {requests} requests ");
    if !app.filter.is_empty() {
        title = format!(
            " Endpoints ({} of {total}) · filter \"{}\" ",
            rows.len(),
            app.filter
        );
    }
    let block = pane(Line::from(title).bold(), app.focus == Focus::Endpoints);
    if rows.is_empty() {
        let msg = if app.filter.is_empty() {
            format!(
                "No requests yet: waiting for traffic to {}.",
                app.shown().meta.targets
            )
        } else {
            format!("No endpoint matches \"{}\" (Esc clears).", app.filter)
        };
        f.render_widget(
            Paragraph::new(msg).block(block).wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let (cols, name_width) = endpoint_columns(area.width);
    let header = Row::new(cols.iter().map(|c| {
        let mut t = c.title().to_owned();
        if *c == app.sort {
            t.push(if app.descending { '▼' } else { '▲' });
        }
        let line = Line::from(t);
        Cell::from(if *c == SortColumn::Endpoint {
            line
        } else {
            line.right_aligned()
        })
    }))
    .bold();
    let red_if_any = |n: u64| {
        if n > 0 {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        }
    };
    let body = rows.iter().map(|r| {
        let e = r.e;
        Row::new(cols.iter().map(|c| {
            let num = |s: String| Cell::from(Line::from(s).right_aligned());
            match c {
                SortColumn::Endpoint => Cell::from(ellipsize_middle(&e.name, name_width)),
                SortColumn::Count => num(count(e.count)),
                SortColumn::Rate => num(rate(r.per_sec)),
                SortColumn::P50 => num(human_us(e.q.p50_us)),
                SortColumn::P95 => num(human_us(e.q.p95_us)),
                SortColumn::P99 => num(human_us(e.q.p99_us)),
                SortColumn::Max => num(human_us(e.q.max_us)),
                SortColumn::Errors => num(count(e.errors_5xx)).style(red_if_any(e.errors_5xx)),
                SortColumn::Slow => num(count(e.slow)).style(red_if_any(e.slow)),
            }
        }))
    });
    let widths = cols.iter().map(|c| match c {
        SortColumn::Endpoint => Constraint::Fill(1),
        c => Constraint::Length(column_width(*c)),
    });
    let selected = (app.focus == Focus::Endpoints).then(|| app.selected_endpoint_index(&rows));
    render_selectable(
        f,
        area,
        Table::new(body, widths).header(header).block(block),
        selected,
    );
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
fn render_selectable(f: &mut Frame, area: Rect, table: Table<'_>, selected: Option<usize>) {
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

fn draw_footer(f: &mut Frame, area: Rect, app: &App) {
    let line = if app.editing {
        Line::from(vec![
            " filter: ".bold(),
            Span::raw(format!("{}▏", app.filter)),
            "  Enter keeps · Esc clears".dim(),
        ])
    } else if let Some(s) = &app.status {
        Line::from(format!(" {s}")).yellow()
    } else {
        let hints: &[(&str, &str)] = match app.screen {
            Screen::Main => &[
                ("q", "quit"),
                ("?", "help"),
                ("/", "filter"),
                ("s", "sort"),
                ("tab", "pane"),
                ("⏎", "open"),
                ("p", "pause"),
                ("e", "export"),
                ("f", "frames"),
            ],
            Screen::Detail => &[
                ("Esc", "back"),
                ("↑↓ PgUp PgDn", "scroll"),
                ("←→", "previous/next request"),
                ("q", "quit"),
                ("?", "help"),
            ],
            Screen::Frames => match app.frames_source {
                FramesSource::Cpu => &[
                    ("Esc", "back"),
                    ("Tab", "slow-request captures"),
                    ("q", "quit"),
                    ("?", "help"),
                ],
                FramesSource::Captures => &[
                    ("Esc", "back"),
                    ("Tab", "CPU samples"),
                    ("q", "quit"),
                    ("?", "help"),
                ],
            },
        };
        let mut spans = vec![Span::raw(" ")];
        for (i, (k, what)) in hints.iter().enumerate() {
            if i > 0 {
                spans.push(Span::raw("  "));
            }
            spans.push(Span::styled(*k, Style::new().bold()));
            spans.push(Span::styled(format!(" {what}"), Style::new().dim()));
        }
        Line::from(spans)
    };
    f.render_widget(Paragraph::new(line), area);
}

const HELP: &[(&str, &str)] = &[
    ("q  Ctrl-C", "quit (the terminal is restored)"),
    ("?", "this help; any key closes it"),
    ("p", "pause / resume the screen (counting goes on)"),
    ("/", "filter by endpoint text; Enter keeps, Esc clears"),
    ("Esc", "clear the filter; leave a detail or frames screen"),
    ("s  S", "next sort column / reverse the order"),
    ("1 … 9", "sort by column N (again: reverse)"),
    ("Tab", "switch pane; hot frames: CPU samples / captures"),
    ("↑↓  j k", "move (PgUp PgDn); g top, follows newest; G end"),
    (
        "Enter",
        "slow request: details, captures; endpoint: its slow",
    ),
    ("←→  h l", "details: previous/next slow request (↑↓ scroll)"),
    ("f", "hot frames: CPU profile / slow-request captures"),
    ("e", "export requests.jsonl, slow.jsonl, slow/*.txt"),
];

fn draw_help(f: &mut Frame, area: Rect) {
    let mut lines: Vec<Line<'_>> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<10}"), Style::new().bold().fg(Color::Cyan)),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from(format!(" REQ/S       over the last {WINDOW_SECS} seconds")).dim());
    lines.push(Line::from(" P50 … MAX   latency of finished requests").dim());
    lines.push(Line::from(" SLOW        finished requests at or over the threshold").dim());
    lines.push(Line::from(" CAPS        stack captures taken of it (Enter shows them)").dim());
    let w = area.width.min(66);
    let h = area.height.min(lines.len() as u16 + 2);
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(Line::from(" Keys ").bold())
                .border_style(Style::new().fg(Color::Cyan)),
        ),
        popup,
    );
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
fn rate(r: f64) -> String {
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
    fn narrow_tables_drop_columns_not_the_endpoint() {
        let (cols, name) = endpoint_columns(80);
        assert_eq!((cols.len(), name), (9, 21), "everything at 80 columns");
        let (cols, name) = endpoint_columns(60);
        assert!(!cols.contains(&SortColumn::P50) && !cols.contains(&SortColumn::P95));
        assert!(name >= usize::from(MIN_NAME_WIDTH), "{name}");
        let (cols, _) = endpoint_columns(10);
        assert_eq!(cols.len(), 5, "at worst: endpoint, count, p99, max, slow");
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
