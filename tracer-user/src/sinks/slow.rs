//! `slow.jsonl` and the dogslow-style reports in `slow/`: one per slow or killed request.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
};

use crate::{
    capture::worker::describe,
    model::slow::{Capture, SlowRequest},
    sinks::summary::human_us,
};

pub struct SlowSink {
    /// slow.jsonl, whole lines only.
    pub jsonl: super::lines::LineFile,
    dir: PathBuf,
    pub slow: u64,
    pub killed: u64,
    /// Reports that could not be written (disk full, slow/ removed): counted, the first
    /// failure's reason kept for one warning and the summary.
    pub reports_lost: u64,
    pub report_failure: Option<String>,
    report_warned: bool,
}

impl SlowSink {
    pub fn create(out_dir: &Path) -> std::io::Result<Self> {
        let dir = out_dir.join("slow");
        super::refuse_symlinked_dir(&dir)?;
        std::fs::create_dir_all(&dir)?;
        // Reports of an earlier run in the same directory would read as this run's; slow.jsonl
        // is truncated too.
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.path().extension().is_some_and(|x| x == "txt") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(Self {
            jsonl: super::lines::LineFile::create(&out_dir.join("slow.jsonl"))?,
            dir,
            slow: 0,
            killed: 0,
            reports_lost: 0,
            report_failure: None,
            report_warned: false,
        })
    }

