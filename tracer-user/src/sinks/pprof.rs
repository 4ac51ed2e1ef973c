//! pprof export: the profile as Google's `profile.proto` (github.com/google/pprof,
//! proto/profile.proto), gzipped, the format `go tool pprof`, Pyroscope and most profilers read.
//!
//! One pprof sample per (stack, label set) of a `model::profile::Labelled` table: the stack is
//! the same as in cpu.folded (the endpoint is its root frame), and the labels say which process,
//! thread and request it came from. A request's `span_id` (and the same value as `profile_id`)
//! is the span id the OTLP exporter gives the request's span (`model::ids`), so one slow request
//! can be picked out of a fleet-wide profile. docs/output-formats.md describes it.

use std::{
    collections::HashMap,
    io::{self, Write as _},
    path::Path,
};

use crate::model::{
    ids::request_ids,
    profile::{FrameInfo, FrameKind, LabelSet, Labelled, Weights, NO_REQUEST},
};

/// The messages of profile.proto that slowtrace writes, with upstream's field numbers.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        /// `string_table[0]` is always "".
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// The values each pprof sample carries, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// On-CPU samples (`samples`/`count`).
    Samples,
    /// On-CPU time, samples × the sampling period (`cpu`/`nanoseconds`).
    CpuNs,
    /// Wall-clock time inside requests, on and off CPU (`wall`/`nanoseconds`).
    WallNs,
}

impl Value {
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Value::Samples => ("samples", "count"),
            Value::CpuNs => ("cpu", "nanoseconds"),
            Value::WallNs => ("wall", "nanoseconds"),
        }
    }

    fn of(self, w: Weights, period_ns: u64) -> i64 {
        let v = match self {
            Value::Samples => w.cpu_samples,
            Value::CpuNs => w.cpu_samples.saturating_mul(period_ns),
            Value::WallNs => w.wall_us.saturating_mul(1000),
        };
        i64::try_from(v).unwrap_or(i64::MAX)
    }
}

/// The CPU profile's values; the wall-clock profile adds `Value::WallNs`.
pub const CPU: &[Value] = &[Value::Samples, Value::CpuNs];

/// What a profile is about besides its samples.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    pub sample_hz: u64,
    pub values: &'a [Value],
    /// When the profile starts, ns since the epoch, and how long it covers.
    pub time_nanos: i64,
    pub duration_nanos: i64,
    /// Only endpoints matching (`--endpoint`).
    pub filter: Option<&'a glob::Pattern>,
}

/// The label keys, fixed: docs/output-formats.md lists them.
pub mod keys {
    pub const ENDPOINT: &str = "endpoint";
    pub const PID: &str = "pid";
    pub const TID: &str = "tid";
    pub const THREAD: &str = "thread";
    pub const SPAN_ID: &str = "span_id";
    pub const PROFILE_ID: &str = "profile_id";
}

/// Interning tables of one profile under construction.
struct Builder<'a> {
    frames: &'a [FrameInfo],
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(i64, i64), u64>,
    locations: Vec<proto::Location>,
    /// By the frame's id in the profile's frame table.
    location_ids: HashMap<u32, u64>,
    /// The one mapping there is: kernel frames'.
    kernel_mapping: Option<u64>,
    mappings: Vec<proto::Mapping>,
}

