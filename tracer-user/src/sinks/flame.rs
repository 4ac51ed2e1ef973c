//! Flamegraph outputs of `record --flamegraph`: folded stacks (Brendan Gregg's format, one
//! `frame;frame;… count` per line), SVGs rendered by inferno, and one speedscope JSON holding
//! both profiles. docs/output-formats.md describes them.

use std::{
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::create_private;
use crate::model::profile::{FrameKind, Metric, Profile};

/// What one export wrote.
#[derive(Debug, Default)]
pub struct Written {
    pub files: Vec<PathBuf>,
    pub cpu_lines: usize,
    pub wall_lines: usize,
}

/// Everything for the whole run, filtered to endpoints matching `filter`.
pub fn write_all(
    dir: &Path,
    p: &Profile,
    filter: Option<&glob::Pattern>,
    sample_hz: u64,
) -> io::Result<Written> {
    let mut w = Written::default();
    let what = filter.map_or_else(String::new, |f| format!(" · endpoints {f}"));
    for (m, name) in [(Metric::Cpu, "cpu"), (Metric::Wall, "wall")] {
        let lines = p.folded(m, filter);
        match m {
            Metric::Cpu => w.cpu_lines = lines.len(),
            Metric::Wall => w.wall_lines = lines.len(),
        }
        let folded = dir.join(format!("{name}.folded"));
        write_folded(&folded, &lines)?;
        w.files.push(folded);
        let title = match m {
            Metric::Cpu => format!("slowtrace: on-CPU samples at {sample_hz} Hz{what}"),
            Metric::Wall => format!("slowtrace: wall-clock time inside requests (µs){what}"),
        };
        let svg = dir.join(format!("{name}.svg"));
        if write_svg(&svg, &title, &lines, m)? {
            w.files.push(svg);
        }
    }
    let json = dir.join("profile.speedscope.json");
    write_speedscope(&json, p, filter)?;
    w.files.push(json);
    Ok(w)
}

pub fn write_folded(path: &Path, lines: &[String]) -> io::Result<()> {
    let mut f = BufWriter::new(create_private(path)?);
    for l in lines {
        writeln!(f, "{l}")?;
    }
    f.flush()
}

/// An SVG flamegraph of `lines`; false (and no file) when there is nothing to draw.
pub fn write_svg(path: &Path, title: &str, lines: &[String], m: Metric) -> io::Result<bool> {
    if lines.is_empty() {
        return Ok(false);
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_owned();
    opts.count_name = match m {
        Metric::Cpu => "samples".into(),
        Metric::Wall => "µs".into(),
    };
    let f = BufWriter::new(create_private(path)?);
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), f)
        .map_err(|e| io::Error::other(format!("rendering {}: {e}", path.display())))?;
    Ok(true)
}

#[derive(Serialize)]
struct SsFrame<'a> {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SsProfile<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'static str,
    unit: &'static str,
    start_value: u64,
    end_value: u64,
    samples: Vec<&'a [u32]>,
    weights: Vec<u64>,
}

/// speedscope's file format (https://www.speedscope.app/file-format-schema.json): shared
/// frames, and one "sampled" profile per metric whose samples are stacks of frame indices.
pub fn write_speedscope(
    path: &Path,
    p: &Profile,
    filter: Option<&glob::Pattern>,
) -> io::Result<()> {
    let (frames, stacks) = p.stacks(filter);
    let ss_frames: Vec<SsFrame<'_>> = frames
        .iter()
        .map(|f| SsFrame {
            name: if f.kind == FrameKind::Kernel {
                format!("{} [kernel]", f.name)
            } else {
                f.name.clone()
            },
            file: f.file.as_deref(),
            line: f.line,
        })
        .collect();
    let profile = |m: Metric, name: &'static str, unit: &'static str| {
        let kept: Vec<_> = stacks.iter().filter(|(_, w)| w.get(m) > 0).collect();
        let weights: Vec<u64> = kept.iter().map(|(_, w)| w.get(m)).collect();
        SsProfile {
            kind: "sampled",
            name,
            unit,
            start_value: 0,
            end_value: weights.iter().sum(),
            samples: kept.iter().map(|(s, _)| *s).collect(),
            weights,
        }
    };
    let doc = serde_json::json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "name": "slowtrace",
        "exporter": concat!("slowtrace ", env!("CARGO_PKG_VERSION")),
        "activeProfileIndex": 0,
        "shared": { "frames": ss_frames },
        "profiles": [
            profile(Metric::Cpu, "on-CPU samples", "none"),
            profile(Metric::Wall, "wall-clock time inside requests", "microseconds"),
        ],
    });
    let mut f = BufWriter::new(create_private(path)?);
    serde_json::to_writer(&mut f, &doc)?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::{FrameInfo, Sample, Task, Weights};

    fn profile() -> Profile {
        let mut p = Profile::default();
        let frames = [
            FrameInfo {
                name: "view".into(),
                file: Some("app.py".into()),
                line: Some(3),
                kind: FrameKind::Python,
            },
            FrameInfo::new(FrameKind::Kernel, "schedule"),
        ];
        p.add(&Sample {
            task: Task::default(),
            endpoint: Some("GET /x"),
            frames: &frames,
            request: None,
            weights: Weights {
                cpu_samples: 2,
                wall_us: 20_000,
            },
        });
        p
    }

    #[test]
    fn writes_folded_svg_and_speedscope_privately() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let w = write_all(dir.path(), &profile(), None, 99).unwrap();
        assert_eq!(w.files.len(), 5, "{:?}", w.files);
        let folded = std::fs::read_to_string(dir.path().join("cpu.folded")).unwrap();
        assert_eq!(folded, "GET /x;view (app.py:3);schedule_[k] 2\n");
        let wall = std::fs::read_to_string(dir.path().join("wall.folded")).unwrap();
        assert_eq!(wall, "GET /x;view (app.py:3);schedule_[k] 20000\n");
        let svg = std::fs::read_to_string(dir.path().join("cpu.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("view (app.py:3)"));
        let ss: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("profile.speedscope.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(ss["shared"]["frames"][2]["name"], "schedule [kernel]");
        assert_eq!(
            ss["profiles"][0]["samples"][0],
            serde_json::json!([0, 1, 2])
        );
        assert_eq!(ss["profiles"][1]["endValue"], 20_000);
        for f in &w.files {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }

    #[test]
    fn empty_profile_writes_no_svg() {
        let dir = tempfile::tempdir().unwrap();
        let w = write_all(dir.path(), &Profile::default(), None, 99).unwrap();
        assert_eq!(w.files.len(), 3);
        assert_eq!(w.cpu_lines, 0);
    }
}
