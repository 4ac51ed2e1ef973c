//! Where `top` keeps its requests: it always writes the files `record` writes (`sinks::files`:
//! requests.jsonl, findings.jsonl, and slow.jsonl, slow/*.txt, handlers.jsonl when it takes
//! captures or times handlers), so exporting never depends on what the screen kept.
//!
//! - `--export DIR`: the files are in DIR from the start, flushed every 250 ms and complete on
//!   exit.
//! - otherwise: a private temporary directory, deleted on exit. `e` copies what is on disk so far
//!   to ./slowtrace-out and marks it to be copied again, complete, on exit.

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
};

use crate::sinks::create_private;

pub use crate::sinks::files::{HANDLERS, REQUESTS};
pub const SLOW: &str = "slow.jsonl";
pub const FINDINGS: &str = "findings.jsonl";
/// The dogslow-style text reports, one file per slow request.
pub const SLOW_REPORTS: &str = "slow";
/// A launched command's output, which cannot go to the terminal the dashboard draws on.
pub const COMMAND_LOG: &str = "command.log";

pub struct Spool {
    dir: PathBuf,
    /// Owns (and on drop deletes) the directory when it is a temporary one.
    temp: Option<tempfile::TempDir>,
    /// Where `e` exported to, to complete on exit.
    copy_to: Option<PathBuf>,
}

/// Where the requests ended up, for the exit message.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    /// In this directory.
    In(PathBuf),
    /// Nowhere: the temporary file was deleted.
    Discarded,
}

impl Spool {
    /// `export`: a directory already checked writable (`config::prepare_output_dir`).
    pub fn new(export: Option<&Path>) -> io::Result<Spool> {
        Ok(match export {
            Some(dir) => Spool {
                dir: dir.to_owned(),
                temp: None,
                copy_to: None,
            },
            None => {
                // Mode 0700: traces name paths and peers.
                let temp = tempfile::Builder::new()
                    .prefix("slowtrace-top-")
                    .tempdir()?;
                Spool {
                    dir: temp.path().to_owned(),
                    temp: Some(temp),
                    copy_to: None,
                }
            }
        })
    }

    /// Where the sinks write.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn requests(&self) -> PathBuf {
        self.dir.join(REQUESTS)
    }

    pub fn command_log(&self) -> PathBuf {
        self.dir.join(COMMAND_LOG)
    }

    /// The `e` key. `flushed`: requests on disk now; `default_dir`: where to copy without
    /// `--export`. Returns the message for the footer.
    pub fn export_now(&mut self, flushed: u64, default_dir: &Path) -> Result<String, String> {
        if self.temp.is_none() {
            return Ok(format!(
                "{} is kept up to date ({flushed} requests so far) and complete on exit",
                self.requests().display()
            ));
        }
        crate::config::prepare_output_dir(default_dir).map_err(|e| e.to_string())?;
        let (n, slow) = self
            .copy_into(default_dir)
            .map_err(|e| format!("exporting to {}: {e}", default_dir.display()))?;
        self.copy_to = Some(default_dir.to_owned());
        let slow = match slow {
            0 => String::new(),
            n => format!(" and {n} slow requests"),
        };
        Ok(format!(
            "exported {n} requests{slow} to {}; completed again on exit",
            default_dir.display()
        ))
    }

    /// Returns the requests and slow requests copied.
    fn copy_into(&self, dir: &Path) -> io::Result<(u64, u64)> {
        let n = copy_complete_lines(&self.requests(), &dir.join(REQUESTS))?;
        let mut slow = 0;
        for (name, lines) in [
            (SLOW, Some(&mut slow)),
            (HANDLERS, None),
            (FINDINGS, None),
            (COMMAND_LOG, None),
        ] {
            let from = self.dir.join(name);
            if from.exists() {
                let n = copy_complete_lines(&from, &dir.join(name))?;
                if let Some(l) = lines {
                    *l = n;
                }
            }
        }
        copy_reports(&self.dir.join(SLOW_REPORTS), &dir.join(SLOW_REPORTS))?;
        Ok((n, slow))
    }

    /// On exit, once the agent has flushed everything: complete the export, if any, and delete
    /// the temporary directory.
    pub fn finish(self) -> io::Result<Kept> {
        match (&self.temp, &self.copy_to) {
            (None, _) => Ok(Kept::In(self.dir.clone())),
            (Some(_), Some(to)) => {
                self.copy_into(to)?;
                Ok(Kept::In(to.clone()))
            }
            (Some(_), None) => Ok(Kept::Discarded),
        }
    }
}

/// Copy `from` up to its last newline (the writer may be mid-line: its buffer is flushed in
/// blocks) into a new private file. Returns the number of lines.
fn copy_complete_lines(from: &Path, to: &Path) -> io::Result<u64> {
    let mut src = File::open(from)?;
    let end = complete_len(&mut src)?;
    src.seek(SeekFrom::Start(0))?;
    let mut src = src.take(end);
    let mut dst = io::BufWriter::new(create_private(to)?);
    let mut buf = vec![0u8; 64 * 1024];
    let mut lines = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        dst.write_all(&buf[..n])?;
    }
    dst.flush()?;
    Ok(lines)
}

