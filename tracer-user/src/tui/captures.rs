//! Stack captures as the dashboard keeps them, and the hot-frame counts built from them.
//!
//! The dashboard keeps the captures of its 500 most recent slow requests. At 20 captures of
//! ~60 frames each, storing every `Frame` as its own strings would take ~100 MB in an incident,
//! while the distinct frames number a few thousand: so frames are interned. `HotFrames` is both
//! the interner and the self/total counter: it holds exactly the frames of the kept captures, and
//! an entry goes when the last capture that has it is evicted. Admitting or evicting a slow
//! request costs O(frames in its captures).

use std::{collections::HashMap, sync::Arc};

use crate::model::slow::{Capture, Frame, Killed, SlowRequest};

/// Which stack a frame comes from: the same name can be a Python function and a C symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Python,
    Native,
    Kernel,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Python => "py",
            Kind::Native => "native",
            Kind::Kernel => "kernel",
        }
    }
}

/// One distinct frame, shared by every kept capture that has it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Site {
    pub kind: Kind,
    pub frame: Frame,
}

pub type FrameRef = Arc<Site>;

/// One capture, frames interned; every list innermost first, as in slow.jsonl.
#[derive(Debug, Clone)]
pub struct Stack {
    pub offset_ms: u64,
    pub state: String,
    pub syscall: Option<String>,
    pub native_source: String,
    pub errors: Vec<String>,
    pub python: Vec<FrameRef>,
    pub native: Vec<FrameRef>,
    pub kernel: Vec<FrameRef>,
}

impl Stack {
    /// The frame a capture counts as "self" for: the innermost Python frame (the line the
    /// request's code was at), or the innermost native frame when there is no Python.
    pub fn leaf(&self) -> Option<&FrameRef> {
        self.python.first().or(self.native.first())
    }

    fn frames(&self) -> impl Iterator<Item = &FrameRef> {
        self.python.iter().chain(&self.native).chain(&self.kernel)
    }

    /// The same frames as `other` (a thread sleeping through several captures): interned, so
    /// pointer comparisons.
    pub fn same_frames(&self, other: &Stack) -> bool {
        let same = |a: &[FrameRef], b: &[FrameRef]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
        };
        same(&self.python, &other.python)
            && same(&self.native, &other.native)
            && same(&self.kernel, &other.kernel)
    }

    pub fn is_empty(&self) -> bool {
        self.python.is_empty() && self.native.is_empty() && self.kernel.is_empty()
    }
}

/// What the agent reported about one slow or killed request beyond its requests.jsonl fields.
#[derive(Debug, Clone)]
pub struct Captured {
    /// `slow` or `killed`, as in slow.jsonl.
    pub kind: &'static str,
    pub killed: Option<Killed>,
    /// In time order.
    pub stacks: Vec<Stack>,
    /// Captures that could not be taken.
    pub missed: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Captures whose leaf this frame is.
    pub leaf: u64,
    /// Captures with this frame anywhere on a stack (once per capture, recursion or not).
    pub total: u64,
}

/// Frame counts over the kept captures; also the frame interner (see the module comment).
#[derive(Debug, Clone, Default)]
pub struct HotFrames {
    counts: HashMap<FrameRef, Counts>,
    /// Captures counted.
    pub captures: u64,
}

impl HotFrames {
    /// Turn a slow request's captures into a `Captured` and count its frames.
    pub fn admit(&mut self, s: SlowRequest) -> Captured {
        let stacks: Vec<Stack> = s.captures.into_iter().map(|c| self.stack(c)).collect();
        for st in &stacks {
            self.count(st, true);
        }
        Captured {
            kind: s.kind,
            killed: s.killed,
            stacks,
            missed: s.captures_missed,
        }
    }

