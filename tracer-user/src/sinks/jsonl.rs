//! `requests.jsonl` and `handlers.jsonl`: one JSON object per line (docs/output-formats.md),
//! written in whole lines only (`lines::LineFile`).

pub type JsonlSink = super::lines::LineFile;
