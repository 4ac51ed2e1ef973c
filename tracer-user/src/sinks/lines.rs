//! A JSON-lines file that only ever holds whole lines.
//!
//! A `BufWriter` writes when its buffer fills, which is usually mid-line, and the rest of that
//! line waits for the next flush (up to a scan period later): a SIGKILL of slowtrace in between,
//! or a full disk, left a torn last line that breaks every JSON-lines reader. Here lines are
//! serialized whole into our own buffer and handed to write(2) only at line boundaries, so a
//! killed slowtrace leaves whole lines (the kernel can still cut one write(2) at a page boundary
//! if the SIGKILL lands during that very call, a window of microseconds per flush). When a write
//! fails (ENOSPC, EIO) the file is cut back to its last whole line and given up: later lines are
//! counted as lost, the run goes on, and the caller prints one warning. A file removed while we
//! write it (the output directory deleted) is noticed at the next flush and given up the same way.

use std::{
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Flush when this much is buffered (whole lines only), as well as on every scan.
const FLUSH_AT: usize = 64 * 1024;

/// Where the bytes go: a file, or a fake in the unit tests.
pub trait Target {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Cut the file to `len` bytes (to drop the part of a line a failed write left).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Whether the file was unlinked (its directory removed) while open.
    fn removed(&self) -> bool;
}

impl Target for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(self, buf)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }

    fn removed(&self) -> bool {
        self.metadata().is_ok_and(|m| m.nlink() == 0)
    }
}

pub struct LineFile<T: Target = File> {
    target: Option<T>,
    path: PathBuf,
    buf: Vec<u8>,
    /// Lines in `buf`.
    pending: u64,
    /// Bytes of whole lines on disk.
    committed: u64,
    /// Lines on disk.
    pub written: u64,
    /// Lines not written: given to a file that had failed, or lost with the failing write.
    pub lost: u64,
    /// Why the file was given up, once it was.
    pub failure: Option<String>,
    warned: bool,
}

impl LineFile<File> {
    pub fn create(path: &Path) -> io::Result<Self> {
        Ok(Self::new(super::create_private(path)?, path))
    }
}

impl<T: Target> LineFile<T> {
    pub fn new(target: T, path: &Path) -> Self {
        Self {
            target: Some(target),
            path: path.to_owned(),
            buf: Vec::with_capacity(FLUSH_AT),
            pending: 0,
            committed: 0,
            written: 0,
            lost: 0,
            failure: None,
            warned: false,
        }
    }

    /// One JSON object as one line. Never fails on I/O: a failed file counts the line as lost.
    pub fn line<V: serde::Serialize>(&mut self, v: &V) -> io::Result<()> {
        if self.target.is_none() {
            self.lost += 1;
            return Ok(());
        }
        let start = self.buf.len();
        if let Err(e) = serde_json::to_writer(&mut self.buf, v) {
            // A half-serialized line never reaches the file.
            self.buf.truncate(start);
            return Err(e.into());
        }
        self.buf.push(b'\n');
        self.pending += 1;
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
        Ok(())
    }