impl<'a> Builder<'a> {
    fn new(frames: &'a [FrameInfo]) -> Self {
        let mut b = Self {
            frames,
            strings: Vec::new(),
            string_ids: HashMap::new(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            kernel_mapping: None,
            mappings: Vec::new(),
        };
        b.string("");
        b
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        id
    }

    fn function(&mut self, f: &FrameInfo) -> u64 {
        let name = self.string(&f.name);
        let file = f.file.as_deref().map_or(0, |file| self.string(file));
        if let Some(&id) = self.function_ids.get(&(name, file)) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(proto::Function {
            id,
            name,
            system_name: name,
            filename: file,
            start_line: 0,
        });
        self.function_ids.insert((name, file), id);
        id
    }

    /// Kernel frames belong to `[kernel.kallsyms]`, as perf names it: pprof tools can then tell
    /// them apart. User frames are resolved to names already and carry no address, so a
    /// mapping would say nothing more.
    fn kernel_mapping(&mut self) -> u64 {
        if let Some(id) = self.kernel_mapping {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string("[kernel.kallsyms]");
        self.mappings.push(proto::Mapping {
            id,
            filename,
            has_functions: true,
            ..Default::default()
        });
        self.kernel_mapping = Some(id);
        id
    }

    /// The location of frame `id`: one per distinct frame (function and line).
    fn location(&mut self, id: u32) -> u64 {
        if let Some(&l) = self.location_ids.get(&id) {
            return l;
        }
        let frames = self.frames;
        let f = &frames[id as usize];
        let function_id = self.function(f);
        let mapping_id = if f.kind == FrameKind::Kernel {
            self.kernel_mapping()
        } else {
            0
        };
        let l = self.locations.len() as u64 + 1;
        self.locations.push(proto::Location {
            id: l,
            mapping_id,
            address: 0,
            line: vec![proto::Line {
                function_id,
                line: f.line.map_or(0, i64::from),
            }],
        });
        self.location_ids.insert(id, l);
        l
    }

    fn label(&mut self, key: &str, value: &str) -> proto::Label {
        proto::Label {
            key: self.string(key),
            str: self.string(value),
            ..Default::default()
        }
    }
}

/// The pprof profile of `table`, whose stack ids index `stacks` and frame ids `frames` (the
/// `model::profile::Profile` it was kept by).
pub fn build(
    frames: &[FrameInfo],
    stacks: &[Vec<u32>],
    table: &Labelled,
    meta: &Meta<'_>,
) -> proto::Profile {
    let mut b = Builder::new(frames);
    let period_ns = 1_000_000_000 / meta.sample_hz.max(1);
    let sample_type: Vec<proto::ValueType> = meta
        .values
        .iter()
        .map(|v| {
            let (t, u) = v.names();
            proto::ValueType {
                r#type: b.string(t),
                unit: b.string(u),
            }
        })
        .collect();
    let mut samples = Vec::new();
    let labelled = table
        .entries()
        .into_iter()
        .map(|(s, set, w)| (s, Some(set), w));
    let bare = table.unlabelled().into_iter().map(|(s, w)| (s, None, w));
    for (stack, set, w) in labelled.chain(bare) {
        let Some(ids) = stacks.get(stack as usize) else {
            continue;
        };
        let Some(root) = ids.first().map(|&r| &frames[r as usize]) else {
            continue;
        };
        if meta.filter.is_some_and(|p| !p.matches(&root.name)) {
            continue;
        }
        let value: Vec<i64> = meta.values.iter().map(|v| v.of(w, period_ns)).collect();
        if value.iter().all(|v| *v == 0) {
            continue;
        }
        let location_id = ids.iter().rev().map(|&f| b.location(f)).collect();
        let label = labels(&mut b, root, set, table);
        samples.push(proto::Sample {
            location_id,
            value,
            label,
        });
    }
    let period_type = Some(proto::ValueType {
        r#type: b.string("cpu"),
        unit: b.string("nanoseconds"),
    });
    // The CPU time is what a viewer should show first; the wall profile when it is the only one.
    let default_sample_type = match meta.values {
        [Value::WallNs] => b.string("wall"),
        _ => b.string("cpu"),
    };
    let comment = vec![b.string(concat!("slowtrace ", env!("CARGO_PKG_VERSION")))];
    proto::Profile {
        sample_type,
        sample: samples,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        time_nanos: meta.time_nanos,
        duration_nanos: meta.duration_nanos,
        period_type,
        period: i64::try_from(period_ns).unwrap_or(i64::MAX),
        comment,
        default_sample_type,
    }
}

/// A sample's labels: the endpoint (not outside requests), pid, tid, thread name when known,
/// and for a sample inside a request its span id, as `span_id` and `profile_id`.
fn labels(
    b: &mut Builder<'_>,
    root: &FrameInfo,
    set: Option<&LabelSet>,
    table: &Labelled,
) -> Vec<proto::Label> {
    let mut out = Vec::with_capacity(6);
    if root.name != NO_REQUEST {
        out.push(b.label(keys::ENDPOINT, &root.name));
    }
    let Some(set) = set else {
        return out;
    };
    out.push(b.label(keys::PID, &set.pid.to_string()));
    out.push(b.label(keys::TID, &set.tid.to_string()));
    if let Some(name) = table.thread_name(set.tid) {
        out.push(b.label(keys::THREAD, name));
    }
    if let Some(key) = set.request {
        let span = request_ids(key).span_hex();
        out.push(b.label(keys::SPAN_ID, &span));
        out.push(b.label(keys::PROFILE_ID, &span));
    }
    out
}

/// The encoded profile, gzipped (profile.proto says on disk it must be).
pub fn encode_gz(p: &proto::Profile) -> io::Result<Vec<u8>> {
    let raw = prost::Message::encode_to_vec(p);
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 4),
        flate2::Compression::default(),
    );
    gz.write_all(&raw)?;
    gz.finish()
}

/// Write `bytes` to `path`, mode 0600, without following a symlink planted there: a private
/// temporary file next to it is renamed over it (rename replaces a link, never its target).
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // tempfile creates with O_EXCL and mode 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(".slowtrace-pprof")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The whole run's pprof file, and its summary line.
pub fn write_run(
    path: &std::path::Path,
    profile: &crate::model::profile::Profile,
    pc: &crate::profile::ProfilerConfig,
    started: std::time::SystemTime,
    elapsed: std::time::Duration,
) -> std::io::Result<String> {
    let Some(table) = profile.labelled.as_ref() else {
        return Err(std::io::Error::other("no labelled profile was kept"));
    };
    let (frames, stacks) = profile.tables();
    let values: &[Value] = if pc.wall {
        &[Value::Samples, Value::CpuNs, Value::WallNs]
    } else {
        CPU
    };
    let nanos = |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    let built = build(
        frames,
        stacks,
        table,
        &Meta {
            sample_hz: pc.sample_hz,
            values,
            time_nanos: nanos(
                started
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
            duration_nanos: nanos(elapsed),
            filter: pc.endpoint.as_ref(),
        },
    );
    let gz = encode_gz(&built)?;
    write_file(path, &gz)?;
    let mut line = format!(
        "pprof: {} ({} samples, {} locations, {} bytes)",
        path.display(),
        built.sample.len(),
        built.location.len(),
        gz.len()
    );
    if table.cut_span + table.cut_all > 0 {
        line.push_str(&format!(
            "\nWARNING: pprof labels over their caps: {} samples kept without their span_id, {} \
             without any label but the endpoint",
            table.cut_span, table.cut_all
        ));
    }
    Ok(line)
}

#[cfg(test)]
#[path = "pprof_tests.rs"]
mod tests;