    /// The line in slow.jsonl and the report in slow/; the report's path, unless it could not
    /// be written (then it is counted in `reports_lost` and the run goes on).
    pub fn write(&mut self, s: &SlowRequest) -> std::io::Result<Option<PathBuf>> {
        self.jsonl.line(s)?;
        if s.killed.is_some() {
            self.killed += 1;
        } else {
            self.slow += 1;
        }
        let base = report_base(&s.request);
        let mut path = self.dir.join(format!("{base}.txt"));
        let mut n = 1;
        while path.exists() {
            n += 1;
            path = self.dir.join(format!("{base}-{n}.txt"));
        }
        let written =
            super::create_private(&path).and_then(|mut f| f.write_all(report(s).as_bytes()));
        match written {
            Ok(()) => Ok(Some(path)),
            Err(e) => {
                // A half-written report would read as a whole one.
                let _ = std::fs::remove_file(&path);
                self.reports_lost += 1;
                self.report_failure
                    .get_or_insert_with(|| crate::exit::bare(&e.to_string()));
                Ok(None)
            }
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.jsonl.flush();
        Ok(())
    }

    /// Warnings not given yet: slow.jsonl given up, reports failing (once each).
    pub fn take_warnings(&mut self) -> Vec<String> {
        let mut v: Vec<String> = self.jsonl.take_warning().into_iter().collect();
        if let Some(why) = &self.report_failure {
            if !std::mem::replace(&mut self.report_warned, true) {
                v.push(format!(
                    "{}: writing a slow-request report failed: {why}; failed reports are counted \
                     as lost (tracing goes on)",
                    self.dir.display()
                ));
            }
        }
        v
    }

    /// For the exit summary: what slow.jsonl and slow/ lost.
    pub fn losses(&self) -> Vec<String> {
        let mut v: Vec<String> = self.jsonl.loss().into_iter().collect();
        if let Some(why) = &self.report_failure {
            v.push(format!(
                "{}: {} reports not written ({why})",
                self.dir.display(),
                self.reports_lost
            ));
        }
        v
    }
}

/// The human report: request, then each capture with the Python traceback in Python's order
/// (most recent call last), then native and kernel frames.
/// File name (without extension) of a slow request's report; its flamegraph shares it.
pub fn report_base(r: &crate::model::Request) -> String {
    let stamp: String = r
        .start
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    format!("{stamp}-{}-{}", r.pid, r.tid)
}

pub fn report(s: &SlowRequest) -> String {
    let r = &s.request;
    let mut o = String::new();
    let what = if s.killed.is_some() {
        "Killed request"
    } else {
        "Slow request"
    };
    let _ = writeln!(
        o,
        "{what}: {} {}",
        r.method.as_deref().unwrap_or("?"),
        r.path.as_deref().unwrap_or(&r.endpoint)
    );
    let _ = writeln!(o, "Host: {}", r.host.as_deref().unwrap_or("-"));
    let _ = writeln!(o, "Process: pid {} tid {} ({})", r.pid, r.tid, r.comm);
    if let Some(cg) = &r.cgroup {
        match &r.container {
            Some(id) => {
                let _ = writeln!(o, "Cgroup: {cg} (container {id})");
            }
            None => {
                let _ = writeln!(o, "Cgroup: {cg}");
            }
        }
    }
    let _ = writeln!(o, "Started: {}", r.start);
    let _ = writeln!(
        o,
        "Elapsed: {} (threshold {}ms), status {}, ended: {}",
        human_us(r.duration_us),
        s.threshold_ms,
        r.status.map_or("none".to_owned(), |c| c.to_string()),
        r.end
    );
    if let Some(k) = &s.killed {
        let _ = writeln!(
            o,
            "Killed: {} from pid {} at +{}ms{}",
            k.signal,
            k.sender_pid,
            k.at_ms,
            if k.process_died {
                ", the process died with the request open"
            } else {
                ""
            }
        );
    }
    for sent in &r.signals {
        let _ = writeln!(
            o,
            "slowtrace sent {} at +{}ms ({})",
            sent.signal, sent.at_ms, sent.why
        );
    }
    if s.captures.is_empty() {
        let _ = writeln!(
            o,
            "\nNo capture was taken (the request ended before the next scan)."
        );
    }
    for (i, c) in s.captures.iter().enumerate() {
        capture(&mut o, i + 1, c);
    }
    if s.captures_missed > 0 {
        let _ = writeln!(
            o,
            "\n{} captures were skipped (capture queue full)",
            s.captures_missed
        );
    }
    o
}

fn capture(o: &mut String, n: usize, c: &Capture) {
    let during = c
        .syscall
        .as_deref()
        .map(|s| format!(" in {s}"))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "\nCapture {n} at +{}ms: {}{during}",
        c.offset_ms, c.state
    );
    if c.stack_of == Some(crate::capture::eventloop::EVENT_LOOP) {
        let _ = writeln!(
            o,
            "(the asyncio event loop's thread: it serves many requests at once, so this is \
             what the loop ran at that instant, not necessarily this request's code)"
        );
    }
    if !c.python.is_empty() {
        let _ = writeln!(o, "Traceback (most recent call last):");
        for f in c.python.iter().rev() {
            let _ = writeln!(
                o,
                "  File \"{}\", line {}, in {}",
                f.file.as_deref().unwrap_or("?"),
                f.line.map_or("?".to_owned(), |l| l.to_string()),
                f.function
            );
        }
    }
    if !c.native.is_empty() {
        let _ = writeln!(o, "Native frames, innermost first ({}):", c.native_source);
        for f in &c.native {
            let _ = writeln!(o, "  {}", describe(f));
        }
    }
    if !c.kernel.is_empty() {
        let _ = writeln!(o, "Kernel frames, innermost first:");
        for f in &c.kernel {
            let _ = writeln!(o, "  {}", f.function);
        }
    }
    for e in &c.errors {
        let _ = writeln!(o, "(could not read: {e})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::slow::{Frame, Killed};

    fn frame(f: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: f.into(),
            file: Some(file.into()),
            line: Some(line),
            module: None,
        }
    }

    #[test]
    fn report_reads_like_dogslow() {
        let req = crate::model::Request {
            start_us: 0,
            start: "2026-11-22T09:00:00.000000Z".into(),
            pid: 10,
            tid: 11,
            comm: "gunicorn".into(),
            fd: 5,
            local_port: Some(8000),
            peer: None,
            protocol: "http/1.1",
            method: Some("GET".into()),
            path: Some("/report?[redacted]".into()),
            host: Some("example".into()),
            endpoint: "GET /report".into(),
            status: Some(500),
            duration_us: 5_100_000,
            ttfb_us: None,
            bytes_in: 0,
            bytes_out: 0,
            end: "close",
            ..crate::model::request::test_request()
        };
        let s = SlowRequest {
            kind: "killed",
            threshold_ms: 1000,
            request: req,
            killed: Some(Killed {
                signal: "SIGABRT".into(),
                signo: 6,
                sender_pid: 9,
                at_ms: 5000,
                process_died: false,
            }),
            captures: vec![Capture {
                offset_ms: 1010,
                state: "blocked".into(),
                syscall: Some("clock_nanosleep".into()),
                python: vec![frame("fetch", "app.py", 20), frame("view", "app.py", 30)],
                native: vec![],
                kernel: vec![Frame {
                    function: "do_nanosleep".into(),
                    file: None,
                    line: None,
                    module: None,
                }],
                native_source: "none".into(),
                took_us: 0,
                errors: vec![],
                stack_of: None,
            }],
            captures_missed: 0,
            profile: None,
        };
        let text = report(&s);
        let view = text.find("in view").unwrap();
        let fetch = text.find("in fetch").unwrap();
        assert!(view < fetch, "outermost first, innermost last:\n{text}");
        assert!(
            text.contains("Killed: SIGABRT from pid 9 at +5000ms"),
            "{text}"
        );
        assert!(
            text.contains("Capture 1 at +1010ms: blocked in clock_nanosleep"),
            "{text}"
        );
        assert!(
            text.contains("  File \"app.py\", line 20, in fetch"),
            "{text}"
        );
    }

    #[test]
    fn an_event_loop_capture_says_whose_stack_it_is() {
        let mut c = Capture {
            state: "blocked".into(),
            python: vec![frame("EpollSelector.select", "selectors.py", 468)],
            ..Capture::default()
        };
        let mut plain = String::new();
        capture(&mut plain, 1, &c);
        assert!(!plain.contains("event loop"), "{plain}");
        c.stack_of = Some(crate::capture::eventloop::EVENT_LOOP);
        let mut labelled = String::new();
        capture(&mut labelled, 1, &c);
        let note = labelled.find("the asyncio event loop's thread").unwrap();
        assert!(
            note < labelled.find("Traceback").unwrap(),
            "the note comes before the stack it qualifies:\n{labelled}"
        );
    }
}