    /// Write the buffered lines; notice a removed file.
    pub fn flush(&mut self) {
        let Some(removed) = self.target.as_ref().map(T::removed) else {
            return;
        };
        if removed {
            // Whatever was written since the last look went with the file too, but it is on
            // no disk to count; what is buffered and what comes later is counted.
            self.give_up(
                "it was removed while slowtrace was writing it (output directory deleted?)".into(),
            );
            return;
        }
        let Some(target) = self.target.as_mut() else {
            return;
        };
        let mut done = 0;
        while done < self.buf.len() {
            match target.write(&self.buf[done..]) {
                Ok(0) => return self.failed(done, io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.failed(done, e),
            }
        }
        self.committed += self.buf.len() as u64;
        self.written += self.pending;
        self.pending = 0;
        self.buf.clear();
    }

    /// A write failed after `done` bytes of the buffer: keep the whole lines among them, cut the
    /// rest off the file, give the file up.
    fn failed(&mut self, done: usize, e: io::Error) {
        let keep = whole_lines(&self.buf[..done]);
        let kept_lines = self.buf[..keep].iter().filter(|b| **b == b'\n').count() as u64;
        self.committed += keep as u64;
        self.written += kept_lines;
        self.pending -= kept_lines;
        let mut why = crate::exit::bare(&e.to_string());
        if let Some(t) = self.target.as_mut() {
            if let Err(t) = t.truncate(self.committed) {
                why = format!(
                    "{why}; cutting it back to its last whole line failed too ({}): its last \
                     line may be torn",
                    crate::exit::bare(&t.to_string())
                );
            }
        }
        self.give_up(why);
    }

    fn give_up(&mut self, why: String) {
        self.lost += self.pending;
        self.pending = 0;
        self.buf.clear();
        self.target = None;
        self.failure = Some(why);
    }

    /// The one warning for a file given up, the first time it is asked for.
    pub fn take_warning(&mut self) -> Option<String> {
        let why = self.failure.as_ref()?;
        if std::mem::replace(&mut self.warned, true) {
            return None;
        }
        Some(format!(
            "{}: {why}; {} lines written, later ones are counted as lost (tracing goes on)",
            self.path.display(),
            self.written
        ))
    }

    /// For the exit summary: what this file lost, if anything.
    pub fn loss(&self) -> Option<String> {
        let why = self.failure.as_ref()?;
        Some(format!(
            "{}: {} lines written, {} lost ({why})",
            self.path.display(),
            self.written,
            self.lost
        ))
    }
}

/// The length of the longest prefix of `bytes` that is whole lines.
fn whole_lines(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk with `room` bytes left: writes past it are short, then ENOSPC.
    #[derive(Default)]
    struct Disk {
        data: Vec<u8>,
        room: usize,
        removed: bool,
    }

    impl Target for &mut Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room - self.data.len());
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn truncate(&mut self, len: u64) -> io::Result<()> {
            self.data.truncate(len as usize);
            Ok(())
        }

        fn removed(&self) -> bool {
            self.removed
        }
    }

    fn text(d: &Disk) -> &str {
        std::str::from_utf8(&d.data).unwrap()
    }

    #[test]
    fn a_full_disk_leaves_whole_lines_and_counts_the_rest() {
        let mut disk = Disk {
            room: 25,
            ..Default::default()
        };
        let mut f = LineFile::new(&mut disk, Path::new("requests.jsonl"));
        f.line(&"aaaa").unwrap(); // "aaaa"\n = 7 bytes
        f.flush();
        for _ in 0..3 {
            f.line(&"bbbb").unwrap();
        }
        // 7 + 21 bytes do not fit in 25: the write stops after 18 of the 21.
        f.flush();
        f.line(&"cccc").unwrap();
        f.flush();
        assert_eq!((f.written, f.lost), (3, 2));
        assert!(f.failure.as_deref().unwrap().contains("No space left"));
        let w = f.take_warning().unwrap();
        assert!(w.starts_with("requests.jsonl: No space left on device; 3 lines written"));
        assert_eq!(f.take_warning(), None, "one warning per file");
        assert!(f.loss().unwrap().contains("3 lines written, 2 lost"));
        drop(f);
        assert_eq!(text(&disk), "\"aaaa\"\n\"bbbb\"\n\"bbbb\"\n");
    }

    #[test]
    fn nothing_is_written_before_a_whole_line_is_there() {
        let mut disk = Disk {
            room: 1 << 20,
            ..Default::default()
        };
        let mut f = LineFile::new(&mut disk, Path::new("x"));
        let big = "x".repeat(FLUSH_AT / 4);
        for _ in 0..4 {
            f.line(&big).unwrap();
        }
        // The fourth line pushed the buffer past FLUSH_AT: written whole, at a line boundary.
        assert_eq!(f.written, 4);
        f.line(&"tail").unwrap();
        assert_eq!(f.written, 4, "the tail waits for a flush");
        drop(f);
        assert!(text(&disk).ends_with('\n'));
        assert_eq!(text(&disk).lines().count(), 4);
    }

    #[test]
    fn a_removed_file_is_given_up_with_its_lines_counted() {
        let mut disk = Disk {
            room: 1 << 20,
            ..Default::default()
        };
        let mut f = LineFile::new(&mut disk, Path::new("out/requests.jsonl"));
        f.line(&1).unwrap();
        f.flush();
        f.target.as_mut().unwrap().removed = true;
        f.line(&2).unwrap();
        f.flush();
        f.line(&3).unwrap();
        assert_eq!((f.written, f.lost), (1, 2));
        assert!(f
            .take_warning()
            .unwrap()
            .contains("removed while slowtrace"));
    }

    #[test]
    fn prefixes_of_whole_lines() {
        assert_eq!(whole_lines(b""), 0);
        assert_eq!(whole_lines(b"abc"), 0);
        assert_eq!(whole_lines(b"a\nb"), 2);
        assert_eq!(whole_lines(b"a\nb\n"), 4);
    }
}
