//! Breakdown bars in the endpoint table and the findings screen (`i`). Requests with breakdowns
//! and findings go in the way the agent hands them over (`Consumer::on_event` on the feed's
//! forwarder, requests.jsonl, then the channel into the dashboard); the screens are compared with
//! the snapshots in `snapshots/`.

use ratatui::{crossterm::event::KeyCode, style::Color};

use super::{
    app::{App, Screen},
    cpu_tests::forwarder,
    state::tests::{meta, req},
    tests::{keys, render, screen, secs},
};
use crate::{
    agent::{AgentEvent, Consumer as _},
    model::{
        breakdown::Breakdown,
        downstream::{
            calls::{FingerprintCount, PeerSummary, Summary},
            findings::Finding,
        },
        Request,
    },
};

const DB: &str = "10.0.0.5:5432";
const CACHE: &str = "10.0.0.7:6379";
const PAYMENTS: &str = "10.0.0.9:443";
const ITEMS: &str = "SELECT * FROM order_items WHERE order_id = ?";

/// A finished request of `ms`, its time split as `(cpu, runq, downstream, disk, lock, sleep,
/// other)` shares in percent, with `findings`.
fn explained(endpoint: &str, ms: u64, parts: [u64; 7], findings: Vec<Finding>) -> Request {
    let mut r = req(endpoint, ms, 200);
    let us = |pct: u64| ms * 1000 * pct / 100;
    r.breakdown = Some(Breakdown {
        on_cpu_us: us(parts[0]),
        runqueue_us: us(parts[1]),
        downstream_us: us(parts[2]),
        disk_us: us(parts[3]),
        lock_us: us(parts[4]),
        sleep_us: us(parts[5]),
        other_us: us(parts[6]),
        unaccounted_us: (ms * 1000 - parts.iter().map(|p| us(*p)).sum::<u64>()) as i64,
        switches: 3,
    });
    r.findings = findings;
    r
}

fn n_plus_one(count: u32, ms: u64) -> Finding {
    Finding::NPlusOne {
        fingerprint: ITEMS.into(),
        count,
        total_ns: ms * 1_000_000,
        peer: DB.into(),
    }
}

/// A shop's requests with their breakdowns and findings, as the agent would send them: the
/// endpoints' requests interleaved, so each has a rate.
fn shop() -> Vec<Request> {
    let mut groups = Vec::new();
    let mut out = Vec::new();
    for i in 0..40 {
        // 37 of 40 order pages load their items one query at a time.
        let f = if i % 13 == 5 {
            vec![]
        } else {
            vec![n_plus_one(20 + i, 2 * u64::from(i))]
        };
        out.push(explained(
            "GET /orders/:int",
            80,
            [20, 2, 75, 0, 0, 0, 3],
            f,
        ));
    }
    groups.push(std::mem::take(&mut out));
    for i in 0..30 {
        let f = match i % 3 {
            0 => vec![Finding::RepeatedKey {
                fingerprint: "GET product:?".into(),
                count: 6 + i,
                peer: CACHE.into(),
            }],
            _ => vec![],
        };
        out.push(explained(
            "GET /products/:int",
            12,
            [55, 5, 30, 0, 0, 0, 10],
            f,
        ));
    }
    groups.push(std::mem::take(&mut out));
    for i in 0..6 {
        let mut f = vec![Finding::PeerBound {
            peer: PAYMENTS.into(),
            share: 0.7 + 0.01 * f64::from(i),
            calls: 3,
        }];
        if i < 2 {
            f.insert(0, Finding::LockBound { share: 0.55 });
        }
        out.push(explained(
            "POST /checkout",
            1400,
            [5, 1, 70, 0, 20, 0, 2],
            f,
        ));
    }
    groups.push(std::mem::take(&mut out));
    for _ in 0..4 {
        let f = vec![Finding::CpuBound { share: 0.93 }];
        let mut r = explained("GET /report", 2100, [93, 4, 2, 1, 0, 0, 0], f);
        r.downstream = Some(Summary {
            round_trips: 3,
            calls: 3,
            time_us: 42_000,
            peers: vec![PeerSummary {
                peer: DB.into(),
                protocol: "postgres",
                round_trips: 3,
                time_us: 42_000,
                top: vec![FingerprintCount {
                    fingerprint: "SELECT * FROM sales WHERE day >= ?".into(),
                    calls: 3,
                    time_us: 42_000,
                }],
            }],
            ..Summary::default()
        });
        out.push(r);
    }
    groups.push(std::mem::take(&mut out));
    for _ in 0..50 {
        out.push(explained("GET /", 3, [60, 10, 0, 5, 0, 20, 5], vec![]));
    }
    groups.push(std::mem::take(&mut out));
    // Slept through, and part of it before slowtrace attached.
    out.push(explained(
        "GET /sleep",
        1500,
        [1, 0, 0, 0, 0, 60, 0],
        vec![],
    ));
    groups.push(out);
    let mut timeline: Vec<(f64, Request)> = groups
        .into_iter()
        .flat_map(|g| {
            let n = g.len() as f64;
            g.into_iter()
                .enumerate()
                .map(move |(i, r)| ((i as f64 + 1.0) / n, r))
        })
        .collect();
    timeline.sort_by(|a, b| a.0.total_cmp(&b.0));
    timeline.into_iter().map(|(_, r)| r).collect()
}

