//! The dashboard as the user drives it: which screen, sort, filter, selection, pause. Keys come in
//! as crossterm `KeyEvent`s and the result is an `Action` for the loop; no terminal, no clock,
//! so tests press keys and check the state or the drawn screen.

use std::{cell::Cell, time::Duration};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::state::{key, Dashboard, Endpoint, Meta, ReqKey, Update};
use crate::model::Request;

/// Endpoint table columns, in screen order; keys 1..9 pick them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortColumn {
    Endpoint,
    Count,
    Rate,
    P50,
    P95,
    P99,
    Max,
    Errors,
    Slow,
}

impl SortColumn {
    pub const ALL: [SortColumn; 9] = [
        Self::Endpoint,
        Self::Count,
        Self::Rate,
        Self::P50,
        Self::P95,
        Self::P99,
        Self::Max,
        Self::Errors,
        Self::Slow,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Self::Endpoint => "ENDPOINT",
            Self::Count => "COUNT",
            Self::Rate => "REQ/S",
            Self::P50 => "P50",
            Self::P95 => "P95",
            Self::P99 => "P99",
            Self::Max => "MAX",
            Self::Errors => "5XX",
            Self::Slow => "SLOW",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// Names read best A→Z, numbers biggest first.
    fn descending_by_default(self) -> bool {
        self != Self::Endpoint
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Endpoints,
    Slow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Main,
    /// One slow request, all its fields and its captures.
    Detail,
    /// Frames ranked over the captures of the kept slow requests.
    Frames,
    /// Findings per endpoint (N+1, repeated keys, CPU-, lock-, peer-bound), most widespread first.
    Findings,
}

/// What the hot-frames screen ranks; Tab there switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramesSource {
    /// On-CPU samples of every traced thread (`--sample-hz`), slow or not.
    Cpu,
    /// The stack captures of the kept slow requests.
    Captures,
}

/// What the loop must do after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    Export,
}

/// One endpoint row as shown: the endpoint and its rate at the time shown.
pub struct EndpointRow<'a> {
    pub e: &'a Endpoint,
    pub per_sec: f64,
}

/// Rows a page key moves by.
const PAGE: isize = 10;

/// How far the detail screen can scroll, as of the last draw. Only drawing knows the text's
/// wrapped length and the screen's height; keys need both so that scrolling stops at the end (and
/// a key back up moves at once). A `Cell`, so drawing can stay `&App`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScrollRoom {
    pub max: u16,
    pub page: u16,
}

pub struct App {
    live: Dashboard,
    /// While paused: what the screen shows. The live dashboard keeps counting underneath, so
    /// nothing is lost by pausing.
    frozen: Option<Box<Dashboard>>,
    pub sort: SortColumn,
    pub descending: bool,
    pub filter: String,
    /// Typing goes into the filter.
    pub editing: bool,
    pub focus: Focus,
    pub screen: Screen,
    pub frames_source: FramesSource,
    pub help: bool,
    /// Pinned selections, by identity so rows moving under them do not move the selection.
    /// `None` on the slow pane means "the top row", following the newest.
    selected_endpoint: Option<String>,
    selected_slow: Option<ReqKey>,
    /// The request the detail screen opened with, in case it leaves the slow list.
    detail: Option<Request>,
    /// First line shown of the detail screen's captures, or of the findings list.
    pub detail_scroll: u16,
    pub detail_room: Cell<ScrollRoom>,
    /// A one-off message for the footer (export result), cleared by the next key.
    pub status: Option<String>,
}

impl App {
    pub fn new(meta: Meta) -> Self {
        // The CPU profile has rows as soon as the targets run; captures only once slow requests
        // have ended.
        let frames_source = if meta.sample_hz > 0 {
            FramesSource::Cpu
        } else {
            FramesSource::Captures
        };
        Self {
            live: Dashboard::new(meta),
            frozen: None,
            sort: SortColumn::Count,
            descending: true,
            filter: String::new(),
            editing: false,
            focus: Focus::Slow,
            screen: Screen::Main,
            frames_source,
            help: false,
            selected_endpoint: None,
            selected_slow: None,
            detail: None,
            detail_scroll: 0,
            detail_room: Cell::default(),
            status: None,
        }
    }

    pub fn apply(&mut self, u: impl Into<Update>, now: Duration) {
        self.live.apply(u, now);
    }

    /// Before drawing: time moves on even without events, and changed percentiles are
    /// recomputed.
    pub fn prepare(&mut self, now: Duration) {
        self.live.set_now(now);
        self.live.refresh();
    }

    pub fn set_ui_overflow(&mut self, n: u64) {
        self.live.ui_overflow = n;
    }

    pub fn set_stopped(&mut self, why: String) {
        self.live.stopped = Some(why.clone());
        // Also on a frozen screen, or the user would not learn it until unpausing.
        if let Some(f) = self.frozen.as_mut() {
            f.stopped = Some(why);
        }
    }

