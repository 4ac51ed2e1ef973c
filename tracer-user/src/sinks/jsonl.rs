//! `requests.jsonl`: one JSON object per request (docs/output-formats.md).

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::Path,
};

use super::Sink;
use crate::model::Request;

pub struct JsonlSink {
    out: BufWriter<File>,
    pub written: u64,
}

impl JsonlSink {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            out: BufWriter::with_capacity(64 * 1024, super::create_private(path)?),
            written: 0,
        })
    }
}

impl JsonlSink {
    /// Any record type: one JSON object per line.
    pub fn line<T: serde::Serialize>(&mut self, v: &T) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, v)?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }
}

impl Sink for JsonlSink {
    fn request(&mut self, r: &Request) -> std::io::Result<()> {
        self.line(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
