//! The continuous profile: resolved samples in, folded stacks out, cut by endpoint and by
//! request. Pure data: the profiler thread feeds it, sinks render it.
//!
//! Two weights per stack: `cpu_samples` (on-CPU samples, the CPU profile) and `wall_us` (time
//! inside requests: on-CPU samples converted at the sampling period plus measured off-CPU time,
//! the wall-clock profile). Frames and stacks are interned, so a sample costs a hash lookup.

use std::collections::HashMap;

pub use super::ids::ReqKey;

/// Root frame of samples taken while the thread served no request.
pub const NO_REQUEST: &str = "[no request]";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// The endpoint (or `NO_REQUEST`).
    Root,
    Python,
    Native,
    Kernel,
    /// Added by slowtrace, e.g. `[off-cpu: runnable]`.
    Marker,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FrameInfo {
    pub name: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub kind: FrameKind,
}

impl FrameInfo {
    pub fn new(kind: FrameKind, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            file: None,
            line: None,
            kind,
        }
    }

    /// The frame's text in folded stacks: `function (file:line)`, kernel frames suffixed `_[k]`
    /// (inferno colours those as kernel). `;` separates frames, so it never appears inside one.
    pub fn label(&self) -> String {
        let base = match (&self.file, self.line) {
            (Some(f), Some(l)) => format!("{} ({f}:{l})", self.name),
            (Some(f), None) => format!("{} ({f})", self.name),
            _ => self.name.clone(),
        };
        let base = base.replace([';', '\n'], ":");
        if self.kind == FrameKind::Kernel {
            format!("{base}_[k]")
        } else {
            base
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Weights {
    pub cpu_samples: u64,
    pub wall_us: u64,
}

impl Weights {
    fn add(&mut self, o: Weights) {
        self.cpu_samples += o.cpu_samples;
        self.wall_us += o.wall_us;
    }

    pub fn get(&self, m: Metric) -> u64 {
        match m {
            Metric::Cpu => self.cpu_samples,
            Metric::Wall => self.wall_us,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Cpu,
    Wall,
}

/// One resolved sample.
pub struct Sample<'a> {
    /// The endpoint of the request being served, `None` outside requests.
    pub endpoint: Option<&'a str>,
    /// Root to leaf, without the endpoint.
    pub frames: &'a [FrameInfo],
    pub request: Option<ReqKey>,
    pub weights: Weights,
    /// The sampled thread, for the labelled tables (pprof).
    pub task: Task<'a>,
}

/// The thread a sample was taken on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task<'a> {
    pub pid: u32,
    pub tid: u32,
    /// Its name (`comm`); empty when unknown.
    pub name: &'a str,
}

/// Requests whose samples are kept until they end; beyond it the oldest are dropped (counted).
const MAX_OPEN_REQUESTS: usize = 4096;
/// Distinct frames and stacks interned at most (about 10 and 40 MB at their worst): a sample
/// whose stack needs a new one beyond is counted under `TABLE_FULL` (and reported), so an
/// always-on profile stays bounded whatever runs.
const MAX_FRAMES: usize = 100_000;
const MAX_STACKS: usize = 100_000;
/// The frame samples that did not fit are counted under.
pub const TABLE_FULL: &str = "[profile table full]";

pub struct Profile {
    frames: Vec<FrameInfo>,
    frame_ids: HashMap<FrameInfo, u32>,
    stacks: Vec<Vec<u32>>,
    stack_ids: HashMap<Vec<u32>, u32>,
    totals: HashMap<u32, Weights>,
    by_request: HashMap<ReqKey, (u64, HashMap<u32, Weights>)>,
    /// Order requests were opened in (for the drop rule).
    opened: u64,
    pub samples: u64,
    /// Requests whose own samples were dropped because too many were open at once.
    pub dropped_requests: u64,
    /// Samples counted under `TABLE_FULL` because their stack did not fit.
    pub folded_samples: u64,
    /// Caps of the frame and stack tables (tests lower them).
    max_frames: usize,
    max_stacks: usize,
    /// The whole run's samples by stack and label set (`--pprof`); None: not kept.
    pub labelled: Option<Labelled>,
    /// The current push period's (`--pyroscope`), taken by `take_period`; None: not kept.
    period: Option<Labelled>,
}

impl Default for Profile {
    fn default() -> Self {
        Self::with_caps(MAX_FRAMES, MAX_STACKS)
    }
}

impl Profile {
    pub fn with_caps(max_frames: usize, max_stacks: usize) -> Self {
        Self {
            frames: Vec::new(),
            frame_ids: HashMap::new(),
            stacks: Vec::new(),
            stack_ids: HashMap::new(),
            totals: HashMap::new(),
            by_request: HashMap::new(),
            opened: 0,
            samples: 0,
            dropped_requests: 0,
            folded_samples: 0,
            max_frames,
            max_stacks,
            labelled: None,
            period: None,
        }
    }

    /// Keep samples by label set too: for the whole run (`whole`, the pprof file) and/or per
    /// push period (`periods`, taken with `take_period`).
    pub fn keep_labels(&mut self, whole: bool, periods: bool) {
        self.labelled = whole.then(Labelled::default);
        self.period = periods.then(Labelled::default);
    }

    /// The samples since the last call, by label set; a fresh table takes over. None when
    /// periods are not kept.
    pub fn take_period(&mut self) -> Option<Labelled> {
        let fresh = self.period.as_ref()?.fresh();
        self.period.replace(fresh)
    }

    /// Interned frames and stacks (ids as in `Labelled` and `stacks`).
    pub fn tables(&self) -> (&[FrameInfo], &[Vec<u32>]) {
        (&self.frames, &self.stacks)
    }

    /// The frame's id; `None` when it is new and the table is full.
    fn frame_id(&mut self, f: &FrameInfo) -> Option<u32> {
        if let Some(&id) = self.frame_ids.get(f) {
            return Some(id);
        }
        if self.frames.len() >= self.max_frames {
            return None;
        }
        let id = self.frames.len() as u32;
        self.frames.push(f.clone());
        self.frame_ids.insert(f.clone(), id);
        Some(id)
    }

    /// The stack's id; `None` when it is new and the table is full.
    fn stack_id(&mut self, ids: Vec<u32>) -> Option<u32> {
        if let Some(&id) = self.stack_ids.get(&ids) {
            return Some(id);
        }
        if self.stacks.len() >= self.max_stacks {
            return None;
        }
        let id = self.stacks.len() as u32;
        self.stacks.push(ids.clone());
        self.stack_ids.insert(ids, id);
        Some(id)
    }

    /// `root;[profile table full]`: where samples go that do not fit. Room for it is kept
    /// (the caps apply to everything else), so it always exists.
    fn table_full(&mut self, root: u32) -> u32 {
        let full = FrameInfo::new(FrameKind::Marker, TABLE_FULL);
        let (max_frames, max_stacks) = (self.max_frames, self.max_stacks);
        self.max_frames = usize::MAX;
        self.max_stacks = usize::MAX;
        let f = self.frame_id(&full).unwrap_or_default();
        let id = self.stack_id(vec![root, f]).unwrap_or_default();
        (self.max_frames, self.max_stacks) = (max_frames, max_stacks);
        id
    }

    pub fn add(&mut self, s: &Sample<'_>) {
        self.samples += 1;
        let root = FrameInfo::new(FrameKind::Root, s.endpoint.unwrap_or(NO_REQUEST));
        // When not even the endpoint fits: under the first root there is (id 0).
        let root = self.frame_id(&root).unwrap_or_default();
        let mut ids = Vec::with_capacity(s.frames.len() + 1);
        ids.push(root);
        for f in s.frames {
            match self.frame_id(f) {
                Some(id) => ids.push(id),
                None => {
                    ids.clear();
                    break;
                }
            }
        }
        let stack = match (!ids.is_empty()).then(|| self.stack_id(ids)).flatten() {
            Some(id) => id,
            None => {
                self.folded_samples += 1;
                crate::reaper::add(&crate::reaper::STATS.profile_samples_folded, 1);
                self.table_full(root)
            }
        };
        self.totals.entry(stack).or_default().add(s.weights);
        for l in [&mut self.labelled, &mut self.period].into_iter().flatten() {
            l.add(stack, s);
        }
        let Some(key) = s.request else {
            return;
        };
        if !self.by_request.contains_key(&key) && self.by_request.len() >= MAX_OPEN_REQUESTS {
            let oldest = self
                .by_request
                .iter()
                .min_by_key(|(_, v)| v.0)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.by_request.remove(&k);
                self.dropped_requests += 1;
                crate::reaper::add(&crate::reaper::STATS.request_profiles, 1);
            }
        }
        self.opened += 1;
        let opened = self.opened;
        let entry = self
            .by_request
            .entry(key)
            .or_insert((opened, HashMap::new()));
        entry.1.entry(stack).or_default().add(s.weights);
    }

    /// A fast request ended: its own stacks are not needed.
    pub fn forget_request(&mut self, key: &ReqKey) {
        self.by_request.remove(key);
    }

    /// The request ended: its own samples, if any, as folded lines (both metrics).
    pub fn take_request(&mut self, key: &ReqKey) -> Option<RequestProfile> {
        let (_, stacks) = self.by_request.remove(key)?;
        let lines = |m: Metric| self.lines(stacks.iter().map(|(s, w)| (*s, *w)), m, None);
        Some(RequestProfile {
            cpu: lines(Metric::Cpu),
            wall: lines(Metric::Wall),
        })
    }

    /// Table sizes for the debug log: (frames, stacks, open requests).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.frames.len(), self.stacks.len(), self.by_request.len())
    }

    /// Processes with requests whose own samples are kept.
    pub fn request_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.by_request.keys().map(|k| k.0).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The process exited: its requests will not end any more (their samples stay in the
    /// profile; only the per-request copies go). True if it had any.
    pub fn forget_requests_of(&mut self, pid: u32) -> bool {
        let before = self.by_request.len();
        self.by_request.retain(|k, _| k.0 != pid);
        self.by_request.len() != before
    }

    /// Folded stacks (`root;…;leaf COUNT`), sorted, for every endpoint matching `filter`.
    pub fn folded(&self, m: Metric, filter: Option<&glob::Pattern>) -> Vec<String> {
        self.lines(self.totals.iter().map(|(s, w)| (*s, *w)), m, filter)
    }

    fn lines(
        &self,
        stacks: impl Iterator<Item = (u32, Weights)>,
        m: Metric,
        filter: Option<&glob::Pattern>,
    ) -> Vec<String> {
        let mut out: Vec<String> = stacks
            .filter(|(_, w)| w.get(m) > 0)
            .filter_map(|(s, w)| {
                let ids = self.stacks.get(s as usize)?;
                let root = &self.frames[*ids.first()? as usize];
                if filter.is_some_and(|p| !p.matches(&root.name)) {
                    return None;
                }
                let labels: Vec<String> = ids
                    .iter()
                    .map(|&f| self.frames[f as usize].label())
                    .collect();
                Some(format!("{} {}", labels.join(";"), w.get(m)))
            })
            .collect();
        out.sort();
        out
    }

    /// Interned frames and stacks with their weights, for exporters that keep the structure
    /// (speedscope).
    pub fn stacks(&self, filter: Option<&glob::Pattern>) -> (&[FrameInfo], Vec<(&[u32], Weights)>) {
        let mut v: Vec<(&[u32], Weights)> = self
            .totals
            .iter()
            .filter_map(|(s, w)| {
                let ids = self.stacks.get(*s as usize)?;
                let root = &self.frames[*ids.first()? as usize];
                filter
                    .is_none_or(|p| p.matches(&root.name))
                    .then_some((ids.as_slice(), *w))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        (&self.frames, v)
    }

    /// The `n` frames with the most on-CPU samples where they are the leaf (SELF), with their
    /// TOTAL (anywhere on the stack), over all samples.
    pub fn hot(&self, n: usize) -> Vec<HotFrame> {
        let mut by: HashMap<u32, (u64, u64)> = HashMap::new();
        let mut total = 0;
        for (s, w) in &self.totals {
            if w.cpu_samples == 0 {
                continue;
            }
            total += w.cpu_samples;
            let ids = &self.stacks[*s as usize];
            let mut seen: Vec<u32> = Vec::with_capacity(ids.len());
            for &f in &ids[1..] {
                if !seen.contains(&f) {
                    seen.push(f);
                    by.entry(f).or_default().1 += w.cpu_samples;
                }
            }
            if let Some(&leaf) = ids.get(1..).and_then(<[u32]>::last) {
                by.entry(leaf).or_default().0 += w.cpu_samples;
            }
        }
        let mut v: Vec<HotFrame> = by
            .into_iter()
            .map(|(f, (selfs, tot))| HotFrame {
                frame: self.frames[f as usize].clone(),
                self_samples: selfs,
                total_samples: tot,
                of: total,
            })
            .collect();
        v.sort_by(|a, b| {
            (b.self_samples, b.total_samples)
                .cmp(&(a.self_samples, a.total_samples))
                .then_with(|| a.frame.name.cmp(&b.frame.name))
        });
        v.truncate(n);
        v
    }
}

/// The labels of a sample besides its endpoint (which is its stack's root): the process, the
/// thread and, inside a request, the request (whose span id the pprof export derives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LabelSet {
    pub pid: u32,
    pub tid: u32,
    pub request: Option<ReqKey>,
}

/// Distinct label sets kept at most: a request is a label set of its own, so this bounds how
/// many requests keep their span id in one table; beyond it a sample keeps its pid and thread.
const MAX_LABEL_SETS: usize = 100_000;
/// Distinct (stack, label set) pairs kept at most; beyond, a sample is counted under its stack
/// without labels. Together about 10 MB at their worst.
const MAX_LABELLED: usize = 200_000;

/// Samples by (stack, label set): what a pprof profile with sample labels is built from.
/// Bounded by its caps; what does not fit loses its labels, never its weight, and is counted.
#[derive(Debug)]
pub struct Labelled {
    sets: Vec<LabelSet>,
    set_ids: HashMap<LabelSet, u32>,
    weights: HashMap<(u32, u32), Weights>,
    /// Samples that did not fit with their labels, by stack.
    unlabelled: HashMap<u32, Weights>,
    /// Thread names by tid, the first seen (a name is stored once per thread, not per set).
    names: HashMap<u32, String>,
    /// Samples whose span id was cut (label sets full): they keep pid and thread.
    pub cut_span: u64,
    /// Samples counted without any labels (tables full).
    pub cut_all: u64,
    max_sets: usize,
    max_labelled: usize,
}

impl Default for Labelled {
    fn default() -> Self {
        Self::with_caps(MAX_LABEL_SETS, MAX_LABELLED)
    }
}

impl Labelled {
    pub fn with_caps(max_sets: usize, max_labelled: usize) -> Self {
        Self {
            sets: Vec::new(),
            set_ids: HashMap::new(),
            weights: HashMap::new(),
            unlabelled: HashMap::new(),
            names: HashMap::new(),
            cut_span: 0,
            cut_all: 0,
            max_sets,
            max_labelled,
        }
    }

    /// An empty table with the same caps.
    fn fresh(&self) -> Self {
        Self::with_caps(self.max_sets, self.max_labelled)
    }

    fn set_id(&mut self, set: LabelSet) -> Option<u32> {
        if let Some(&id) = self.set_ids.get(&set) {
            return Some(id);
        }
        if self.sets.len() >= self.max_sets {
            return None;
        }
        let id = self.sets.len() as u32;
        self.sets.push(set);
        self.set_ids.insert(set, id);
        Some(id)
    }

    fn add(&mut self, stack: u32, s: &Sample<'_>) {
        let set = LabelSet {
            pid: s.task.pid,
            tid: s.task.tid,
            request: s.request,
        };
        // Over the cap a request's samples keep their thread: the set without the request is
        // one per thread, and those are few.
        let id = match self.set_id(set) {
            Some(id) => Some(id),
            None if set.request.is_some() => {
                let id = self.set_id(LabelSet {
                    request: None,
                    ..set
                });
                if id.is_some() {
                    self.cut_span += 1;
                }
                id
            }
            None => None,
        };
        let entry = id.and_then(|id| {
            let full = self.weights.len() >= self.max_labelled;
            match self.weights.entry((stack, id)) {
                std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    (!full).then(|| e.insert(Weights::default()))
                }
            }
        });
        match entry {
            Some(w) => w.add(s.weights),
            None => {
                self.cut_all += 1;
                self.unlabelled.entry(stack).or_default().add(s.weights);
                return;
            }
        }
        if !s.task.name.is_empty() && !self.names.contains_key(&s.task.tid) {
            self.names.insert(s.task.tid, s.task.name.to_owned());
        }
    }

    /// (stack, label set, weights), sorted by stack then set, for a stable output.
    pub fn entries(&self) -> Vec<(u32, &LabelSet, Weights)> {
        let mut v: Vec<_> = self
            .weights
            .iter()
            .map(|(&(stack, set), w)| (stack, &self.sets[set as usize], *w))
            .collect();
        v.sort_unstable_by_key(|(stack, set, _)| (*stack, set.pid, set.tid, set.request));
        v
    }

    /// Samples that lost their labels: (stack, weights), sorted by stack.
    pub fn unlabelled(&self) -> Vec<(u32, Weights)> {
        let mut v: Vec<_> = self.unlabelled.iter().map(|(s, w)| (*s, *w)).collect();
        v.sort_unstable_by_key(|(s, _)| *s);
        v
    }

    /// The name of thread `tid`, if one was seen.
    pub fn thread_name(&self, tid: u32) -> Option<&str> {
        self.names.get(&tid).map(String::as_str)
    }

    /// Nothing was sampled.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty() && self.unlabelled.is_empty()
    }

    /// On-CPU samples by process, most first: who the period was about.
    pub fn busiest_pid(&self) -> Option<u32> {
        let mut by: HashMap<u32, u64> = HashMap::new();
        for (&(_, set), w) in &self.weights {
            *by.entry(self.sets[set as usize].pid).or_default() += w.cpu_samples;
        }
        by.into_iter()
            .max_by_key(|(pid, n)| (*n, std::cmp::Reverse(*pid)))
            .map(|(p, _)| p)
    }
}