/// The slow/*.txt reports, whole files (each is written in one go, and copied again, complete,
/// on exit). The directory is private, as `record` makes it.
fn copy_reports(from: &Path, to: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    // Reports of an earlier run there would read as this run's (as `SlowSink` clears its own).
    for e in std::fs::read_dir(to)?.flatten() {
        if e.path().extension().is_some_and(|x| x == "txt") {
            std::fs::remove_file(e.path())?;
        }
    }
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let mut src = File::open(entry.path())?;
        let mut dst = create_private(&to.join(entry.file_name()))?;
        io::copy(&mut src, &mut dst)?;
    }
    Ok(())
}

/// Length of `f` up to and including its last newline.
fn complete_len(f: &mut File) -> io::Result<u64> {
    let mut end = f.metadata()?.len();
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn temporary_spool_is_discarded_unless_exported() {
        let spool = Spool::new(None).unwrap();
        let dir = spool.requests().parent().unwrap().to_owned();
        std::fs::write(spool.requests(), "{}\n").unwrap();
        assert_eq!(spool.finish().unwrap(), Kept::Discarded);
        assert!(!dir.exists(), "temporary directory deleted");
    }

    #[test]
    fn e_exports_complete_lines_now_and_everything_on_exit() {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("export");
        let mut spool = Spool::new(None).unwrap();
        // A writer mid-line: the partial line is not exported.
        std::fs::write(spool.requests(), "{\"a\":1}\n{\"a\":2}\n{\"a\"").unwrap();
        let msg = spool.export_now(2, &dest).unwrap();
        assert!(msg.starts_with("exported 2 requests to"), "{msg}");
        let copied = dest.join(REQUESTS);
        assert_eq!(
            std::fs::read_to_string(&copied).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        let mode = std::fs::metadata(&copied).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(spool.requests(), "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n").unwrap();
        assert_eq!(spool.finish().unwrap(), Kept::In(dest.clone()));
        assert_eq!(std::fs::read_to_string(&copied).unwrap().lines().count(), 3);
    }

    #[test]
    fn e_exports_slow_requests_and_their_reports() {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("export");
        std::fs::create_dir_all(dest.join(SLOW_REPORTS)).unwrap();
        std::fs::write(dest.join("slow/old-run.txt"), "stale").unwrap();
        let mut spool = Spool::new(None).unwrap();
        std::fs::write(spool.requests(), "{\"a\":1}\n").unwrap();
        std::fs::write(spool.dir().join(SLOW), "{\"kind\":\"slow\"}\n{\"kind\"").unwrap();
        std::fs::create_dir(spool.dir().join(SLOW_REPORTS)).unwrap();
        std::fs::write(spool.dir().join("slow/a-1-2.txt"), "Slow request: GET /\n").unwrap();
        let msg = spool.export_now(1, &dest).unwrap();
        assert!(msg.contains("1 requests and 1 slow requests"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(dest.join(SLOW)).unwrap(),
            "{\"kind\":\"slow\"}\n"
        );
        let report = dest.join("slow/a-1-2.txt");
        assert_eq!(
            std::fs::read_to_string(&report).unwrap(),
            "Slow request: GET /\n"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (mode(&report), mode(&dest.join(SLOW_REPORTS))),
            (0o600, 0o700)
        );
        assert!(
            !dest.join("slow/old-run.txt").exists(),
            "an earlier run's report"
        );
        // More arrive; exit completes the copy.
        std::fs::write(spool.dir().join("slow/b-1-2.txt"), "Killed request\n").unwrap();
        assert_eq!(spool.finish().unwrap(), Kept::In(dest.clone()));
        assert!(dest.join("slow/b-1-2.txt").exists());
    }

    #[test]
    fn export_dir_is_the_spool() {
        let out = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(Some(out.path())).unwrap();
        assert_eq!(spool.requests(), out.path().join(REQUESTS));
        let msg = spool.export_now(7, Path::new("/nonexistent")).unwrap();
        assert!(msg.contains("7 requests so far"), "{msg}");
        assert_eq!(spool.finish().unwrap(), Kept::In(out.path().to_owned()));
    }

    #[test]
    fn long_files_find_their_last_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut body = "x".repeat(100_000);
        body.push('\n');
        body.push_str(&"y".repeat(70_000));
        std::fs::write(&p, &body).unwrap();
        assert_eq!(complete_len(&mut File::open(&p).unwrap()).unwrap(), 100_001);
        std::fs::write(&p, "no newline").unwrap();
        assert_eq!(complete_len(&mut File::open(&p).unwrap()).unwrap(), 0);
    }
}
