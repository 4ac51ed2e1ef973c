//! The files of a run, written the same way whether `record` or `top` runs the agent:
//! requests.jsonl, findings.jsonl, slow.jsonl with one report per slow request in slow/, and
//! handlers.jsonl. Both commands hold one `Files` as one of their outputs, so the same run
//! gives the same files from either.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{findings::FindingsSink, flame, jsonl::JsonlSink, slow::SlowSink};
use crate::{
    agent::{AgentEvent, Consumer},
    model::{handler::HandlerCall, profile::Metric, slow::SlowRequest, Request},
};

pub const REQUESTS: &str = "requests.jsonl";
pub const HANDLERS: &str = "handlers.jsonl";

pub struct Files {
    pub requests: JsonlSink,
    pub findings: FindingsSink,
    /// slow.jsonl and slow/*.txt; None when captures are off (`--threshold 0`).
    pub slow: Option<SlowSink>,
    /// handlers.jsonl; None without `--handler`.
    pub handlers: Option<JsonlSink>,
    /// Path of the last slow-request report written (for the one-line notice of `record`).
    pub last_report: Option<PathBuf>,
    /// Draw each slow request's own samples next to its report (`record --flamegraph`).
    pub slow_flamegraphs: bool,
    /// slow/*.svg written.
    pub slow_svgs: u64,
    /// Flamegraphs that could not be written (the run goes on; the summary says so).
    pub errors: Vec<String>,
}

impl Files {
    /// Create the files in `dir` (which exists): slow ones only when `captures`, handlers.jsonl
    /// only when `handlers`.
    pub fn create(dir: &Path, captures: bool, handlers: bool) -> anyhow::Result<Files> {
        let jsonl = |name: &str| {
            let path = dir.join(name);
            JsonlSink::create(&path).with_context(|| format!("creating {}", path.display()))
        };
        Ok(Files {
            requests: jsonl(REQUESTS)?,
            findings: FindingsSink::create(dir).context("creating findings.jsonl")?,
            slow: match captures {
                true => Some(SlowSink::create(dir).context("creating slow.jsonl")?),
                false => None,
            },
            handlers: match handlers {
                true => Some(jsonl(HANDLERS)?),
                false => None,
            },
            last_report: None,
            slow_flamegraphs: false,
            slow_svgs: 0,
            errors: Vec::new(),
        })
    }

    pub fn request(&mut self, req: &Request) -> anyhow::Result<()> {
        self.findings.add(req).context("writing findings.jsonl")?;
        self.requests.line(req).context("writing requests.jsonl")
    }

    pub fn slow(&mut self, slow: &SlowRequest) -> anyhow::Result<()> {
        if let Some(sink) = self.slow.as_mut() {
            // A report that fails leaves no path behind to be announced as this one's.
            self.last_report = None;
            let Some(path) = sink.write(slow).context("writing slow.jsonl")? else {
                return Ok(());
            };
            if let (true, Some(p)) = (self.slow_flamegraphs, &slow.profile) {
                // Wall-clock (where the time went, blocked or not) when there is any.
                let (lines, m) = if p.wall.is_empty() {
                    (&p.cpu, Metric::Cpu)
                } else {
                    (&p.wall, Metric::Wall)
                };
                let svg = path.with_extension("svg");
                let name = svg.file_stem().unwrap_or_default().to_string_lossy();
                let title = format!("slowtrace: slow request {name}");
                match flame::write_svg(&svg, &title, lines, m) {
                    Ok(true) => self.slow_svgs += 1,
                    Ok(false) => {}
                    Err(e) => self.errors.push(format!("{}: {e}", svg.display())),
                }
            }
            self.last_report = Some(path);
        }
        Ok(())
    }

    pub fn handler(&mut self, call: &HandlerCall) -> anyhow::Result<()> {
        if let Some(sink) = self.handlers.as_mut() {
            sink.line(call).context("writing handlers.jsonl")?;
        }
        Ok(())
    }

    /// Everything written so far on disk (every scan: a request is there within 250 ms).
    pub fn flush(&mut self) -> anyhow::Result<()> {
        // Write failures do not end the run: the files count what they lose (take_warnings).
        self.requests.flush();
        self.findings.flush().context("writing findings.jsonl")?;
        if let Some(s) = self.slow.as_mut() {
            s.flush().context("writing slow.jsonl")?;
        }
        if let Some(h) = self.handlers.as_mut() {
            h.flush();
        }
        Ok(())
    }

    /// One warning per file given up (disk full, removed) or per kind of failed report, the
    /// first time each happens: the caller prints them while the run goes on.
    pub fn take_warnings(&mut self) -> Vec<String> {
        let mut v: Vec<String> = [Some(&mut self.requests), Some(&mut self.findings.out)]
            .into_iter()
            .chain([self.handlers.as_mut()])
            .flatten()
            .filter_map(|f| f.take_warning())
            .collect();
        if let Some(s) = self.slow.as_mut() {
            v.extend(s.take_warnings());
        }
        v
    }

    /// What the files lost, for the exit summary (empty when nothing was).
    pub fn losses(&self) -> Vec<String> {
        let mut v: Vec<String> = [Some(&self.requests), Some(&self.findings.out)]
            .into_iter()
            .chain([self.handlers.as_ref()])
            .flatten()
            .filter_map(|f| f.loss())
            .collect();
        if let Some(s) = self.slow.as_ref() {
            v.extend(s.losses());
        }
        v
    }
}

impl Consumer for Files {
    fn on_event(&mut self, ev: AgentEvent) -> anyhow::Result<()> {
        match ev {
            AgentEvent::Request(req) => self.request(&req),
            AgentEvent::Tick { .. } => self.flush(),
        }
    }

    fn on_slow(&mut self, slow: &SlowRequest) -> anyhow::Result<()> {
        self.slow(slow)
    }

    fn on_handler(&mut self, call: &HandlerCall) -> anyhow::Result<()> {
        self.handler(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_a_run_with_captures_and_handlers() {
        use crate::tui::captures::tests::{capture, py, slow_request};
        let dir = tempfile::tempdir().unwrap();
        let mut f = Files::create(dir.path(), true, true).unwrap();
        f.slow_flamegraphs = true;
        let r = crate::tui::state::tests::req("GET /slow", 1500, 200);
        f.on_event(AgentEvent::Request(Box::new(r.clone())))
            .unwrap();
        let mut s = slow_request(
            r,
            vec![capture(1000, vec![py("view", "app.py", 3)], vec![])],
        );
        s.profile = Some(crate::model::profile::RequestProfile {
            cpu: vec!["GET /slow;handle;view (app.py:3) 12".into()],
            wall: vec![],
        });
        f.on_slow(&s).unwrap();
        f.on_event(AgentEvent::Tick {
            in_flight: vec![],
            counters: Default::default(),
        })
        .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "findings.jsonl",
                "handlers.jsonl",
                "requests.jsonl",
                "slow",
                "slow.jsonl"
            ]
        );
        let lines = |n: &str| {
            std::fs::read_to_string(dir.path().join(n))
                .unwrap()
                .lines()
                .count()
        };
        assert_eq!(lines(REQUESTS), 1);
        assert_eq!(lines("slow.jsonl"), 1);
        let report = f.last_report.clone().unwrap();
        assert!(report.exists());
        assert!(
            report.with_extension("svg").exists(),
            "the slow request's own flamegraph next to its report"
        );
        assert_eq!(f.slow_svgs, 1);
    }
}
