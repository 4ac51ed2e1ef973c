//! The hot-frames screen (`f`), from one of two sources (Tab switches): the CPU profile of every
//! traced thread (`cpu.rs`), or, here, which functions the captured slow requests were in, over
//! the captures of the kept slow requests. SELF: the capture's leaf, the innermost Python frame
//! (the line the request's code was on) or, without Python, the innermost native frame. TOTAL:
//! the frame was anywhere on the capture's stacks. Counts are kept up to date as slow requests come
//! and go (`captures::HotFrames`); drawing only picks the top rows.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Style, Stylize as _},
    text::{Line, Text},
    widgets::{Block, Cell, Paragraph, Row, Table, Wrap},
    Frame,
};

use super::{
    app::{App, FramesSource},
    captures::{by_leaf, by_total, Counts, Kind, Site},
    ui::ellipsize_middle,
};

/// SELF, %, TOTAL, %, KIND.
pub(super) const COLS: [u16; 5] = [6, 4, 6, 4, 6];

/// The block's hint: what Tab shows instead.
const OTHER: &str = " Tab: CPU samples ";

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    match app.frames_source {
        FramesSource::Cpu => super::cpu::draw(f, area, app),
        FramesSource::Captures => draw_captures(f, area, app),
    }
}

/// A bordered box with its title, and on the right the other source's key when both fit.
pub(super) fn block(title: String, hint: &'static str, width: u16) -> Block<'static> {
    let fits = title.chars().count() + hint.chars().count() + 3 <= usize::from(width);
    let b = Block::bordered().title(Line::from(title).bold());
    if fits {
        b.title(Line::from(hint).right_aligned().dim())
    } else {
        b
    }
}

fn draw_captures(f: &mut Frame, area: Rect, app: &App) {
    let d = app.shown();
    let hot = &d.hot;
    if hot.captures == 0 {
        let why = if d.meta.threshold.is_zero() {
            "Captures are off (--threshold 0): nothing to rank.".to_owned()
        } else {
            format!(
                "Requests running past {} are captured while they run; when they end, their \
                 frames are counted here. SELF: where a capture was (innermost Python frame, else \
                 native). TOTAL: anywhere on its stacks.",
                humantime::format_duration(d.meta.threshold)
            )
        };
        let text = Text::from(vec![
            Line::from(""),
            Line::from("No captures yet.").bold(),
            Line::from(""),
            Line::from(why),
        ])
        .centered();
        f.render_widget(
            Paragraph::new(text)
                .block(block(" Slow-request captures ".into(), OTHER, area.width))
                .wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let requests = d.captured.values().filter(|c| !c.stacks.is_empty()).count();
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let title = format!(
        " Hot frames by SELF · {} captures of {requests} slow requests · {} frames ",
        hot.captures,
        hot.distinct()
    );
    table(f, top, app, block(title, OTHER, top.width), by_leaf);
    let title = Line::from(" by TOTAL: anywhere on the stacks ").bold();
    table(f, bottom, app, Block::bordered().title(title), by_total);
}

fn table(f: &mut Frame, area: Rect, app: &App, block: Block<'static>, by: fn(&Counts) -> u64) {
    let hot = &app.shown().hot;
    // Borders and the header row.
    let n = usize::from(area.height.saturating_sub(3));
    let rows = hot.top(n, by);
    let fixed: u16 = COLS.iter().sum::<u16>() + COLS.len() as u16 + 2;
    let free = usize::from(area.width.saturating_sub(fixed));
    let function_w = (free / 2).max(1);
    let where_w = free.saturating_sub(function_w + 1).max(1);
    let pct = |n: u64| format!("{}%", n * 100 / hot.captures.max(1));
    let num = |s: String| Cell::from(Line::from(s).right_aligned());
    let body = rows.iter().map(|(site, c)| {
        Row::new([
            num(c.leaf.to_string()),
            num(pct(c.leaf)),
            num(c.total.to_string()),
            num(pct(c.total)),
            Cell::from(site.kind.label()),
            Cell::from(ellipsize_middle(&site.frame.function, function_w)),
            Cell::from(ellipsize_start(&location(site), where_w)),
        ])
    });
    let header = Row::new([
        num("SELF".into()),
        num("%".into()),
        num("TOTAL".into()),
        num("%".into()),
        Cell::from("KIND"),
        Cell::from("FUNCTION"),
        Cell::from("FILE:LINE"),
    ])
    .style(Style::new().bold());
    let widths = [
        Constraint::Length(COLS[0]),
        Constraint::Length(COLS[1]),
        Constraint::Length(COLS[2]),
        Constraint::Length(COLS[3]),
        Constraint::Length(COLS[4]),
        Constraint::Length(function_w as u16),
        Constraint::Fill(1),
    ];
    f.render_widget(Table::new(body, widths).header(header).block(block), area);
}

/// Where a frame is: file:line when known, else the native module.
fn location(s: &Site) -> String {
    let fr = &s.frame;
    match (&fr.file, fr.line, &fr.module, s.kind) {
        (Some(file), Some(line), _, _) => format!("{file}:{line}"),
        (Some(file), None, _, _) => file.clone(),
        (None, _, Some(m), _) => m.clone(),
        (None, _, None, Kind::Kernel) => "[kernel]".into(),
        (None, _, None, _) => "-".into(),
    }
}

/// Paths say the most at their end: `…/django/db/models/query.py:1320`.
pub(super) fn ellipsize_start(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_owned();
    }
    let mut out = String::from("…");
    out.extend(s.chars().skip(n + 1 - width.max(1)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_their_end() {
        assert_eq!(ellipsize_start("/a/b/c/views.py:12", 12), "…views.py:12");
        assert_eq!(
            ellipsize_start("/a/b/c/views.py:12", 12).chars().count(),
            12
        );
        assert_eq!(ellipsize_start("short.py:1", 12), "short.py:1");
    }
}
