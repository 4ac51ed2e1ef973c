//! The detail screen: one slow request, the fields of its requests.jsonl record, then what the
//! agent captured of it while it ran. Each capture: when and in what state, the Python traceback
//! outermost first (as Python prints it), then native and kernel frames innermost first (as
//! slow.jsonl lists them). The capture history scrolls; the fields stay.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Paragraph},
    Frame,
};

use super::{
    app::{App, ScrollRoom},
    captures::{Captured, FrameRef, Kind, Stack},
    state::{key, killed, Dashboard},
    ui::state_of,
};
use crate::{model::Request, sinks::summary::human_us};

/// Continuation lines of a wrapped frame are indented this much past its own indentation.
const HANGING: usize = 4;
/// Field labels' width: a wrapped field value continues under the value.
const LABEL: usize = 11;

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let Some(r) = app.detail_request() else {
        f.render_widget(
            Paragraph::new("No request selected.").block(Block::bordered()),
            area,
        );
        return;
    };
    let d = app.shown();
    let running = r.end == "in_flight" || d.slow_in_flight.iter().any(|f| key(f) == key(r));
    let width = usize::from(area.width.saturating_sub(2));
    let fields = wrap(fields(d, r, running), width, LABEL);
    // The fields first, but the captures keep at least a third of the screen.
    let top_h = (fields.len() as u16 + 2).min(area.height - area.height / 3);
    let [top, bottom] =
        Layout::vertical([Constraint::Length(top_h), Constraint::Min(0)]).areas(area);
    f.render_widget(
        Paragraph::new(fields).block(Block::bordered().title(Line::from(" Slow request ").bold())),
        top,
    );

    let captured = d.captured(r);
    let lines = capture_lines(d, captured, running, width);
    let height = bottom.height.saturating_sub(2);
    let max = (lines.len() as u16).saturating_sub(height);
    app.detail_room.set(ScrollRoom { max, page: height });
    let at = app.detail_scroll.min(max);
    let mut title = match captured {
        Some(c) => format!(" Captures ({}) ", c.stacks.len()),
        None => " Captures ".to_owned(),
    };
    if max > 0 {
        let last = (usize::from(at) + usize::from(height)).min(lines.len());
        title.push_str(&format!(
            "· lines {}-{last} of {} · ↑↓ PgUp PgDn ",
            at + 1,
            lines.len()
        ));
    }
    let mut block = Block::bordered().title(Line::from(title).bold());
    if d.is_killed(r) {
        block = block.border_style(Style::new().fg(Color::Red));
    }
    f.render_widget(Paragraph::new(lines).block(block).scroll((at, 0)), bottom);
}

fn field(label: &'static str, value: String) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{label:<LABEL$}"), Style::new().bold()),
        Span::raw(value),
    ])
}

/// The requests.jsonl record, and the signal that killed it when the agent saw one.
fn fields(d: &Dashboard, r: &Request, running: bool) -> Vec<Line<'static>> {
    let captured = d.captured(r);
    let (state, style) = state_of(d, r, running);
    let what = if killed(r) {
        "its process died mid-request (killed or crashed worker)".to_owned()
    } else if d.is_killed(r) {
        format!("a fatal signal hit it; it still ended, by {}", r.end)
    } else if running {
        "still in flight; the duration keeps growing".to_owned()
    } else {
        format!("finished, ended by {}", r.end)
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut lines = vec![
        field("endpoint", r.endpoint.clone()),
        field("path", opt(&r.path)),
        Line::from(vec![
            Span::styled(format!("{:<LABEL$}", "state"), Style::new().bold()),
            Span::styled(state, style),
            Span::raw(format!(" — {what}")),
        ]),
        field(
            "status",
            format!(
                "{}   duration {}{}   ttfb {}",
                r.status.map_or("-".into(), |s| s.to_string()),
                human_us(r.duration_us),
                if running { "+" } else { "" },
                r.ttfb_us.map_or("-".into(), human_us),
            ),
        ),
        field("start", r.start.clone()),
        field(
            "process",
            format!("pid {}   tid {}   comm {}", r.pid, r.tid, r.comm),
        ),
        field(
            "connection",
            format!(
                "fd {}   local port {}   peer {}   request #{} on it{}",
                r.fd,
                r.local_port.map_or("-".into(), |p| p.to_string()),
                opt(&r.peer),
                r.seq,
                r.pipeline_index
                    .map_or(String::new(), |i| format!(", pipelined #{i}"))
            ),
        ),
        field(
            "http",
            format!(
                "{} {}   host {}   bytes in {} / out {}",
                r.protocol,
                opt(&r.method),
                opt(&r.host),
                r.bytes_in,
                r.bytes_out
            ),
        ),
    ];
    if let Some(k) = captured.and_then(|c| c.killed.as_ref()) {
        let from = match k.sender_pid {
            0 => String::new(),
            pid => format!(" from pid {pid}"),
        };
        let died = if k.process_died {
            "the process died with the request open"
        } else {
            "the request still ended"
        };
        lines.push(
            field(
                "killed",
                format!("{}{from} at +{}ms; {died}", k.signal, k.at_ms),
            )
            .fg(Color::Red)
            .bold(),
        );
    }
    for s in &r.signals {
        lines.push(field(
            "sent",
            format!("{} at +{}ms ({})", s.signal, s.at_ms, s.why),
        ));
    }
    lines.extend(super::breakdown::detail_fields(r, LABEL));
    lines
}

