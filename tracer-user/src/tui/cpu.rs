//! The hot-frames screen's CPU source: where every traced thread spends CPU, slow request or
//! not, from the agent's continuous profile (on-CPU samples at `--sample-hz`). The agent sends
//! the top frames by SELF (the sampled leaf) with their TOTAL (anywhere on the stack) every scan;
//! drawing picks the rows that fit.

use ratatui::{
    layout::{Constraint, Rect},
    style::{Style, Stylize as _},
    text::{Line, Text},
    widgets::{Cell, Paragraph, Row, Table, Wrap},
    Frame,
};

use super::{
    app::App,
    frames::{block, ellipsize_start, COLS},
    ui::{count, ellipsize_middle},
};
use crate::model::profile::{FrameInfo, FrameKind, HotFrame};

/// The block's hint: what Tab shows instead.
const OTHER: &str = " Tab: slow-request captures ";

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let d = app.shown();
    let hz = d.meta.sample_hz;
    let Some(of) = d.cpu.first().map(|h| h.of).filter(|n| *n > 0) else {
        empty(f, area, app);
        return;
    };
    // A sample stands for 1/hz seconds on a CPU.
    let rate = match hz {
        0 => String::new(),
        hz => format!(" at {hz} Hz ≈ {:.1}s on CPU", of as f64 / hz as f64),
    };
    let title = format!(" CPU samples · {of}{rate} · every traced thread ");
    // Borders and the header row.
    let shown = &d.cpu[..d.cpu.len().min(usize::from(area.height.saturating_sub(3)))];
    let fixed: u16 = COLS.iter().sum::<u16>() + COLS.len() as u16 + 2;
    let free = usize::from(area.width.saturating_sub(fixed));
    // Function names whole if they fit in 3/5 of the room; paths keep their end in the rest.
    let longest = shown.iter().map(|h| h.frame.name.chars().count()).max();
    let function_w = longest.unwrap_or(0).max(8).min(free * 3 / 5).max(1);
    let where_w = free.saturating_sub(function_w + 1).max(1);
    let rows = shown.iter();
    let num = |s: String| Cell::from(Line::from(s).right_aligned());
    let body = rows.map(|h: &HotFrame| {
        let row = Row::new([
            num(count(h.self_samples)),
            num(share(h.self_samples, of)),
            num(count(h.total_samples)),
            num(share(h.total_samples, of)),
            Cell::from(kind(h.frame.kind)),
            Cell::from(ellipsize_middle(&h.frame.name, function_w)),
            Cell::from(ellipsize_start(&location(&h.frame), where_w)),
        ]);
        if h.frame.kind == FrameKind::Kernel {
            row.dim()
        } else {
            row
        }
    });
    let header = Row::new([
        num("SELF".into()),
        num("%".into()),
        num("TOTAL".into()),
        num("%".into()),
        Cell::from("KIND"),
        Cell::from("FUNCTION"),
        Cell::from("WHERE"),
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
    f.render_widget(
        Table::new(body, widths)
            .header(header)
            .block(block(title, OTHER, area.width)),
        area,
    );
}

/// No rows yet: say what will be here, or why nothing will.
fn empty(f: &mut Frame, area: Rect, app: &App) {
    let meta = &app.shown().meta;
    let mut lines = vec![Line::from("")];
    if meta.sample_hz == 0 {
        lines.push(Line::from("CPU sampling is off (--sample-hz 0).").bold());
        lines.push(Line::from(""));
        lines.push(Line::from(
            "With --sample-hz N (default 99) every traced thread is sampled on the CPU, slow \
             request or not, and its hottest functions are ranked here.",
        ));
    } else {
        lines.push(
            Line::from(format!(
                "Sampling every traced thread at {} Hz; no samples yet.",
                meta.sample_hz
            ))
            .bold(),
        );
        lines.push(Line::from(""));
        lines.push(Line::from(
            "Threads are sampled while they run on a CPU, slow request or not; waiting and \
             sleeping take no samples. SELF: the function on the CPU; TOTAL: anywhere on the \
             stack.",
        ));
    }
    if let Some(note) = &meta.sampling_note {
        lines.push(Line::from(""));
        lines.push(Line::from(note.clone()).red());
    }
    lines.push(Line::from(""));
    lines.push(Line::from("Tab: the captures of slow requests.").dim());
    f.render_widget(
        Paragraph::new(Text::from(lines).centered())
            .block(block(" CPU samples ".into(), OTHER, area.width))
            .wrap(Wrap { trim: true }),
        area,
    );
}

fn kind(k: FrameKind) -> &'static str {
    match k {
        FrameKind::Python => "py",
        FrameKind::Native => "native",
        FrameKind::Kernel => "kernel",
        FrameKind::Marker => "marker",
        FrameKind::Root => "root",
    }
}

/// Python: `file:line`; native: its file (source or module), kernel: `[kernel]`.
fn location(fr: &FrameInfo) -> String {
    match (&fr.file, fr.line, fr.kind) {
        (Some(file), Some(line), _) => format!("{file}:{line}"),
        (Some(file), None, _) => file.clone(),
        (None, _, FrameKind::Kernel) => "[kernel]".into(),
        (None, _, _) => "-".into(),
    }
}

/// A share in four columns: `100%`, `42%`, `9.5%`, `0.1%`; under that `<.1%`, not a false 0.
fn share(n: u64, of: u64) -> String {
    let p = n as f64 * 100.0 / of.max(1) as f64;
    match p {
        _ if n == 0 => "0%".into(),
        p if p < 0.05 => "<.1%".into(),
        p if p < 9.95 => format!("{p:.1}%"),
        p => format!("{p:.0}%"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_fit_four_columns() {
        assert_eq!(share(1, 1), "100%");
        assert_eq!(share(42, 100), "42%");
        assert_eq!(share(95, 1000), "9.5%");
        assert_eq!(share(1, 100_000), "<.1%");
        assert_eq!(share(0, 10), "0%");
        assert_eq!(share(999, 1000), "100%");
    }

    #[test]
    fn where_a_frame_is() {
        let mut fr = FrameInfo::new(FrameKind::Python, "view");
        fr.file = Some("app.py".into());
        fr.line = Some(3);
        assert_eq!(location(&fr), "app.py:3");
        assert_eq!(
            location(&FrameInfo::new(FrameKind::Kernel, "tcp_sendmsg")),
            "[kernel]"
        );
        assert_eq!(location(&FrameInfo::new(FrameKind::Native, "memcpy")), "-");
    }
}
