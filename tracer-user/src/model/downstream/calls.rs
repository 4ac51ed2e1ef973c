//! Downstream exchanges from the kernel → calls per served request. Each connection's protocol
//! is recognized once, from its first exchange (and the server's greeting, for MySQL); each
//! exchange becomes one call per command it carried (a pipelined batch is one round trip with
//! several commands), timed from the first byte sent to the first byte of the answer.

use std::collections::HashMap;

use serde::Serialize;
use tracer_common::DownstreamRecord;

use super::{commands, findings::Call, recognize, Protocol};
use crate::{
    bounded::Bounded,
    reaper::{self, STATS},
};

pub use crate::model::ids::ReqKey;

/// Connections and open requests remembered at most; beyond, the least recently used
/// connections and all open requests are forgotten (counted).
const MAX_CONNS: usize = 16384;
const MAX_OPEN_REQUESTS: usize = 8192;

struct Conn {
    peer: String,
    protocol: Protocol,
}

/// One round trip, for the per-request summary.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub peer: String,
    pub protocol: Protocol,
    /// Kernel (monotonic) time of its first byte sent.
    pub start_ns: u64,
    pub duration_ns: u64,
    /// The calls it carried (at least one: an exchange with no recognized command is one call
    /// named after its protocol, e.g. a handshake).
    pub calls: Vec<Call>,
}

pub struct CallTracker {
    conns: Bounded<(u32, u64), Conn>,
    open: HashMap<ReqKey, Vec<Exchange>>,
    /// Exchanges outside any request (start-up, background threads).
    pub outside: u64,
    /// Requests whose calls were forgotten because too many were open at once.
    pub dropped_requests: u64,
}

impl Default for CallTracker {
    fn default() -> Self {
        Self {
            conns: Bounded::new(MAX_CONNS, Some(&STATS.downstream_conns)),
            open: HashMap::new(),
            outside: 0,
            dropped_requests: 0,
        }
    }
}

impl CallTracker {
    pub fn add(&mut self, r: &DownstreamRecord) {
        let ck = (r.tgid, r.ds_conn_id);
        if !self.conns.contains_key(&ck) {
            let req = &r.req[..usize::from(r.req_len).min(r.req.len())];
            let greeting = &r.greeting[..usize::from(r.greeting_len).min(r.greeting.len())];
            self.conns.insert(
                ck,
                Conn {
                    peer: peer(r),
                    protocol: recognize(req, (!greeting.is_empty()).then_some(greeting)),
                },
            );
        }
        let Some(conn) = self.conns.get(&ck) else {
            return;
        };
        if r.req_conn_id == 0 {
            self.outside += 1;
            return;
        }
        let key = (r.tgid, r.req_conn_id, r.req_seq);
        if !self.open.contains_key(&key) && self.open.len() >= MAX_OPEN_REQUESTS {
            let n = self.open.len() as u64;
            self.open.clear();
            self.dropped_requests += n;
            reaper::add(&STATS.downstream_requests, n);
        }
        let duration_ns = r.resp_ns.saturating_sub(r.start_ns);
        let msg = &r.req[..usize::from(r.req_len).min(r.req.len())];
        let mut calls: Vec<Call> = commands(conn.protocol, msg)
            .into_iter()
            .map(|c| Call {
                peer: conn.peer.clone(),
                protocol: conn.protocol,
                fingerprint: c.fingerprint,
                key_hash: c.key_hash,
                is_read: c.is_read,
                duration_ns,
            })
            .collect();
        if calls.is_empty() {
            calls.push(Call {
                peer: conn.peer.clone(),
                protocol: conn.protocol,
                fingerprint: format!("({} exchange)", name(conn.protocol)),
                key_hash: None,
                is_read: false,
                duration_ns,
            });
        }
        self.open.entry(key).or_default().push(Exchange {
            peer: conn.peer.clone(),
            protocol: conn.protocol,
            start_ns: r.start_ns,
            duration_ns,
            calls,
        });
    }

    /// The request ended: its exchanges.
    pub fn take(&mut self, key: &ReqKey) -> Vec<Exchange> {
        self.open.remove(key).unwrap_or_default()
    }
}

/// Its connections, and the exchanges of requests that will never end (their process died
/// without the agent seeing the request's end).
impl crate::reaper::PerProcess for CallTracker {
    fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .conns
            .keys()
            .map(|k| k.0)
            .chain(self.open.keys().map(|k| k.0))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn forget_process(&mut self, pid: u32) -> bool {
        let before = self.conns.len() + self.open.len();
        self.conns.retain(|k, _| k.0 != pid);
        self.open.retain(|k, _| k.0 != pid);
        self.conns.len() + self.open.len() != before
    }
}

