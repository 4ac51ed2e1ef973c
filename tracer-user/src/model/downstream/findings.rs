//! Findings: what one request's downstream calls and time breakdown say about why it was slow,
//! and their aggregation over the requests of one endpoint. Pure and deterministic: groups live in
//! `BTreeMap`s and every output is sorted, so two runs over the same input print the same report.

use super::Protocol;
use serde::Serialize;
use std::collections::BTreeMap;

/// One downstream call made while serving a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub peer: String,
    pub protocol: Protocol,
    pub fingerprint: String,
    pub key_hash: Option<u64>,
    pub is_read: bool,
    pub duration_ns: u64,
}

/// Where the request's wall time went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Breakdown {
    pub total_ns: u64,
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
    pub downstream_ns: u64,
    pub disk_ns: u64,
    pub lock_ns: u64,
    pub sleep_ns: u64,
    pub other_ns: u64,
}

/// Counts fire at `>=`; shares are fractions of `total_ns` and fire at `>=`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    /// Same statement/command (fingerprint) to the same peer this many times: N+1. Counts below 2
    /// never fire, whatever the setting.
    pub n_plus_one: u32,
    /// The same exact cache key read this many times in one request. 5 by default: a key read
    /// twice (middleware then view) is common and cheap; five times means nobody kept the value.
    pub repeated_key: u32,
    pub cpu_share: f64,
    pub lock_share: f64,
    /// Time in calls to one peer (summed; concurrent calls can exceed the wall time, so the share
    /// is capped at 1).
    pub peer_share: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            n_plus_one: 10,
            repeated_key: 5,
            cpu_share: 0.8,
            lock_share: 0.5,
            peer_share: 0.5,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    NPlusOne {
        fingerprint: String,
        count: u32,
        total_ns: u64,
        peer: String,
    },
    RepeatedKey {
        fingerprint: String,
        count: u32,
        peer: String,
    },
    CpuBound {
        share: f64,
    },
    LockBound {
        share: f64,
    },
    PeerBound {
        peer: String,
        share: f64,
        calls: u32,
    },
}

impl Finding {
    /// The serialized `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::NPlusOne { .. } => "n_plus_one",
            Finding::RepeatedKey { .. } => "repeated_key",
            Finding::CpuBound { .. } => "cpu_bound",
            Finding::LockBound { .. } => "lock_bound",
            Finding::PeerBound { .. } => "peer_bound",
        }
    }

    /// What identifies the finding within its kind: (peer, fingerprint), empty when not relevant.
    pub fn subject(&self) -> (&str, &str) {
        match self {
            Finding::NPlusOne {
                peer, fingerprint, ..
            }
            | Finding::RepeatedKey {
                peer, fingerprint, ..
            } => (peer, fingerprint),
            Finding::PeerBound { peer, .. } => (peer, ""),
            Finding::CpuBound { .. } | Finding::LockBound { .. } => ("", ""),
        }
    }

    /// How bad it is: the count of calls, or the share of the request's time.
    pub fn magnitude(&self) -> f64 {
        match self {
            Finding::NPlusOne { count, .. } | Finding::RepeatedKey { count, .. } => {
                f64::from(*count)
            }
            Finding::CpuBound { share }
            | Finding::LockBound { share }
            | Finding::PeerBound { share, .. } => *share,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Finding::NPlusOne { .. } => 0,
            Finding::RepeatedKey { .. } => 1,
            Finding::CpuBound { .. } => 2,
            Finding::LockBound { .. } => 3,
            Finding::PeerBound { .. } => 4,
        }
    }
}

fn share(part: u64, total: u64) -> f64 {
    // u64 → f64 rounds above 2^53 ns (104 days): irrelevant for a share.
    (part as f64 / total as f64).min(1.0)
}

