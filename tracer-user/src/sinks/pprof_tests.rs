use super::*;
use crate::model::profile::{Labelled, Profile, Sample, Task, Weights};

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
        wall_us: n * 10_000,
    }
}

fn task(tid: u32) -> Task<'static> {
    Task {
        pid: 7,
        tid,
        name: "worker",
    }
}

const META: Meta<'static> = Meta {
    sample_hz: 100,
    values: &[Value::Samples, Value::CpuNs, Value::WallNs],
    time_nanos: 1,
    duration_nanos: 2,
    filter: None,
};

fn build_whole(p: &Profile, meta: &Meta<'_>) -> proto::Profile {
    let (frames, stacks) = p.tables();
    build(frames, stacks, p.labelled.as_ref().unwrap(), meta)
}

fn string(p: &proto::Profile, i: i64) -> &str {
    &p.string_table[usize::try_from(i).unwrap()]
}

/// The sample's labels as (key, value) strings.
fn labels(p: &proto::Profile, s: &proto::Sample) -> Vec<(String, String)> {
    s.label
        .iter()
        .map(|l| (string(p, l.key).to_owned(), string(p, l.str).to_owned()))
        .collect()
}

/// The sample's function names, root first.
fn names(p: &proto::Profile, s: &proto::Sample) -> Vec<String> {
    s.location_id
        .iter()
        .rev()
        .map(|id| {
            let loc = &p.location[usize::try_from(*id - 1).unwrap()];
            assert_eq!(loc.id, *id);
            let f = &p.function[usize::try_from(loc.line[0].function_id - 1).unwrap()];
            string(p, f.name).to_owned()
        })
        .collect()
}

fn labelled_profile() -> Profile {
    let mut p = Profile::default();
    p.keep_labels(true, false);
    let frames = [py("view", 3), py("f", 10)];
    for _ in 0..3 {
        p.add(&Sample {
            endpoint: Some("GET /a"),
            frames: &frames,
            request: Some((7, 100, 0)),
            weights: cpu(1),
            task: task(8),
        });
    }
    p.add(&Sample {
        endpoint: Some("GET /a"),
        frames: &[py("view", 3), py("f", 11)],
        request: Some((7, 100, 1)),
        weights: cpu(1),
        task: task(8),
    });
    p.add(&Sample {
        endpoint: None,
        frames: &[FrameInfo::new(FrameKind::Kernel, "do_epoll_wait")],
        request: None,
        weights: cpu(1),
        task: task(9),
    });
    p
}

