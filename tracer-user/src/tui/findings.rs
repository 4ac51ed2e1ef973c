//! The findings screen (`i`): what the agent's findings say about each endpoint, merged over its
//! finished requests (`EndpointFindings`: one row per kind and subject, e.g. one N+1 statement to
//! one peer), most widespread first, with the worst example in words.
//!
//! Memory stays bounded like the rest of the dashboard: at most `MAX_SUBJECTS` distinct findings
//! per endpoint (and `MAX_ENDPOINTS` endpoints); findings about new subjects past that are counted,
//! not kept. Drawing gathers and sorts the merged rows only while this screen is shown, and words
//! the first `MAX_ROWS`.

use std::collections::HashSet;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Paragraph, Wrap},
    Frame,
};

use super::{
    app::{App, ScrollRoom},
    frames::block,
    ui::{count, ellipsize_middle},
};
use crate::{
    model::{
        downstream::findings::{Aggregated, Thresholds},
        endpoints::MAX_SUBJECTS,
    },
    sinks::findings::describe,
};

/// Rows drawn at most (the most widespread): each costs its words, every frame.
const MAX_ROWS: usize = 500;
/// Lines of the worst example's words at most; longer ones end in `…`.
const MAX_EXAMPLE_LINES: usize = 3;
/// KIND's width: `repeated_key`.
const KIND: usize = 12;
/// Under this many columns for the example, it goes under the endpoint instead of beside it.
const MIN_BESIDE: usize = 40;

/// One row of the screen.
struct Row<'a> {
    endpoint: &'a str,
    a: &'a Aggregated,
    seen: u64,
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let d = app.shown();
    let matches = app.matcher();
    let mut rows: Vec<Row<'_>> = d
        .endpoints()
        .iter()
        .filter(|e| matches(&e.name))
        .flat_map(|e| {
            let seen = e.findings.merged.requests();
            let endpoint = e.name.as_str();
            e.findings
                .merged
                .findings()
                .into_iter()
                .map(move |a| Row { endpoint, a, seen })
        })
        .collect();
    // Most requests affected, then the largest share of its endpoint's, then by name; stable, so
    // an endpoint's ties stay in kind order.
    rows.sort_by(|x, y| {
        let share_x = u128::from(x.a.requests) * u128::from(y.seen.max(1));
        let share_y = u128::from(y.a.requests) * u128::from(x.seen.max(1));
        y.a.requests
            .cmp(&x.a.requests)
            .then(share_y.cmp(&share_x))
            .then_with(|| x.endpoint.cmp(y.endpoint))
    });
    let endpoints = rows
        .iter()
        .map(|r| r.endpoint)
        .collect::<HashSet<_>>()
        .len();
    let mut title = format!(
        " Findings · {} on {endpoints} endpoints · {} requests checked ",
        rows.len(),
        count(d.judged)
    );
    let left_out: u64 = d
        .endpoints()
        .iter()
        .filter(|e| matches(&e.name))
        .map(|e| e.findings.left_out)
        .sum();
    if left_out > 0 {
        title.push_str(&format!(
            "· {left_out} past {MAX_SUBJECTS} per endpoint not kept "
        ));
    }
    if rows.len() > MAX_ROWS {
        title.push_str(&format!("· top {MAX_ROWS} "));
        rows.truncate(MAX_ROWS);
    }
    if !app.filter.is_empty() {
        title.push_str(&format!("· filter \"{}\" ", app.filter));
    }
    if rows.is_empty() {
        let title = format!(" Findings · {} requests checked ", count(d.judged));
        empty(f, area, app, title);
        return;
    }
    let inner = usize::from(area.width.saturating_sub(2));
    let requests: Vec<String> = rows
        .iter()
        .map(|r| {
            let pct = r.a.requests * 100 / r.seen.max(1);
            format!("{}/{} {pct:>3}%", count(r.a.requests), count(r.seen))
        })
        .collect();
    let req_w = requests
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .max("REQUESTS".len());
    let longest = rows.iter().map(|r| r.endpoint.chars().count()).max();
    let name_w = longest.unwrap_or(0).clamp(8, 40);
    let beside = inner.saturating_sub(KIND + name_w + req_w + 3);
    let (name_w, example_at, example_w) = if beside >= MIN_BESIDE {
        (name_w, KIND + name_w + req_w + 3, beside)
    } else {
        // Under the endpoint: the example gets the whole width from there.
        let name_w = inner.saturating_sub(KIND + req_w + 2).max(1);
        (name_w, KIND + 1, inner.saturating_sub(KIND + 1).max(1))
    };
    let below = example_at == KIND + 1;
    let pad = |s: String, w: usize| format!("{s:<w$}");
    let mut header = format!(
        "{} {} {:>req_w$}",
        pad("KIND".into(), KIND),
        pad("ENDPOINT".into(), name_w),
        "REQUESTS"
    );
    if !below {
        header.push_str(" WORST EXAMPLE");
    }
    let mut lines = Vec::new();
    for (r, req) in rows.iter().zip(requests) {
        let words = wrap(&describe(&r.a.example), example_w, MAX_EXAMPLE_LINES);
        let mut first = vec![
            Span::styled(pad(r.a.kind.into(), KIND), Style::new().yellow().bold()),
            Span::raw(format!(
                " {} {req:>req_w$}",
                pad(ellipsize_middle(r.endpoint, name_w), name_w)
            )),
        ];
        let mut rest = words.into_iter();
        if !below {
            first.push(Span::raw(format!(" {}", rest.next().unwrap_or_default())));
        }
        lines.push(Line::from(first));
        for w in rest {
            lines.push(Line::from(format!("{}{w}", " ".repeat(example_at))));
        }
    }
    let inner_area = Block::bordered().inner(area);
    let [head, body] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(inner_area);
    let height = body.height;
    let max = (lines.len() as u16).saturating_sub(height);
    app.detail_room.set(ScrollRoom { max, page: height });
    let at = app.detail_scroll.min(max);
    if max > 0 {
        let last = (usize::from(at) + usize::from(height)).min(lines.len());
        title.push_str(&format!("· lines {}-{last} of {} ", at + 1, lines.len()));
    }
    f.render_widget(block(title, " Esc: back ", area.width), area);
    f.render_widget(Paragraph::new(Line::from(header).bold()), head);
    f.render_widget(Paragraph::new(lines).scroll((at, 0)), body);
}