pub fn name(p: Protocol) -> &'static str {
    match p {
        Protocol::Postgres => "postgres",
        Protocol::Mysql => "mysql",
        Protocol::Redis => "redis",
        Protocol::Memcached => "memcached",
        Protocol::Http => "http",
        Protocol::Unknown => "unknown",
    }
}

fn peer(r: &DownstreamRecord) -> String {
    match r.family {
        2 => format!(
            "{}:{}",
            std::net::Ipv4Addr::new(r.addr[0], r.addr[1], r.addr[2], r.addr[3]),
            r.port
        ),
        10 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&r.addr[..16]);
            format!("[{}]:{}", std::net::Ipv6Addr::from(a), r.port)
        }
        1 => {
            // sun_path; an abstract socket starts with NUL.
            let p = &r.addr[..];
            let (abs, p) = match p.first() {
                Some(0) => ("@", &p[1..]),
                _ => ("", p),
            };
            let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
            format!("unix:{abs}{}", String::from_utf8_lossy(&p[..end]))
        }
        f => format!("family {f}"),
    }
}

/// A request's downstream calls, summarized (`requests.jsonl` field `downstream`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Round trips.
    pub round_trips: u64,
    /// Commands (a pipelined round trip carries several).
    pub calls: u64,
    /// Time waiting for answers, µs (summed over round trips).
    pub time_us: u64,
    pub peers: Vec<PeerSummary>,
    /// Where the app was when a capture of this (slow) request was taken: the innermost Python
    /// frame outside the standard library and site-packages, `function (file:line)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeerSummary {
    pub peer: String,
    pub protocol: &'static str,
    pub round_trips: u64,
    pub time_us: u64,
    /// The most frequent fingerprints (at most 5): never values or keys, only their shape.
    pub top: Vec<FingerprintCount>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FingerprintCount {
    pub fingerprint: String,
    pub calls: u64,
    pub time_us: u64,
}

