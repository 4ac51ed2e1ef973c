//! Where each endpoint's time went: the scheduler breakdown of its finished requests
//! (`Request::breakdown`), summed per part, drawn as a stacked bar in the endpoint table, and one
//! request's breakdown, downstream calls and findings as fields of the detail screen.
//!
//! The bar is one cell per share of the endpoint's request time: a letter on the part's colour
//! (`c` cpu, `r` run queue, `d` downstream, `i` disk, `l` lock, `s` sleep, `o` other, `·` time the
//! scheduler view did not account for), so it reads in colour and in plain text alike.

use ratatui::{
    style::{Color, Style, Stylize as _},
    text::{Line, Span},
};

use crate::{model::Request, sinks::findings::describe, sinks::summary::human_us};

/// Per part (in `Breakdown::parts` order): its letter in the bar, its label, and its colours.
const PARTS: [(char, &str, Color, Color); 7] = [
    ('c', "cpu", Color::Green, Color::Black),
    ('r', "runq", Color::Yellow, Color::Black),
    ('d', "downstream", Color::Blue, Color::White),
    ('i', "disk", Color::Magenta, Color::White),
    ('l', "lock", Color::Red, Color::White),
    ('s', "sleep", Color::Cyan, Color::Black),
    ('o', "other", Color::Gray, Color::Black),
];
/// Time outside the parts (before slowtrace attached, another thread served it).
const UNACCOUNTED: char = '·';

/// Bar cells at widths under `WIDE`; from there a longer bar and the largest part in words.
pub const NARROW_BAR: u16 = 10;
const WIDE_BAR: u16 = 20;
/// The largest part in words: `downstream 100%`.
const WORDS: u16 = 15;
pub const WIDE: u16 = 120;

pub use crate::model::endpoints::Time;

/// The BREAKDOWN column's width for an endpoint table `width` wide.
pub fn column_width(width: u16) -> u16 {
    if width >= WIDE {
        WIDE_BAR + 1 + WORDS
    } else {
        NARROW_BAR
    }
}

/// One endpoint's bar, `width` cells (and its largest part in words when the column is wide);
/// blank without time (handler rows, requests still running).
pub fn bar(t: &Time, width: u16) -> Line<'static> {
    let cells_w = if width > WIDE_BAR { WIDE_BAR } else { width };
    let Some(cells) = t.cells(cells_w) else {
        return Line::from("");
    };
    let mut spans = Vec::new();
    for (i, n) in cells.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let span = match PARTS.get(i) {
            Some((letter, _, bg, fg)) => {
                Span::styled(letter.to_string().repeat(usize::from(*n)), style(*bg, *fg))
            }
            None => Span::raw(UNACCOUNTED.to_string().repeat(usize::from(*n))).dim(),
        };
        spans.push(span);
    }
    if width > WIDE_BAR {
        let top = (0..7).max_by_key(|&i| (t.parts_us[i], std::cmp::Reverse(i)));
        if let Some(i) = top {
            spans.push(Span::raw(format!(" {} {}%", PARTS[i].1, t.percent(i))));
        }
    }
    Line::from(spans)
}

fn style(bg: Color, fg: Color) -> Style {
    Style::new().bg(bg).fg(fg)
}

/// What the letters mean, for the endpoint pane's bottom border.
pub fn legend() -> Line<'static> {
    let mut spans = vec![Span::raw(" ")];
    for (letter, label, bg, fg) in PARTS {
        spans.push(Span::styled(letter.to_string(), style(bg, fg)));
        spans.push(Span::raw(format!(" {label}  ")));
    }
    spans.push(Span::raw(format!("{UNACCOUNTED} unaccounted ")).dim());
    Line::from(spans)
}