    pub fn live(&self) -> &Dashboard {
        &self.live
    }

    /// What the screen shows: the frozen copy while paused.
    pub fn shown(&self) -> &Dashboard {
        self.frozen.as_deref().unwrap_or(&self.live)
    }

    pub fn paused(&self) -> bool {
        self.frozen.is_some()
    }

    /// Case-insensitive substring match on the endpoint.
    pub(super) fn matcher(&self) -> impl Fn(&str) -> bool {
        let needle = self.filter.to_lowercase();
        move |endpoint: &str| needle.is_empty() || endpoint.to_lowercase().contains(&needle)
    }

    /// The endpoint table: filtered, sorted (ties by name, so the order is stable).
    pub fn endpoint_rows(&self) -> Vec<EndpointRow<'_>> {
        let d = self.shown();
        let matches = self.matcher();
        let mut rows: Vec<EndpointRow<'_>> = d
            .endpoints()
            .iter()
            .filter(|e| matches(&e.name))
            .map(|e| EndpointRow {
                e,
                per_sec: e.extra.per_sec(d.now),
            })
            .collect();
        let sort = self.sort;
        let cmp = |a: &EndpointRow<'_>, b: &EndpointRow<'_>| {
            let (x, y) = (a.e, b.e);
            match sort {
                SortColumn::Endpoint => x.name.cmp(&y.name),
                SortColumn::Count => x.count.cmp(&y.count),
                SortColumn::Rate => a.per_sec.total_cmp(&b.per_sec),
                SortColumn::P50 => x.q.p50_us.cmp(&y.q.p50_us),
                SortColumn::P95 => x.q.p95_us.cmp(&y.q.p95_us),
                SortColumn::P99 => x.q.p99_us.cmp(&y.q.p99_us),
                SortColumn::Max => x.q.max_us.cmp(&y.q.max_us),
                SortColumn::Errors => x.errors_5xx.cmp(&y.errors_5xx),
                SortColumn::Slow => x.slow.cmp(&y.slow),
            }
        };
        rows.sort_by(|a, b| {
            let primary = if self.descending {
                cmp(b, a)
            } else {
                cmp(a, b)
            };
            primary.then_with(|| a.e.name.cmp(&b.e.name))
        });
        rows
    }

    /// The slow pane, filtered like the endpoints.
    pub fn slow_rows(&self) -> Vec<&Request> {
        let matches = self.matcher();
        self.shown()
            .slow_rows()
            .filter(|r| matches(&r.endpoint))
            .collect()
    }

    pub fn selected_endpoint_index(&self, rows: &[EndpointRow<'_>]) -> usize {
        self.selected_endpoint
            .as_ref()
            .and_then(|s| rows.iter().position(|r| &r.e.name == s))
            .unwrap_or(0)
    }

    pub fn selected_slow_index(&self, rows: &[&Request]) -> usize {
        self.selected_slow
            .and_then(|s| rows.iter().position(|r| key(r) == s))
            .unwrap_or(0)
    }

    /// The request on the detail screen, as it is now if it is still listed (an in-flight one
    /// keeps ticking), else as it was when opened.
    pub fn detail_request(&self) -> Option<&Request> {
        let want = self.detail.as_ref()?;
        let k = key(want);
        self.shown()
            .slow_rows()
            .find(|r| key(r) == k)
            .or(Some(want))
    }

    pub fn on_key(&mut self, k: KeyEvent) -> Action {
        // Terminals that report releases would otherwise act twice.
        if k.kind == KeyEventKind::Release {
            return Action::None;
        }
        self.status = None;
        let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl_c {
            return Action::Quit;
        }
        if self.editing {
            self.edit_filter(k.code);
            return Action::None;
        }
        if self.help {
            match k.code {
                KeyCode::Char('q') => return Action::Quit,
                // Any other key just closes the overlay.
                _ => self.help = false,
            }
            return Action::None;
        }
        match k.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('e') => return Action::Export,
            KeyCode::Char('p') => self.toggle_pause(),
            KeyCode::Char('f') => {
                self.screen = if self.screen == Screen::Frames {
                    Screen::Main
                } else {
                    Screen::Frames
                };
            }
            KeyCode::Char('i') => {
                self.screen = if self.screen == Screen::Findings {
                    Screen::Main
                } else {
                    self.detail_scroll = 0;
                    Screen::Findings
                };
            }
            KeyCode::Char('/') => {
                self.screen = Screen::Main;
                self.editing = true;
            }
            KeyCode::Esc | KeyCode::Backspace if self.screen != Screen::Main => {
                self.screen = Screen::Main;
            }
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char('s') => {
                let next = SortColumn::ALL[(self.sort.index() + 1) % SortColumn::ALL.len()];
                self.sort_by(next);
            }
            KeyCode::Char('S') => self.descending = !self.descending,
            KeyCode::Char(c @ '1'..='9') => {
                let col = SortColumn::ALL[usize::from(c as u8 - b'1')];
                if col == self.sort {
                    self.descending = !self.descending;
                } else {
                    self.sort_by(col);
                }
            }
            KeyCode::Left | KeyCode::Char('h') if self.screen == Screen::Detail => {
                self.move_selection(-1);
            }
            KeyCode::Right | KeyCode::Char('l') if self.screen == Screen::Detail => {
                self.move_selection(1);
            }
            KeyCode::Up
            | KeyCode::Char('k')
            | KeyCode::Down
            | KeyCode::Char('j')
            | KeyCode::PageUp
            | KeyCode::PageDown
            | KeyCode::Home
            | KeyCode::Char('g')
            | KeyCode::End
            | KeyCode::Char('G')
                if matches!(self.screen, Screen::Detail | Screen::Findings) =>
            {
                self.scroll_detail(k.code);
            }
            KeyCode::Tab | KeyCode::BackTab if self.screen == Screen::Frames => {
                self.frames_source = match self.frames_source {
                    FramesSource::Cpu => FramesSource::Captures,
                    FramesSource::Captures => FramesSource::Cpu,
                };
            }
            KeyCode::Tab | KeyCode::BackTab => {
                self.focus = match self.focus {
                    Focus::Endpoints => Focus::Slow,
                    Focus::Slow => Focus::Endpoints,
                };
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::PageUp => self.move_selection(-PAGE),
            KeyCode::PageDown => self.move_selection(PAGE),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(isize::MIN),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(isize::MAX),
            KeyCode::Enter => self.enter(),
            _ => {}
        }
        Action::None
    }

    fn edit_filter(&mut self, code: KeyCode) {
        match code {
            KeyCode::Enter => self.editing = false,
            KeyCode::Esc => {
                self.editing = false;
                self.filter.clear();
            }
            KeyCode::Backspace => {
                self.filter.pop();
            }
            KeyCode::Char(c) => self.filter.push(c),
            _ => {}
        }
    }

    fn sort_by(&mut self, col: SortColumn) {
        self.sort = col;
        self.descending = col.descending_by_default();
    }

    fn toggle_pause(&mut self) {
        self.frozen = match self.frozen.take() {
            Some(_) => None,
            None => Some(Box::new(self.live.clone())),
        };
    }

    /// The detail screen's captures: a line, a page, the ends.
    fn scroll_detail(&mut self, code: KeyCode) {
        let room = self.detail_room.get();
        let page = room.page.max(1);
        let at = self.detail_scroll.min(room.max);
        self.detail_scroll = match code {
            KeyCode::Up | KeyCode::Char('k') => at.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => at.saturating_add(1),
            KeyCode::PageUp => at.saturating_sub(page),
            KeyCode::PageDown => at.saturating_add(page),
            KeyCode::Home | KeyCode::Char('g') => 0,
            _ => room.max,
        }
        .min(room.max);
    }

    /// Up/down in the focused pane (on the detail screen, ←→: the previous/next slow request).
    /// `isize::MIN`/`MAX` go to the top/bottom; the top of the slow pane follows the newest.
    fn move_selection(&mut self, by: isize) {
        let target = |cur: usize, len: usize| -> usize {
            match by {
                isize::MIN => 0,
                isize::MAX => len.saturating_sub(1),
                _ => cur.saturating_add_signed(by).min(len.saturating_sub(1)),
            }
        };
        if self.focus == Focus::Endpoints && self.screen == Screen::Main {
            let rows = self.endpoint_rows();
            let to = target(self.selected_endpoint_index(&rows), rows.len());
            let name = rows.get(to).map(|r| r.e.name.clone());
            self.selected_endpoint = name;
            return;
        }
        let rows = self.slow_rows();
        let to = target(self.selected_slow_index(&rows), rows.len());
        let picked = rows.get(to).map(|r| (*r).clone());
        self.selected_slow = if to == 0 {
            None
        } else {
            picked.as_ref().map(key)
        };
        if self.screen == Screen::Detail && picked.is_some() {
            self.detail = picked;
            self.detail_scroll = 0;
        }
    }

    fn enter(&mut self) {
        match (self.screen, self.focus) {
            (Screen::Main, Focus::Slow) => {
                let rows = self.slow_rows();
                match rows.get(self.selected_slow_index(&rows)) {
                    Some(r) => {
                        self.detail = Some((*r).clone());
                        self.detail_scroll = 0;
                        self.screen = Screen::Detail;
                    }
                    None => self.status = Some("no slow request to show yet".into()),
                }
            }
            // Drill down: the slow requests of this endpoint.
            (Screen::Main, Focus::Endpoints) => {
                let rows = self.endpoint_rows();
                if let Some(r) = rows.get(self.selected_endpoint_index(&rows)) {
                    self.filter = r.e.name.clone();
                    self.focus = Focus::Slow;
                    self.selected_slow = None;
                }
            }
            (Screen::Detail | Screen::Frames | Screen::Findings, _) => self.screen = Screen::Main,
        }
    }
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
