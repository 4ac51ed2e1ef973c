//! The footer (the keys of the screen shown, or the filter being typed, or a message) and the
//! help overlay (`?`).

use ratatui::{
    layout::Rect,
    style::{Color, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph},
    Frame,
};

use super::{
    app::{App, FramesSource, Screen},
    rate::WINDOW_SECS,
};

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
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
                ("i", "findings"),
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
            Screen::Findings => &[
                ("Esc", "back"),
                ("↑↓ PgUp PgDn", "scroll"),
                ("/", "filter"),
                ("q", "quit"),
                ("?", "help"),
            ],
        };
        let hints = fit_hints(hints, usize::from(area.width));
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

/// Footer hints that give way first on a narrow terminal (all are in the help).
const HINTS_DROPPED_FIRST: [&str; 5] = ["sort", "pause", "pane", "export", "filter"];

/// The hints that fit in `width`, in their order.
fn fit_hints<'a>(hints: &[(&'a str, &'a str)], width: usize) -> Vec<(&'a str, &'a str)> {
    let mut kept = hints.to_vec();
    // One space before the first, two between.
    let len = |h: &[(&str, &str)]| {
        h.iter()
            .map(|(k, w)| k.chars().count() + w.chars().count() + 3)
            .sum::<usize>()
            .saturating_sub(1)
    };
    for drop in HINTS_DROPPED_FIRST {
        if len(&kept) <= width {
            break;
        }
        kept.retain(|(_, what)| *what != drop);
    }
    kept
}

const HELP: &[(&str, &str)] = &[
    ("q  Ctrl-C", "quit (the terminal is restored)"),
    ("?", "this help; any key closes it"),
    ("p", "pause / resume the screen (counting goes on)"),
    ("/", "filter by endpoint text; Enter keeps, Esc clears"),
    ("Esc", "clear the filter; back from any other screen"),
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
    ("i", "findings per endpoint: N+1, repeated keys, …-bound"),
    ("e", "export requests.jsonl, slow.jsonl, slow/*.txt"),
];

pub fn draw_help(f: &mut Frame, area: Rect) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_hints_give_way_on_narrow_terminals() {
        let hints = [
            ("q", "quit"),
            ("s", "sort"),
            ("p", "pause"),
            ("i", "findings"),
        ];
        assert_eq!(fit_hints(&hints, 80).len(), 4);
        // " q quit  s sort  p pause  i findings" is 36.
        assert_eq!(fit_hints(&hints, 36).len(), 4);
        assert_eq!(
            fit_hints(&hints, 35),
            [("q", "quit"), ("p", "pause"), ("i", "findings")]
        );
        assert_eq!(fit_hints(&hints, 10), [("q", "quit"), ("i", "findings")]);
    }
}
