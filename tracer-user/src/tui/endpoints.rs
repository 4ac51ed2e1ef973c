//! The endpoint table (the main screen's top pane): one row per endpoint, sortable by every
//! number column, and where each endpoint's time went as a bar (`breakdown.rs`) when there is
//! room. On narrow terminals columns give way, least telling first, so the endpoint stays
//! readable.

use ratatui::{
    layout::{Constraint, Rect},
    style::{Color, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table, Wrap},
    Frame,
};

use super::{
    app::{App, Focus, SortColumn},
    breakdown,
    ui::{count, ellipsize_middle, pane, rate, render_selectable},
};
use crate::sinks::summary::human_us;

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

/// The columns that fit in `width`, the breakdown bar's width (asked for: `bar`; 0: none, or it
/// does not fit), and the endpoint column's width. The bar gives way after P50.
fn endpoint_columns(width: u16, bar: u16) -> (Vec<SortColumn>, u16, usize) {
    let mut cols = SortColumn::ALL.to_vec();
    let mut bar = bar;
    // Borders and the selection mark take 3 columns; each other column has a space before it.
    let name = |cols: &[SortColumn], bar: u16| {
        let fixed: u16 = cols.iter().map(|c| column_width(*c) + 1).sum::<u16>() - 1;
        let bar = if bar > 0 { bar + 1 } else { 0 };
        width.saturating_sub(fixed + bar + 3)
    };
    for (i, drop) in DROPPED_FIRST.into_iter().enumerate() {
        if i == 1 && name(&cols, bar) < MIN_NAME_WIDTH {
            bar = 0;
        }
        if name(&cols, bar) >= MIN_NAME_WIDTH {
            break;
        }
        cols.retain(|c| *c != drop);
    }
    let w = name(&cols, bar);
    (cols, bar, usize::from(w.max(1)))
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
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
    let d = app.shown();
    let mut title = vec![Span::raw(title).bold()];
    if d.judged > 0 {
        // How many the findings screen lists; loud when there are some.
        let found = format!("· {} findings (i) ", d.found);
        title.push(if d.found > 0 {
            Span::raw(found).yellow().bold()
        } else {
            Span::raw(found)
        });
    }
    let mut block = pane(Line::from(title), app.focus == Focus::Endpoints);
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
    // The bar when some row has a breakdown to draw.
    let want = if rows.iter().any(|r| r.e.time.requests > 0) {
        breakdown::column_width(area.width)
    } else {
        0
    };
    let (cols, bar, name_width) = endpoint_columns(area.width, want);
    if bar > 0 {
        block = block.title_bottom(breakdown::legend());
    }
    let titles = cols.iter().map(|c| {
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
    });
    let bar_title = (bar > 0).then(|| Cell::from("BREAKDOWN"));
    let header = Row::new(titles.chain(bar_title)).bold();
    let red_if_any = |n: u64| {
        if n > 0 {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        }
    };
    let body = rows.iter().map(|r| {
        let e = r.e;
        let cells = cols.iter().map(|c| {
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
        });
        let time = (bar > 0).then(|| Cell::from(breakdown::bar(&e.time, bar)));
        Row::new(cells.chain(time))
    });
    let widths = cols
        .iter()
        .map(|c| match c {
            SortColumn::Endpoint => Constraint::Fill(1),
            c => Constraint::Length(column_width(*c)),
        })
        .chain((bar > 0).then_some(Constraint::Length(bar)));
    let selected = (app.focus == Focus::Endpoints).then(|| app.selected_endpoint_index(&rows));
    render_selectable(
        f,
        area,
        Table::new(body, widths).header(header).block(block),
        selected,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_tables_drop_columns_not_the_endpoint() {
        let (cols, bar, name) = endpoint_columns(80, 0);
        assert_eq!(
            (cols.len(), bar, name),
            (9, 0, 21),
            "everything at 80 columns"
        );
        let (cols, bar, name) = endpoint_columns(80, breakdown::column_width(80));
        assert_eq!((cols.len(), bar, name), (8, 10, 18), "the bar for P50");
        assert!(!cols.contains(&SortColumn::P50));
        let (cols, _, name) = endpoint_columns(60, 0);
        assert!(!cols.contains(&SortColumn::P50) && !cols.contains(&SortColumn::P95));
        assert!(name >= usize::from(MIN_NAME_WIDTH), "{name}");
        let (cols2, bar, name2) = endpoint_columns(60, 10);
        assert_eq!(
            (cols2, bar, name2),
            (cols, 0, name),
            "no bar rather than P95"
        );
        let (cols, _, _) = endpoint_columns(10, 10);
        assert_eq!(cols.len(), 5, "at worst: endpoint, count, p99, max, slow");
        let (cols, bar, name) = endpoint_columns(160, breakdown::column_width(160));
        assert_eq!((cols.len(), bar, name), (9, 36, 64));
    }
}