/// The capture history, or why there is none, wrapped to `width`.
fn capture_lines(
    d: &Dashboard,
    c: Option<&Captured>,
    running: bool,
    width: usize,
) -> Vec<Line<'static>> {
    // Sentences wrap flush; frames wrap with a hanging indent.
    let say = |s: String| wrap(vec![Line::from(s)], width, 0);
    let Some(c) = c else {
        return say(if d.meta.threshold.is_zero() {
            "Captures are off (--threshold 0).".into()
        } else if running {
            "Still running: its captures are listed here when it ends (they are taken from the \
             threshold on, every --resample)."
                .into()
        } else {
            "No captures received for it yet: they follow the end of a request by up to 5 s. \
             (None come if the screen skipped them, see ui overflow; slow.jsonl has them all.)"
                .into()
        });
    };
    if c.stacks.is_empty() {
        return say("No capture was taken (the request ended before the next scan).".into());
    }
    let mut out = Vec::new();
    for (i, st) in c.stacks.iter().enumerate() {
        if i > 0 {
            out.push(Line::from(""));
        }
        // A thread that sleeps through several captures: say so instead of repeating them.
        let same_as = c.stacks[..i]
            .iter()
            .position(|prev| !st.is_empty() && prev.same_frames(st));
        stack(&mut out, i + 1, st, same_as.map(|j| j + 1));
    }
    if c.missed > 0 {
        out.push(Line::from(""));
        out.push(Line::from(format!(
            "{} captures could not be taken (capture queue full or thread gone).",
            c.missed
        )));
    }
    wrap(out, width, HANGING)
}

fn stack(out: &mut Vec<Line<'static>>, n: usize, st: &Stack, same_as: Option<usize>) {
    let during = st
        .syscall
        .as_deref()
        .map(|s| format!(" in {s}"))
        .unwrap_or_default();
    let mut head = vec![Span::styled(
        format!("#{n} +{}ms  {}{during}", st.offset_ms, st.state),
        Style::new().bold().fg(Color::Cyan),
    )];
    if let Some(j) = same_as {
        head.push(Span::raw(format!("  same stacks as #{j}")).dim());
    }
    out.push(Line::from(head));
    if same_as.is_none() {
        if !st.python.is_empty() {
            out.push(Line::from("  Traceback (most recent call last):"));
            for f in st.python.iter().rev() {
                out.push(python_frame(f));
            }
        }
        if !st.native.is_empty() {
            out.push(Line::from(format!(
                "  Native, innermost first ({}):",
                st.native_source
            )));
            out.extend(st.native.iter().map(|f| frame_line(f)));
        }
        if !st.kernel.is_empty() {
            out.push(Line::from("  Kernel, innermost first:"));
            out.extend(st.kernel.iter().map(|f| frame_line(f)));
        }
        if st.is_empty() {
            out.push(Line::from("  (no frames)").dim());
        }
    }
    for e in &st.errors {
        out.push(Line::from(format!("  could not read: {e}")).dim());
    }
}