/// The detail screen's fields for one request: where its time went, its downstream calls, its
/// findings; none when the agent did not say (in flight, or older kernels without the view).
pub fn detail_fields(r: &Request, label: usize) -> Vec<Line<'static>> {
    let field = |name: &str, value: String| {
        Line::from(vec![
            Span::raw(format!("{name:<label$}")).bold(),
            Span::raw(value),
        ])
    };
    let mut lines = Vec::new();
    if let Some(b) = &r.breakdown {
        let whole = r.duration_us.max(1);
        let mut parts: Vec<String> = b
            .parts()
            .iter()
            .filter(|(_, us)| *us > 0)
            .map(|(name, us)| format!("{name} {} {}%", human_us(*us), us * 100 / whole))
            .collect();
        if b.unaccounted_us != 0 {
            parts.push(format!("unaccounted {}µs", b.unaccounted_us));
        }
        parts.push(format!("{} switches", b.switches));
        lines.push(field("time", parts.join(" · ")));
    }
    if let Some(s) = &r.downstream {
        let mut text = format!(
            "{} calls in {} round trips, {}",
            s.calls,
            s.round_trips,
            human_us(s.time_us)
        );
        for p in &s.peers {
            text.push_str(&format!(
                " · {} {} {}× {}",
                p.protocol,
                p.peer,
                p.round_trips,
                human_us(p.time_us)
            ));
        }
        lines.push(field("calls", text));
    }
    for f in &r.findings {
        lines.push(field("finding", format!("{}: {}", f.kind(), describe(f))).yellow());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::breakdown::Breakdown;

    fn time(parts: [u64; 7], total_us: u64) -> Time {
        Time {
            parts_us: parts,
            total_us,
            requests: 1,
        }
    }

    #[test]
    fn cells_add_up_to_the_width() {
        let t = time([600, 0, 300, 0, 0, 0, 100], 1000);
        assert_eq!(t.cells(10), Some([6, 0, 3, 0, 0, 0, 1, 0]));
        // Thirds: the remainder goes to the first largest.
        let t = time([1, 1, 1, 0, 0, 0, 0], 3);
        assert_eq!(t.cells(10).unwrap().iter().sum::<u16>(), 10);
        assert_eq!(t.cells(10).unwrap()[..3], [4, 3, 3]);
        // Half the time unseen.
        let t = time([500, 0, 0, 0, 0, 0, 0], 1000);
        assert_eq!(t.cells(4), Some([2, 0, 0, 0, 0, 0, 0, 2]));
        assert_eq!(Time::default().cells(10), None);
    }

    #[test]
    fn the_bar_reads_without_colour() {
        let t = time([250, 0, 700, 0, 50, 0, 0], 1000);
        let text = |l: Line<'_>| {
            l.spans
                .iter()
                .map(|s| s.content.to_string())
                .collect::<String>()
        };
        // 2.5, 7 and 0.5 cells: the rounding goes to cpu, the earlier of the equal remainders.
        assert_eq!(text(bar(&t, NARROW_BAR)), "cccddddddd");
        assert_eq!(
            text(bar(&t, column_width(160))),
            format!("ccccc{}l downstream 70%", "d".repeat(14))
        );
        assert_eq!(text(bar(&Time::default(), 10)), "");
    }

    #[test]
    fn detail_fields_say_where_the_time_went() {
        let mut r = crate::tui::state::tests::req("GET /a", 10, 200);
        assert!(detail_fields(&r, 11).is_empty());
        r.breakdown = Some(Breakdown {
            on_cpu_us: 2_000,
            downstream_us: 8_000,
            switches: 4,
            ..Breakdown::default()
        });
        let mut t = Time::default();
        t.add(&r);
        assert_eq!(
            (t.parts_us[2], t.total_us, t.percent(2)),
            (8_000, 10_000, 80)
        );
        let l = &detail_fields(&r, 11)[0];
        let s: String = l.spans.iter().map(|s| s.content.to_string()).collect();
        assert_eq!(
            s,
            "time       cpu 2.00ms 20% · downstream 8.00ms 80% · 4 switches"
        );
    }
}
