//! Where requests go. Each sink is independent: adding an output means adding a sink.

pub mod files;
pub mod findings;
pub mod flame;
pub mod jsonl;
pub mod metrics;
pub mod otlp;
pub mod pprof;
pub mod prometheus;
pub mod pyroscope;
pub mod slow;
pub mod summary;

use crate::model::Request;

pub trait Sink {
    fn request(&mut self, r: &Request) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()>;
}

/// Create a file only the owner can read: traces name paths and peers.
pub fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its old mode through open(2); make it private too.
    use std::os::unix::fs::PermissionsExt as _;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}