/// `  File "app.py", line 20, in fetch`, as in a Python traceback.
fn python_frame(f: &FrameRef) -> Line<'static> {
    let fr = &f.frame;
    Line::from(vec![
        Span::raw(format!(
            "    File \"{}\", line {}, in ",
            fr.file.as_deref().unwrap_or("?"),
            fr.line.map_or("?".to_owned(), |l| l.to_string())
        )),
        Span::styled(fr.function.clone(), Style::new().bold()),
    ])
}

fn frame_line(f: &FrameRef) -> Line<'static> {
    debug_assert!(f.kind != Kind::Python);
    Line::from(format!(
        "    {}",
        crate::capture::worker::describe(&f.frame)
    ))
}

/// Hard-wrap styled lines to `width` columns, so the scroll range is exact (ratatui's own
/// wrapping does not say how many lines it made). Breaks after a space or a `/` (paths) in the
/// second half of the line, else before a span that starts there (a function name), else
/// mid-word; continuation lines are indented
/// `hanging` columns past the line's own indentation. Columns are counted as chars: the text is
/// paths, names and numbers, and a wide character at worst gets cut at the border.
pub fn wrap(lines: Vec<Line<'static>>, width: usize, hanging: usize) -> Vec<Line<'static>> {
    if width == 0 {
        return lines;
    }
    let mut out = Vec::with_capacity(lines.len());
    for line in lines {
        let lead = line
            .spans
            .first()
            .map_or(0, |s| s.content.chars().take_while(|c| *c == ' ').count());
        let indent = if lead + hanging < width / 2 {
            lead + hanging
        } else {
            0
        };
        let mut cur: Vec<Span<'static>> = Vec::new();
        let mut col = 0;
        for span in &line.spans {
            let mut rest: &str = &span.content;
            while !rest.is_empty() {
                let room = width.saturating_sub(col);
                let end = rest.char_indices().nth(room).map_or(rest.len(), |(b, _)| b);
                if end == rest.len() {
                    cur.push(Span::styled(rest.to_owned(), span.style));
                    col += rest.chars().count();
                    break;
                }
                let half = width / 2;
                let cut = match rest[..end]
                    .rfind([' ', '/'])
                    .map(|b| b + 1)
                    .filter(|&b| col + rest[..b].chars().count() > half)
                {
                    Some(b) => b,
                    // Nothing fits: the whole span on the next line (col > half, so it moves).
                    None if col > half && rest.len() == span.content.len() => 0,
                    None => end,
                };
                if cut > 0 {
                    cur.push(Span::styled(rest[..cut].to_owned(), span.style));
                }
                out.push(Line::from(std::mem::take(&mut cur)).style(line.style));
                cur.push(Span::raw(" ".repeat(indent)));
                col = indent;
                rest = &rest[cut..];
            }
        }
        out.push(Line::from(cur).style(line.style));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: &[Line<'_>]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn wraps_at_spaces_then_mid_word_with_a_hanging_indent() {
        let lines = vec![
            Line::from("short"),
            Line::from(vec![
                Span::raw("    File \"/usr/lib/python3.11/socketserver.py\", line 691, in "),
                Span::raw("process_request_thread").bold(),
            ]),
            Line::from("x".repeat(25)),
        ];
        let got = text(&wrap(lines, 40, HANGING));
        assert_eq!(
            got,
            [
                "short",
                "    File \"/usr/lib/python3.11/",
                "        socketserver.py\", line 691, in ",
                "        process_request_thread",
                "xxxxxxxxxxxxxxxxxxxxxxxxx",
            ]
        );
        let got = text(&wrap(vec![Line::from("y".repeat(25))], 10, HANGING));
        assert_eq!(got, ["yyyyyyyyyy", "    yyyyyy", "    yyyyyy", "    yyy"]);
        assert!(got.iter().all(|l| l.chars().count() <= 10));
    }

    #[test]
    fn wrapping_never_loops_on_tiny_widths() {
        for w in 1..6 {
            let got = wrap(vec![Line::from("  a b c d e f g h")], w, HANGING);
            assert!(got.iter().all(|l| l.width() <= w), "{w}: {got:?}");
        }
    }
}