/// Nothing to list: what findings are, and why there are none.
fn empty(f: &mut Frame, area: Rect, app: &App, title: String) {
    let d = app.shown();
    let t = Thresholds::default();
    let pct = |share: f64| format!("{:.0}%", share * 100.0);
    let headline = if !app.filter.is_empty() && d.found > 0 {
        format!("No finding matches \"{}\" (Esc clears).", app.filter)
    } else if d.judged == 0 {
        "No findings yet: no finished request has been checked.".to_owned()
    } else {
        format!("No findings in {} finished requests.", d.judged)
    };
    let kind = |k: &str, what: String| {
        Line::from(vec![
            Span::raw(format!("  {k:<KIND$}  ")).yellow().bold(),
            Span::raw(what),
        ])
    };
    let lines =
        vec![
        Line::from(""),
        Line::from(headline).bold(),
        Line::from(""),
        Line::from("Every finished request is checked for"),
        kind(
            "n_plus_one",
            format!(
                "one statement sent to one peer ≥ {} times (--n-plus-one)",
                d.meta.n_plus_one
            ),
        ),
        kind(
            "repeated_key",
            format!("one cache key read ≥ {} times", t.repeated_key),
        ),
        Line::from(format!(
            "and, when it took the slow threshold ({}) or longer, for",
            humantime::format_duration(d.meta.threshold)
        )),
        kind("cpu_bound", format!("≥ {} of its time on a CPU", pct(t.cpu_share))),
        kind("lock_bound", format!("≥ {} waiting on locks", pct(t.lock_share))),
        kind(
            "peer_bound",
            format!("≥ {} waiting on one peer", pct(t.peer_share)),
        ),
        Line::from(""),
        Line::from(
            "Here they are merged per endpoint, most widespread first; requests.jsonl has each \
             request's own.",
        )
        .dim(),
    ];
    f.render_widget(
        Paragraph::new(lines)
            .block(block(title, " Esc: back ", area.width))
            .wrap(Wrap { trim: false }),
        area,
    );
}

/// `s` in lines of at most `width` characters, broken at spaces where possible, at most `max`
/// lines (the last ends in `…` when cut).
fn wrap(s: &str, width: usize, max: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in s.split(' ') {
        let (n, w) = (cur.chars().count(), word.chars().count());
        if n > 0 && n + 1 + w <= width {
            cur.push(' ');
            cur.push_str(word);
            continue;
        }
        if n > 0 {
            lines.push(std::mem::take(&mut cur));
        }
        // A word longer than a line is cut into lines.
        let chars: Vec<char> = word.chars().collect();
        let mut pieces = chars.chunks(width).peekable();
        while let Some(p) = pieces.next() {
            let p: String = p.iter().collect();
            if pieces.peek().is_some() {
                lines.push(p);
            } else {
                cur = p;
            }
        }
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    if lines.len() > max {
        lines.truncate(max);
        if let Some(last) = lines.last_mut() {
            let kept: String = last.chars().take(width - 1).collect();
            *last = format!("{kept}…");
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_wrap_at_spaces_and_long_ones_are_cut() {
        assert_eq!(wrap("a bb ccc", 4, 3), ["a bb", "ccc"]);
        assert_eq!(wrap("abcdefghij", 4, 3), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("one two three four", 5, 2), ["one", "two…"]);
        assert_eq!(wrap("", 4, 3), [""]);
    }
}