impl Summary {
    pub fn of(exchanges: &[Exchange]) -> Option<Summary> {
        if exchanges.is_empty() {
            return None;
        }
        let mut s = Summary::default();
        // Per peer: its summary and (calls, µs) per fingerprint.
        type Fingerprints<'a> = HashMap<&'a str, (u64, u64)>;
        let mut peers: Vec<(PeerSummary, Fingerprints<'_>)> = Vec::new();
        for e in exchanges {
            s.round_trips += 1;
            s.calls += e.calls.len() as u64;
            s.time_us += e.duration_ns / 1000;
            let i = match peers.iter().position(|(p, _)| p.peer == e.peer) {
                Some(i) => i,
                None => {
                    peers.push((
                        PeerSummary {
                            peer: e.peer.clone(),
                            protocol: name(e.protocol),
                            ..PeerSummary::default()
                        },
                        HashMap::new(),
                    ));
                    peers.len() - 1
                }
            };
            let (p, fps) = &mut peers[i];
            p.round_trips += 1;
            p.time_us += e.duration_ns / 1000;
            for c in &e.calls {
                let f = fps.entry(c.fingerprint.as_str()).or_default();
                f.0 += 1;
                // A pipelined exchange's time is shared by its calls.
                f.1 += e.duration_ns / 1000 / e.calls.len() as u64;
            }
        }
        s.peers = peers
            .into_iter()
            .map(|(mut p, fps)| {
                let mut top: Vec<FingerprintCount> = fps
                    .into_iter()
                    .map(|(f, (calls, time_us))| FingerprintCount {
                        fingerprint: f.to_owned(),
                        calls,
                        time_us,
                    })
                    .collect();
                top.sort_by(|a, b| {
                    (b.calls, b.time_us)
                        .cmp(&(a.calls, a.time_us))
                        .then_with(|| a.fingerprint.cmp(&b.fingerprint))
                });
                top.truncate(5);
                p.top = top;
                p
            })
            .collect();
        s.peers.sort_by_key(|p| std::cmp::Reverse(p.time_us));
        Some(s)
    }
}

/// The app's own innermost Python frame in `captures`, if any: the code that issued the calls.
pub fn app_site(captures: &[crate::model::slow::Capture]) -> Option<String> {
    let library = |file: &str| file.contains("/site-packages/") || file.contains("/lib/python3.");
    captures.iter().find_map(|c| {
        c.python
            .iter()
            .find(|f| f.file.as_deref().is_some_and(|file| !library(file)))
            .map(|f| {
                format!(
                    "{} ({}:{})",
                    f.function,
                    f.file.as_deref().unwrap_or("?"),
                    f.line.map_or_else(|| "?".into(), |l| l.to_string())
                )
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(conn: u64, req: &[u8], start: u64, resp: u64) -> DownstreamRecord {
        let mut r: DownstreamRecord = unsafe { std::mem::zeroed() };
        r.tgid = 7;
        r.ds_conn_id = conn;
        r.family = 2;
        r.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.port = 6379;
        r.req[..req.len()].copy_from_slice(req);
        r.req_len = req.len() as u16;
        r.start_ns = start;
        r.resp_ns = resp;
        r.req_conn_id = 99;
        r.req_seq = 0;
        r
    }

    #[test]
    fn groups_calls_per_request_and_summarizes() {
        let mut t = CallTracker::default();
        let get = b"*2\r\n$3\r\nGET\r\n$8\r\nuser:42\r\n";
        for i in 0..50 {
            t.add(&record(1, get, i * 1000, i * 1000 + 200_000));
        }
        let ex = t.take(&(7, 99, 0));
        assert_eq!(ex.len(), 50);
        assert_eq!(ex[0].peer, "127.0.0.1:6379");
        assert_eq!(ex[0].protocol, Protocol::Redis);
        let s = Summary::of(&ex).unwrap();
        assert_eq!((s.round_trips, s.calls, s.time_us), (50, 50, 10_000));
        assert_eq!(s.peers[0].top[0].calls, 50);
        assert!(s.peers[0].top[0].fingerprint.starts_with("GET"));
        assert!(t.take(&(7, 99, 0)).is_empty());
    }

    #[test]
    fn exchanges_outside_requests_are_counted_not_kept() {
        let mut t = CallTracker::default();
        let mut r = record(1, b"PING\r\n", 0, 10);
        r.req_conn_id = 0;
        t.add(&r);
        assert_eq!(t.outside, 1);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn the_site_is_the_apps_own_innermost_frame() {
        use crate::model::slow::{Capture, Frame};
        let f = |function: &str, file: &str, line| Frame {
            function: function.into(),
            file: Some(file.into()),
            line: Some(line),
            module: None,
        };
        let c = Capture {
            python: vec![
                f(
                    "execute",
                    "/v/lib/python3.11/site-packages/django/db/x.py",
                    10,
                ),
                f("recv_into", "/usr/lib/python3.11/socket.py", 5),
                f("books_n_plus_one", "/srv/app/views.py", 77),
                f(
                    "inner",
                    "/v/lib/python3.11/site-packages/django/core/h.py",
                    1,
                ),
            ],
            ..Capture::default()
        };
        assert_eq!(
            app_site(&[c]).as_deref(),
            Some("books_n_plus_one (/srv/app/views.py:77)")
        );
        assert_eq!(app_site(&[]), None);
    }

    #[test]
    fn forgets_one_process_and_bounds_connections() {
        use crate::reaper::PerProcess as _;
        let mut t = CallTracker::default();
        let get = b"*2\r\n$3\r\nGET\r\n$8\r\nuser:42\r\n";
        let mut other = record(2, get, 0, 10);
        other.tgid = 8;
        t.add(&record(1, get, 0, 10));
        t.add(&other);
        assert_eq!(t.pids(), [7, 8]);
        assert!(t.forget_process(7));
        assert_eq!(t.pids(), [8]);
        assert!(t.take(&(7, 99, 0)).is_empty(), "its open request went too");
        assert_eq!(t.take(&(8, 99, 0)).len(), 1);
        // One connection per record, far more than the cap: bounded, evictions counted.
        for c in 0..(MAX_CONNS as u64 * 3) {
            let mut r = record(c, get, 0, 10);
            r.req_conn_id = 0;
            t.add(&r);
        }
        assert!(t.conns.len() <= MAX_CONNS);
        assert_eq!(
            t.conns.evicted + t.conns.len() as u64,
            MAX_CONNS as u64 * 3 + 1
        );
    }

    #[test]
    fn names_unix_peers() {
        let mut r = record(1, b"", 0, 1);
        r.family = 1;
        r.addr = [0; 64];
        r.addr[..11].copy_from_slice(b"/tmp/x.sock");
        assert_eq!(peer(&r), "unix:/tmp/x.sock");
    }
}