    /// Uncount an evicted request's frames; frames no kept capture has any more are dropped.
    pub fn evict(&mut self, c: &Captured) {
        for st in &c.stacks {
            self.count(st, false);
        }
    }

    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    fn stack(&mut self, c: Capture) -> Stack {
        let mut intern = |kind: Kind, frames: Vec<Frame>| -> Vec<FrameRef> {
            frames
                .into_iter()
                .map(|frame| self.intern(Site { kind, frame }))
                .collect()
        };
        let python = intern(Kind::Python, c.python);
        let native = intern(Kind::Native, c.native);
        let kernel = intern(Kind::Kernel, c.kernel);
        Stack {
            offset_ms: c.offset_ms,
            state: c.state,
            syscall: c.syscall,
            native_source: c.native_source,
            errors: c.errors,
            python,
            native,
            kernel,
        }
    }

    /// A new entry starts at zero; `count` runs right after, so none stays at zero.
    fn intern(&mut self, site: Site) -> FrameRef {
        if let Some((k, _)) = self.counts.get_key_value(&site) {
            return k.clone();
        }
        let k = Arc::new(site);
        self.counts.insert(k.clone(), Counts::default());
        k
    }

    fn count(&mut self, st: &Stack, add: bool) {
        let step = |n: &mut u64| {
            if add {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
        };
        step(&mut self.captures);
        // Distinct frames of this capture: interned, so by address.
        let mut seen: Vec<&FrameRef> = st.frames().collect();
        seen.sort_unstable_by_key(|f| Arc::as_ptr(f));
        seen.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let leaf = st.leaf();
        for f in seen {
            let Some(c) = self.counts.get_mut(f) else {
                continue;
            };
            step(&mut c.total);
            if leaf.is_some_and(|l| Arc::ptr_eq(l, f)) {
                step(&mut c.leaf);
            }
            if c.total == 0 {
                self.counts.remove(f);
            }
        }
    }

    /// The `n` frames with the most `by`, ties by the other count, then Python before native
    /// before kernel (the Python stack is what a web developer reads first), then by name.
    pub fn top(&self, n: usize, by: fn(&Counts) -> u64) -> Vec<(&Site, Counts)> {
        let mut rows: Vec<(&Site, Counts)> = self
            .counts
            .iter()
            .filter(|(_, c)| by(c) > 0)
            .map(|(s, c)| (&**s, *c))
            .collect();
        let order = |a: &(&Site, Counts), b: &(&Site, Counts)| {
            by(&b.1)
                .cmp(&by(&a.1))
                .then((b.1.leaf + b.1.total).cmp(&(a.1.leaf + a.1.total)))
                .then(a.0.kind.cmp(&b.0.kind))
                .then_with(|| a.0.frame.function.cmp(&b.0.frame.function))
                .then_with(|| a.0.frame.file.cmp(&b.0.frame.file))
                .then(a.0.frame.line.cmp(&b.0.frame.line))
                .then_with(|| a.0.frame.module.cmp(&b.0.frame.module))
        };
        // Only the shown rows need sorting: drawn every frame, so not O(F log F) for many F.
        if rows.len() > n && n > 0 {
            rows.select_nth_unstable_by(n - 1, order);
            rows.truncate(n);
        }
        rows.sort_unstable_by(order);
        rows.truncate(n);
        rows
    }
}

/// By self (leaf) count.
pub fn by_leaf(c: &Counts) -> u64 {
    c.leaf
}

/// By total count.
pub fn by_total(c: &Counts) -> u64 {
    c.total
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::tui::state::tests::req;

    pub fn py(function: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: function.into(),
            file: Some(file.into()),
            line: Some(line),
            module: None,
        }
    }

    pub fn native(function: &str, module: &str) -> Frame {
        Frame {
            function: function.into(),
            file: None,
            line: None,
            module: Some(module.into()),
        }
    }

    pub fn kernel(function: &str) -> Frame {
        Frame {
            function: function.into(),
            file: None,
            line: None,
            module: None,
        }
    }

    pub fn capture(offset_ms: u64, python: Vec<Frame>, native: Vec<Frame>) -> Capture {
        Capture {
            offset_ms,
            state: "blocked".into(),
            syscall: Some("clock_nanosleep".into()),
            python,
            native,
            kernel: vec![kernel("do_nanosleep"), kernel("hrtimer_nanosleep")],
            native_source: "switch-out".into(),
            took_us: 900,
            errors: vec![],
            stack_of: None,
        }
    }