#[test]
fn string_table_starts_empty_and_has_no_duplicates() {
    let pp = build_whole(&labelled_profile(), &META);
    assert_eq!(pp.string_table[0], "");
    let mut seen = std::collections::HashSet::new();
    for s in &pp.string_table {
        assert!(seen.insert(s), "{s:?} twice in {:?}", pp.string_table);
    }
    let types: Vec<(&str, &str)> = pp
        .sample_type
        .iter()
        .map(|t| (string(&pp, t.r#type), string(&pp, t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            ("samples", "count"),
            ("cpu", "nanoseconds"),
            ("wall", "nanoseconds")
        ]
    );
    assert_eq!(string(&pp, pp.default_sample_type), "cpu");
    assert_eq!(pp.period, 10_000_000);
    assert_eq!((pp.time_nanos, pp.duration_nanos), (1, 2));
}

#[test]
fn locations_and_functions_are_shared() {
    let pp = build_whole(&labelled_profile(), &META);
    // Frames: GET /a, view:3, f:10, f:11, [no request], do_epoll_wait → one location each;
    // f at two lines is one function.
    assert_eq!(pp.location.len(), 6, "{:?}", pp.location);
    assert_eq!(pp.function.len(), 5, "{:?}", pp.function);
    let f: Vec<_> = pp
        .function
        .iter()
        .filter(|f| string(&pp, f.name) == "f")
        .collect();
    assert_eq!(f.len(), 1);
    assert_eq!(string(&pp, f[0].filename), "app.py");
    let lines: Vec<i64> = pp
        .location
        .iter()
        .filter(|l| l.line[0].function_id == f[0].id)
        .map(|l| l.line[0].line)
        .collect();
    assert_eq!(lines, [10, 11]);
    // Only kernel frames have a mapping.
    assert_eq!(pp.mapping.len(), 1);
    assert_eq!(string(&pp, pp.mapping[0].filename), "[kernel.kallsyms]");
    let kernel: Vec<_> = pp.location.iter().filter(|l| l.mapping_id != 0).collect();
    assert_eq!(kernel.len(), 1);
}

#[test]
fn samples_carry_stack_values_and_labels() {
    let pp = build_whole(&labelled_profile(), &META);
    assert_eq!(pp.sample.len(), 3);
    let first = &pp.sample[0];
    assert_eq!(names(&pp, first), ["GET /a", "view", "f"]);
    assert_eq!(first.value, [3, 30_000_000, 30_000_000]);
    let span = request_ids((7, 100, 0)).span_hex();
    assert_eq!(
        labels(&pp, first),
        [
            ("endpoint".into(), "GET /a".into()),
            ("pid".into(), "7".into()),
            ("tid".into(), "8".into()),
            ("thread".into(), "worker".into()),
            ("span_id".into(), span.clone()),
            ("profile_id".into(), span),
        ]
    );
    // Outside requests: no endpoint, no span.
    let idle = pp
        .sample
        .iter()
        .find(|s| names(&pp, s)[0] == NO_REQUEST)
        .unwrap();
    assert_eq!(
        labels(&pp, idle),
        [
            ("pid".into(), "7".into()),
            ("tid".into(), "9".into()),
            ("thread".into(), "worker".into()),
        ]
    );
}

#[test]
fn cpu_only_profiles_skip_wall_only_samples_and_filter_endpoints() {
    let mut p = labelled_profile();
    p.add(&Sample {
        endpoint: Some("GET /b"),
        frames: &[py("sleep", 1)],
        request: Some((7, 101, 0)),
        weights: Weights {
            cpu_samples: 0,
            wall_us: 5,
        },
        task: task(8),
    });
    let cpu_only = build_whole(
        &p,
        &Meta {
            values: CPU,
            ..META
        },
    );
    assert_eq!(cpu_only.sample.len(), 3);
    assert!(cpu_only.sample.iter().all(|s| s.value.len() == 2));
    let wall = build_whole(
        &p,
        &Meta {
            values: &[Value::WallNs],
            ..META
        },
    );
    assert_eq!(wall.sample.len(), 4);
    assert_eq!(string(&wall, wall.default_sample_type), "wall");
    let only_a = glob::Pattern::new("GET /a").unwrap();
    let filtered = build_whole(
        &p,
        &Meta {
            filter: Some(&only_a),
            ..META
        },
    );
    assert_eq!(filtered.sample.len(), 2);
}

#[test]
fn label_caps_cut_span_ids_then_labels_and_keep_every_sample() {
    let mut p = Profile::default();
    p.labelled = Some(Labelled::with_caps(2, 3));
    // Five requests on one thread: two sets fit, then the thread's set without a request.
    for i in 0..5 {
        p.add(&Sample {
            endpoint: Some("GET /a"),
            frames: &[py("f", 1)],
            request: Some((7, 100, i)),
            weights: cpu(1),
            task: task(8),
        });
    }
    let l = p.labelled.as_ref().unwrap();
    // Sets: request 0, request 1; then no room for request 2's set nor the bare thread set.
    assert_eq!((l.cut_span, l.cut_all), (0, 3));
    let pp = build_whole(&p, &META);
    let total: i64 = pp.sample.iter().map(|s| s.value[0]).sum();
    assert_eq!(total, 5, "no sample is lost");
    let bare: Vec<_> = pp.sample.iter().filter(|s| s.label.len() == 1).collect();
    assert_eq!(bare.len(), 1);
    assert_eq!(bare[0].value[0], 3);

    // With room for the thread's own set, the span id alone is cut.
    let mut p = Profile::default();
    p.labelled = Some(Labelled::with_caps(2, 10));
    for i in 0..4 {
        p.add(&Sample {
            endpoint: Some("GET /a"),
            frames: &[py("f", 1)],
            request: (i > 0).then_some((7, 100, i)),
            weights: cpu(1),
            task: task(8),
        });
    }
    let l = p.labelled.as_ref().unwrap();
    assert_eq!((l.cut_span, l.cut_all), (2, 0));
    let pp = build_whole(&p, &META);
    let spans = pp
        .sample
        .iter()
        .filter(|s| labels(&pp, s).iter().any(|(k, _)| k == "span_id"))
        .count();
    assert_eq!(spans, 1);
    assert_eq!(pp.sample.iter().map(|s| s.value[0]).sum::<i64>(), 4);
}

#[test]
fn periods_are_taken_apart_from_the_whole_run() {
    let mut p = Profile::default();
    p.keep_labels(true, true);
    let add = |p: &mut Profile| {
        p.add(&Sample {
            endpoint: Some("GET /a"),
            frames: &[py("f", 1)],
            request: None,
            weights: cpu(1),
            task: task(8),
        })
    };
    add(&mut p);
    add(&mut p);
    let first = p.take_period().unwrap();
    add(&mut p);
    let second = p.take_period().unwrap();
    let (frames, stacks) = p.tables();
    let n = |t: &Labelled| -> i64 {
        build(frames, stacks, t, &META)
            .sample
            .iter()
            .map(|s| s.value[0])
            .sum()
    };
    assert_eq!((n(&first), n(&second)), (2, 1));
    assert_eq!(n(p.labelled.as_ref().unwrap()), 3);
    assert_eq!(first.busiest_pid(), Some(7));
    assert!(p.take_period().unwrap().is_empty());
}

#[test]
fn encodes_gzipped_and_decodes_back() {
    let pp = build_whole(&labelled_profile(), &META);
    let gz = encode_gz(&pp).unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
    let back: proto::Profile = prost::Message::decode(&raw[..]).unwrap();
    assert_eq!(back, pp);
}

#[test]
fn writes_privately_and_replaces_a_planted_symlink() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let path = dir.path().join("profile.pb.gz");
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    write_file(&path, b"data").unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}