/// The findings of one request, in a fixed order: N+1, repeated keys, CPU, lock, peers; within a
/// kind the worst first, ties by peer then fingerprint.
pub fn detect(calls: &[Call], b: &Breakdown, t: &Thresholds) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut by_statement: BTreeMap<(&str, &str), (u32, u64)> = BTreeMap::new();
    let mut by_key: BTreeMap<(&str, u64), (u32, &str)> = BTreeMap::new();
    let mut by_peer: BTreeMap<&str, (u32, u64)> = BTreeMap::new();
    for c in calls {
        // Keyed cache commands are judged by their exact keys (repeated-key below): fifty gets
        // of fifty different keys is not a mistake, fifty of the same one is.
        if c.key_hash.is_none() {
            let s = by_statement.entry((&c.peer, &c.fingerprint)).or_default();
            *s = (s.0.saturating_add(1), s.1.saturating_add(c.duration_ns));
        }
        if let (true, Some(h)) = (c.is_read, c.key_hash) {
            let k = by_key.entry((&c.peer, h)).or_insert((0, &c.fingerprint));
            k.0 = k.0.saturating_add(1);
        }
        let p = by_peer.entry(&c.peer).or_default();
        *p = (p.0.saturating_add(1), p.1.saturating_add(c.duration_ns));
    }
    let mut n1: Vec<Finding> = by_statement
        .into_iter()
        .filter(|(_, (n, _))| *n >= t.n_plus_one.max(2))
        .map(|((peer, fp), (count, total_ns))| Finding::NPlusOne {
            fingerprint: fp.to_owned(),
            count,
            total_ns,
            peer: peer.to_owned(),
        })
        .collect();
    let mut keys: Vec<Finding> = by_key
        .into_iter()
        .filter(|(_, (n, _))| *n >= t.repeated_key.max(2))
        .map(|((peer, _), (count, fp))| Finding::RepeatedKey {
            fingerprint: fp.to_owned(),
            count,
            peer: peer.to_owned(),
        })
        .collect();
    keys.sort_by(|a, b| a.subject().cmp(&b.subject()));
    for group in [&mut n1, &mut keys] {
        // Stable: equal magnitudes keep the (peer, fingerprint) order from above.
        group.sort_by(|a, b| b.magnitude().total_cmp(&a.magnitude()));
        out.append(group);
    }
    if b.total_ns > 0 {
        let cpu = share(b.on_cpu_ns, b.total_ns);
        if cpu >= t.cpu_share {
            out.push(Finding::CpuBound { share: cpu });
        }
        let lock = share(b.lock_ns, b.total_ns);
        if lock >= t.lock_share {
            out.push(Finding::LockBound { share: lock });
        }
        let mut peers: Vec<Finding> = by_peer
            .into_iter()
            .map(|(peer, (calls, ns))| (peer, calls, share(ns, b.total_ns)))
            .filter(|(_, _, s)| *s >= t.peer_share)
            .map(|(peer, calls, share)| Finding::PeerBound {
                peer: peer.to_owned(),
                share,
                calls,
            })
            .collect();
        peers.sort_by(|a, b| b.magnitude().total_cmp(&a.magnitude()));
        out.append(&mut peers);
    }
    out
}

/// One finding kind and subject over the requests of an endpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Aggregated {
    pub kind: &'static str,
    /// Requests of the endpoint in which this finding fired.
    pub requests: u64,
    /// The worst magnitude seen (count of calls, or share of time).
    pub max: f64,
    /// The request finding with that worst magnitude.
    pub example: Finding,
    /// The number of the last request counted, so a finding repeated in one request counts once.
    #[serde(skip)]
    last_request: u64,
}

/// Findings of many requests of one endpoint, merged by (kind, peer, fingerprint).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointFindings {
    requests: u64,
    merged: BTreeMap<(u8, String, String), Aggregated>,
}

impl EndpointFindings {
    /// Add one request's findings; call it for every request, even one with none, so the share
    /// of requests affected has the right denominator.
    pub fn add(&mut self, findings: &[Finding]) {
        self.requests += 1;
        for f in findings {
            let (peer, fp) = f.subject();
            let key = (f.rank(), peer.to_owned(), fp.to_owned());
            let a = self.merged.entry(key).or_insert_with(|| Aggregated {
                kind: f.kind(),
                requests: 0,
                max: f.magnitude(),
                example: f.clone(),
                last_request: 0,
            });
            if a.last_request != self.requests {
                a.last_request = self.requests;
                a.requests += 1;
            }
            if f.magnitude() > a.max {
                a.max = f.magnitude();
                a.example = f.clone();
            }
        }
    }

    /// Requests added so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Most widespread first; ties in kind order, then by peer and fingerprint.
    pub fn findings(&self) -> Vec<&Aggregated> {
        let mut v: Vec<&Aggregated> = self.merged.values().collect();
        v.sort_by_key(|a| std::cmp::Reverse(a.requests));
        v
    }
}

impl Serialize for EndpointFindings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            requests: u64,
            findings: Vec<&'a Aggregated>,
        }
        View {
            requests: self.requests,
            findings: self.findings(),
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests;