/// Hand `requests` to the dashboard as `top` does: the agent's consumer, then the channel.
fn send(app: &mut App, requests: Vec<Request>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut fwd, rx) = forwarder(&dir, requests.len() + 1);
    let n = requests.len();
    for (i, r) in requests.into_iter().enumerate() {
        fwd.on_event(AgentEvent::Request(Box::new(r))).unwrap();
        for u in rx.try_iter() {
            app.apply(u, secs(10.0 * i as f64 / n as f64));
        }
    }
    fwd.on_event(AgentEvent::Tick {
        in_flight: vec![],
        counters: Default::default(),
    })
    .unwrap();
    for u in rx.try_iter() {
        app.apply(u, secs(10.0));
    }
    let written = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    assert_eq!(
        written.matches("\"breakdown\":{").count(),
        n,
        "the file first"
    );
}

fn shop_app() -> App {
    let mut app = App::new(meta());
    send(&mut app, shop());
    app
}

#[test]
fn endpoints_with_breakdown_bars_160x48() {
    let s = screen(&mut shop_app(), 160, 48);
    let row = |t: &str| {
        s.lines()
            .find(|l| l.contains(t))
            .unwrap_or_else(|| panic!("{t} not in\n{s}"))
    };
    assert!(
        row("GET /orders/:int").contains("dddo downstream 75%"),
        "{s}"
    );
    assert!(row("GET /report").contains("cpu 93%"), "{s}");
    // 61% accounted for: the rest of the bar is dotted.
    assert!(row("GET /sleep").contains("sssss"), "{s}");
    assert!(row("GET /sleep").contains("········"), "{s}");
    assert!(s.contains("· 5 findings (i)"), "{s}");
    assert!(s.contains("c cpu  r runq  d downstream"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn endpoints_with_breakdown_bars_80x24() {
    let s = screen(&mut shop_app(), 80, 24);
    assert!(s.contains("BREAKDOWN"), "{s}");
    assert!(!s.contains("P50"), "the bar takes P50's place: {s}");
    assert!(s.contains("i findings"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn bars_are_coloured_per_part() {
    let mut app = shop_app();
    let t = render(&mut app, 80, 24);
    let buf = t.backend().buffer();
    let y = (0..buf.area.height)
        .find(|y| {
            let line: String = (0..buf.area.width).map(|x| buf[(x, *y)].symbol()).collect();
            line.contains("GET /report")
        })
        .unwrap();
    let bar: Vec<_> = (0..buf.area.width)
        .map(|x| &buf[(x, y)])
        .filter(|c| c.bg != Color::Reset)
        .map(|c| (c.symbol().to_owned(), c.bg))
        .collect();
    assert_eq!(bar.len(), 10, "{bar:?}");
    assert_eq!(bar[0], ("c".into(), Color::Green));
    assert_eq!(bar[9], ("r".into(), Color::Yellow));
}

#[test]
fn findings_160x48() {
    let mut app = shop_app();
    keys(&mut app, &[KeyCode::Char('i')]);
    assert_eq!(app.screen, Screen::Findings);
    let s = screen(&mut app, 160, 48);
    let row = |t: &str| {
        s.lines()
            .find(|l| l.contains(t))
            .unwrap_or_else(|| panic!("{t} not in\n{s}"))
    };
    // Most widespread first: 37 order pages, then 10 product pages, the 6 checkouts; the worst
    // N+1 was the 40th order page's, 59 queries.
    let order: Vec<usize> = ["n_plus_one", "repeated_key", "peer_bound"]
        .iter()
        .map(|k| s.find(k).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{s}");
    assert!(
        row("n_plus_one").contains("37/40  92% 59× `SELECT * FROM order_items"),
        "the worst example: {s}"
    );
    assert!(row("lock_bound").contains("2/6  33% 55% waiting on locks"));
    assert!(s.contains("Findings · 5 on 4 endpoints · 131 requests checked"));
    insta::assert_snapshot!(s);
}

#[test]
fn findings_80x24() {
    let mut app = shop_app();
    keys(&mut app, &[KeyCode::Char('i')]);
    let s = screen(&mut app, 80, 24);
    // The example goes under the endpoint, wrapped.
    assert!(
        s.contains("             59× `SELECT * FROM order_items"),
        "{s}"
    );
    insta::assert_snapshot!(s);
}

#[test]
fn findings_empty_80x24() {
    let mut app = App::new(meta());
    keys(&mut app, &[KeyCode::Char('i')]);
    let s = screen(&mut app, 80, 24);
    assert!(
        s.contains("No findings yet: no finished request has been checked."),
        "{s}"
    );
    insta::assert_snapshot!(s);
}

#[test]
fn no_findings_160x48() {
    let mut app = App::new(meta());
    let plain = (0..20)
        .map(|_| explained("GET /", 3, [60, 10, 0, 5, 0, 20, 5], vec![]))
        .collect();
    send(&mut app, plain);
    keys(&mut app, &[KeyCode::Char('i')]);
    let s = screen(&mut app, 160, 48);
    assert!(s.contains("No findings in 20 finished requests."), "{s}");
    assert!(s.contains("≥ 10 times (--n-plus-one)"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn the_filter_applies_and_the_list_scrolls() {
    let mut app = shop_app();
    keys(&mut app, &[KeyCode::Char('/')]);
    for c in "checkout".chars() {
        keys(&mut app, &[KeyCode::Char(c)]);
    }
    keys(&mut app, &[KeyCode::Enter, KeyCode::Char('i')]);
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("peer_bound") && !s.contains("n_plus_one"), "{s}");
    keys(&mut app, &[KeyCode::Char('i')]);
    assert_eq!(app.screen, Screen::Main, "i again: back");
    keys(&mut app, &[KeyCode::Esc]);
    assert!(app.filter.is_empty());
    // Many endpoints with findings: more lines than fit.
    let mut many = Vec::new();
    for i in 0..30 {
        let f = vec![Finding::CpuBound { share: 0.9 }];
        many.push(explained(
            &format!("GET /p{i}"),
            1500,
            [90, 2, 2, 2, 2, 1, 1],
            f,
        ));
    }
    send(&mut app, many);
    keys(&mut app, &[KeyCode::Char('i')]);
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("· lines 1-18 of"), "{s}");
    keys(&mut app, &[KeyCode::Char('G')]);
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("lines 54-71 of 71 "), "{s}");
    assert!(!s.contains("lines 1-"), "{s}");
    keys(&mut app, &[KeyCode::Esc]);
    assert_eq!(app.screen, Screen::Main);
}

#[test]
fn the_detail_of_a_slow_request_says_where_its_time_went() {
    let mut app = shop_app();
    // The newest slow request: GET /sleep; the one before, a report.
    keys(&mut app, &[KeyCode::Down, KeyCode::Enter]);
    assert_eq!(app.detail_request().unwrap().endpoint, "GET /report");
    let s = screen(&mut app, 160, 48);
    assert!(
        s.contains("time       cpu 1.95s 93% · runq 84.0ms 4% · downstream 42.0ms 2%"),
        "{s}"
    );
    assert!(
        s.contains(
            "calls      3 calls in 3 round trips, 42.0ms · postgres 10.0.0.5:5432 3× 42.0ms"
        ),
        "{s}"
    );
    assert!(s.contains("finding    cpu_bound: 93% on CPU"), "{s}");
}

#[test]
fn any_size_draws_findings_without_panicking() {
    for (w, h) in [(1, 1), (10, 3), (20, 6), (40, 10), (300, 100)] {
        let mut app = shop_app();
        render(&mut app, w, h);
        keys(&mut app, &[KeyCode::Char('i')]);
        render(&mut app, w, h);
    }
}

#[test]
fn findings_past_the_bound_are_counted_not_kept() {
    let mut app = App::new(meta());
    let statements: Vec<Request> = (0..25)
        .map(|i| {
            let f = vec![Finding::NPlusOne {
                fingerprint: format!("SELECT * FROM t{i} WHERE id = ?"),
                count: 12,
                total_ns: 3_000_000,
                peer: DB.into(),
            }];
            explained("GET /everything", 40, [10, 0, 90, 0, 0, 0, 0], f)
        })
        .collect();
    send(&mut app, statements);
    keys(&mut app, &[KeyCode::Char('i')]);
    let s = screen(&mut app, 160, 48);
    assert!(s.contains("Findings · 20 on 1 endpoints"), "{s}");
    assert!(s.contains("· 5 past 20 per endpoint not kept"), "{s}");
    assert_eq!(app.live().found, 20);
}
