//! slowtrace as a library: the binary (main.rs) is thin glue over it, and the fuzz targets
//! (fuzz/) call the decoders in it directly. Each stage of the pipeline lives in its own module:
//! probes (kernel side) → events (decoding) → model (requests, stats) → sinks (files, summary).

pub mod act;
pub mod agent;
pub mod bounded;
pub mod capture;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod doctor;
pub mod events;
pub mod exit;
pub mod handlers;
pub mod headless;
pub mod launch;
pub mod model;
pub mod probes;
pub mod procfs;
pub mod profile;
pub mod python;
pub mod reaper;
pub mod record;
pub mod sinks;
pub mod symbols;
pub mod tui;

/// The error and its causes on one line, each said once: many of our errors name their cause
/// in their own message too (`output directory X: No such file…`), and `{:#}` would repeat it.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = exit::bare(&cause.to_string());
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