    pub fn slow_request(r: crate::model::Request, captures: Vec<Capture>) -> SlowRequest {
        SlowRequest {
            kind: "slow",
            threshold_ms: 1000,
            request: r,
            killed: None,
            captures,
            captures_missed: 0,
            profile: None,
        }
    }

    fn view(f: &str, line: u32) -> Frame {
        py(f, "app.py", line)
    }

    #[test]
    fn leaf_is_innermost_python_else_native_and_total_counts_once_per_capture() {
        let mut h = HotFrames::default();
        let recursive = vec![view("walk", 3), view("walk", 3), view("main", 9)];
        let c = h.admit(slow_request(
            req("GET /a", 1500, 200),
            vec![
                capture(
                    1000,
                    recursive,
                    vec![native("clock_nanosleep", "libc.so.6")],
                ),
                capture(1500, vec![], vec![native("poll", "libc.so.6")]),
            ],
        ));
        assert_eq!(h.captures, 2);
        let leaf = h.top(10, by_leaf);
        let names: Vec<_> = leaf
            .iter()
            .map(|(s, c)| (&*s.frame.function, c.leaf))
            .collect();
        assert_eq!(names, [("walk", 1), ("poll", 1)], "python first on ties");
        let walk = leaf[0].1;
        assert_eq!(walk.total, 1, "recursion counts once");
        let total = h.top(3, by_total);
        // Both captures have the kernel frames.
        assert_eq!(total[0].1.total, 2, "{total:?}");
        assert_eq!(total[0].0.kind, Kind::Kernel);
        assert!(c.stacks[0].python[0].frame.function == "walk");
        assert!(
            Arc::ptr_eq(&c.stacks[0].python[0], &c.stacks[0].python[1]),
            "interned"
        );
    }

    #[test]
    fn eviction_uncounts_and_forgets_frames() {
        let mut h = HotFrames::default();
        let a = h.admit(slow_request(
            req("GET /a", 1500, 200),
            vec![capture(1000, vec![view("f", 1)], vec![])],
        ));
        let b = h.admit(slow_request(
            req("GET /b", 1500, 200),
            vec![capture(1000, vec![view("g", 2)], vec![])],
        ));
        assert!(Arc::ptr_eq(&a.stacks[0].kernel[0], &b.stacks[0].kernel[0]));
        assert_eq!(h.distinct(), 4);
        h.evict(&a);
        assert_eq!(h.captures, 1);
        assert_eq!(h.distinct(), 3, "f is gone, the shared kernel frames stay");
        assert_eq!(h.top(1, by_total)[0].1.total, 1);
        h.evict(&b);
        assert_eq!((h.captures, h.distinct()), (0, 0));
    }

    #[test]
    fn repeated_stacks_are_recognised() {
        let mut h = HotFrames::default();
        let c = h.admit(slow_request(
            req("GET /a", 1500, 200),
            vec![
                capture(1000, vec![view("f", 1)], vec![]),
                capture(1250, vec![view("f", 1)], vec![]),
                capture(1500, vec![view("f", 2)], vec![]),
            ],
        ));
        assert!(c.stacks[1].same_frames(&c.stacks[0]));
        assert!(!c.stacks[2].same_frames(&c.stacks[1]), "another line");
    }

    #[test]
    fn top_n_is_the_n_biggest_in_order() {
        let mut h = HotFrames::default();
        let mut caps = vec![];
        for i in 0..30u32 {
            for _ in 0..=i {
                caps.push(capture(1000, vec![view(&format!("f{i:02}"), i)], vec![]));
            }
        }
        h.admit(slow_request(req("GET /a", 1500, 200), caps));
        let top: Vec<_> = h
            .top(3, by_leaf)
            .iter()
            .map(|(s, c)| (s.frame.function.clone(), c.leaf))
            .collect();
        assert_eq!(
            top,
            [("f29".into(), 30), ("f28".into(), 29), ("f27".into(), 28)]
        );
    }
}