/// One request's own profile.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestProfile {
    pub cpu: Vec<String>,
    pub wall: Vec<String>,
}

/// A frame ranked by on-CPU samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotFrame {
    pub frame: FrameInfo,
    pub self_samples: u64,
    pub total_samples: u64,
    /// All on-CPU samples.
    pub of: u64,
}

/// Summary only: the tables are large.
impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (frames, stacks, open) = self.sizes();
        f.debug_struct("Profile")
            .field("samples", &self.samples)
            .field("frames", &frames)
            .field("stacks", &stacks)
            .field("open_requests", &open)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(name: &str, line: u32) -> FrameInfo {
        FrameInfo {
            name: name.into(),
            file: Some("app.py".into()),
            line: Some(line),
            kind: FrameKind::Python,
        }
    }

    fn cpu(n: u64) -> Weights {
        Weights {
            cpu_samples: n,
            wall_us: n * 10_101,
        }
    }

    #[test]
    fn folds_by_endpoint_and_filters() {
        let mut p = Profile::default();
        let view = py("view", 3);
        let f = py("f", 10);
        let g = py("g", 20);
        for _ in 0..7 {
            p.add(&Sample {
                task: Task::default(),
                endpoint: Some("GET /a"),
                frames: &[view.clone(), f.clone()],
                request: None,
                weights: cpu(1),
            });
        }
        for _ in 0..3 {
            p.add(&Sample {
                task: Task::default(),
                endpoint: Some("GET /b"),
                frames: &[view.clone(), g.clone()],
                request: None,
                weights: cpu(1),
            });
        }
        p.add(&Sample {
            task: Task::default(),
            endpoint: None,
            frames: &[FrameInfo::new(FrameKind::Kernel, "do_epoll_wait")],
            request: None,
            weights: Weights {
                cpu_samples: 0,
                wall_us: 5,
            },
        });
        assert_eq!(
            p.folded(Metric::Cpu, None),
            vec![
                "GET /a;view (app.py:3);f (app.py:10) 7",
                "GET /b;view (app.py:3);g (app.py:20) 3"
            ]
        );
        let only_b = glob::Pattern::new("GET /b*").unwrap();
        assert_eq!(p.folded(Metric::Cpu, Some(&only_b)).len(), 1);
        assert_eq!(
            p.folded(Metric::Wall, None).last().unwrap(),
            "[no request];do_epoll_wait_[k] 5"
        );
        let hot = p.hot(2);
        assert_eq!(hot[0].frame.name, "f");
        assert_eq!((hot[0].self_samples, hot[0].of), (7, 10));
        assert_eq!(
            p.hot(10)
                .iter()
                .find(|h| h.frame.name == "view")
                .unwrap()
                .total_samples,
            10
        );
    }

    #[test]
    fn keeps_each_request_apart_until_it_ends() {
        let mut p = Profile::default();
        let a = (1, 100, 0);
        let frames = [py("slow", 5)];
        p.add(&Sample {
            task: Task::default(),
            endpoint: Some("GET /slow"),
            frames: &frames,
            request: Some(a),
            weights: Weights {
                cpu_samples: 0,
                wall_us: 250_000,
            },
        });
        p.add(&Sample {
            task: Task::default(),
            endpoint: Some("GET /slow"),
            frames: &frames,
            request: Some((1, 100, 1)),
            weights: cpu(1),
        });
        let own = p.take_request(&a).unwrap();
        assert!(own.cpu.is_empty());
        assert_eq!(own.wall, vec!["GET /slow;slow (app.py:5) 250000"]);
        assert!(p.take_request(&a).is_none());
    }

    #[test]
    fn labels_are_safe_for_folded_format() {
        let f = FrameInfo::new(FrameKind::Native, "weird;name");
        assert_eq!(f.label(), "weird:name");
    }

    #[test]
    fn capped_tables_fold_what_does_not_fit_and_count_it() {
        // Room for the root, the marker, two more frames and three stacks.
        let mut p = Profile::with_caps(3, 2);
        let sample = |p: &mut Profile, frames: &[FrameInfo]| {
            p.add(&Sample {
                task: Task::default(),
                endpoint: Some("GET /"),
                frames,
                request: None,
                weights: cpu(1),
            })
        };
        sample(&mut p, &[py("a", 1), py("b", 2)]);
        sample(&mut p, &[py("a", 1)]);
        // A new frame (no room) and a new stack of known frames (no room): both folded.
        sample(&mut p, &[py("c", 3)]);
        sample(&mut p, &[py("b", 2), py("a", 1)]);
        sample(&mut p, &[py("a", 1), py("b", 2)]);
        assert_eq!(p.folded_samples, 2);
        assert_eq!(p.samples, 5);
        assert_eq!(
            p.folded(Metric::Cpu, None),
            vec![
                "GET /;[profile table full] 2",
                "GET /;a (app.py:1) 1",
                "GET /;a (app.py:1);b (app.py:2) 2",
            ]
        );
        assert!(p.frames.len() <= 4 && p.stacks.len() <= 3);
    }

    #[test]
    fn forgets_the_open_requests_of_an_exited_process() {
        let mut p = Profile::default();
        for pid in [1, 2] {
            p.add(&Sample {
                task: Task::default(),
                endpoint: Some("GET /"),
                frames: &[py("f", 1)],
                request: Some((pid, 100, 0)),
                weights: cpu(1),
            });
        }
        assert_eq!(p.request_pids(), [1, 2]);
        assert!(p.forget_requests_of(1));
        assert_eq!(p.request_pids(), [2]);
        assert!(p.take_request(&(1, 100, 0)).is_none());
        assert!(p.take_request(&(2, 100, 0)).is_some());
        assert_eq!(p.folded(Metric::Cpu, None), vec!["GET /;f (app.py:1) 2"]);
    }

    #[test]
    fn bounds_open_requests() {
        let mut p = Profile::default();
        for i in 0..(MAX_OPEN_REQUESTS as u64 + 5) {
            p.add(&Sample {
                task: Task::default(),
                endpoint: Some("GET /"),
                frames: &[],
                request: Some((1, i, 0)),
                weights: cpu(1),
            });
        }
        assert_eq!(p.dropped_requests, 5);
        assert!(p.take_request(&(1, 0, 0)).is_none());
    }
}
