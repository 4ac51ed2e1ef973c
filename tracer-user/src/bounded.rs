//! A map that never holds more than a fixed number of entries, for caches that are not per
//! process (resolved symbols, code objects, downstream connections): an always-on agent must
//! stay flat however long it runs.
//!
//! Two generations: entries go into the young one; when it is full, the old generation is
//! dropped (every entry in it counted as evicted) and the young one becomes the old one. A hit
//! in the old generation moves the entry back to the young one, so what is in use survives and
//! what is not ages out: LRU-like at the cost of a hash lookup, with no per-entry bookkeeping.
//! Evictions are counted here and, for the run summary, in a global counter
//! (`crate::reaper::STATS`).

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    sync::atomic::{AtomicU64, Ordering},
};

pub struct Bounded<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    /// Entries per generation: at most `2 * half` in all.
    half: usize,
    /// Entries evicted so far.
    pub evicted: u64,
    /// Where evictions are also counted for the summary.
    report: Option<&'static AtomicU64>,
}

impl<K: Hash + Eq, V> Bounded<K, V> {
    /// At most `cap` entries (at least 2), evictions also added to `report`.
    pub fn new(cap: usize, report: Option<&'static AtomicU64>) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (cap / 2).max(1),
            evicted: 0,
            report,
        }
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.young.is_empty() && self.old.is_empty()
    }

    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.young.contains_key(k) || self.old.contains_key(k)
    }

    /// The entry, moved to the young generation if it was in the old one.
    pub fn get<Q>(&mut self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.young.contains_key(k) {
            let (key, v) = self.old.remove_entry(k)?;
            self.insert(key, v);
        }
        self.young.get(k)
    }

    /// The entry, without marking it used.
    pub fn peek<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.young.get(k).or_else(|| self.old.get(k))
    }

    pub fn insert(&mut self, k: K, v: V) {
        self.old.remove(&k);
        if self.young.len() >= self.half && !self.young.contains_key(&k) {
            let dropped = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
            self.count(dropped.len() as u64);
        }
        self.young.insert(k, v);
    }

    /// Keep only the entries `keep` says yes to (forgetting a process); not evictions.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.young.retain(|k, v| keep(k, v));
        self.old.retain(|k, v| keep(k, v));
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.young.keys().chain(self.old.keys())
    }

    fn count(&mut self, n: u64) {
        self.evicted += n;
        if let Some(r) = self.report {
            r.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_cap_and_counts_what_it_drops() {
        static REPORTED: AtomicU64 = AtomicU64::new(0);
        let mut c = Bounded::new(10, Some(&REPORTED));
        for i in 0..100u32 {
            c.insert(i, i * 2);
            assert!(c.len() <= 10, "{} entries", c.len());
        }
        // 100 inserted, at most 10 kept: the rest were counted, here and in the report.
        assert_eq!(c.evicted + c.len() as u64, 100);
        assert_eq!(REPORTED.load(Ordering::Relaxed), c.evicted);
        assert_eq!(c.get(&99), Some(&198), "the newest entries stay");
        assert_eq!(c.get(&0), None, "the oldest are gone");
    }

    #[test]
    fn entries_in_use_survive_a_generation_change() {
        let mut c = Bounded::new(4, None);
        c.insert("hot", 1);
        c.insert("a", 0);
        c.insert("b", 0); // young full → {hot, a} becomes old
        assert_eq!(c.get("hot"), Some(&1)); // used: back to young
        c.insert("c", 0);
        c.insert("d", 0);
        assert!(c.contains_key("hot"), "a used entry is kept");
        assert!(!c.contains_key("a"), "an unused one ages out");
        assert_eq!(c.evicted, 1);
    }

    #[test]
    fn retain_forgets_without_counting_evictions() {
        let mut c = Bounded::new(100, None);
        for pid in [1u32, 2] {
            for addr in 0..10u64 {
                c.insert((pid, addr), ());
            }
        }
        c.retain(|(pid, _), _| *pid != 1);
        assert_eq!(c.len(), 10);
        assert!(c.keys().all(|(pid, _)| *pid == 2));
        assert_eq!(c.evicted, 0);
    }
}
