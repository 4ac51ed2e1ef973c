//! Where requests go. Each sink is independent: adding an output means adding a sink.

pub mod files;
pub mod findings;
pub mod flame;
pub mod jsonl;
pub mod lines;
pub mod metrics;
pub mod otlp;
pub mod pprof;
pub mod prometheus;
pub mod pyroscope;
pub mod slow;
pub mod summary;

/// Create a file only the owner can read: traces name paths and peers. A symbolic link in its
/// place is refused, not followed (O_NOFOLLOW): in a shared directory another user could plant
/// `requests.jsonl -> /etc/shadow` and have root truncate the target.
pub fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => std::io::Error::new(
                e.kind(),
                format!(
                    "{} is a symbolic link; refusing to follow it",
                    path.display()
                ),
            ),
            _ => e,
        })?;
    // An existing file keeps its old mode through open(2); make it private too.
    use std::os::unix::fs::PermissionsExt as _;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// An output path refused before anything was written (exit code 73, CANTCREAT).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Refuse a symbolic link where an output directory goes: creating files in it would write
/// wherever it points (and `slow/` has its old reports removed).
pub fn refuse_symlinked_dir(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(std::io::Error::other(Refused(format!(
            "{} is a symbolic link; give the directory it points to (output paths are not \
             followed through symlinks)",
            dir.display()
        )))),
        Ok(m) if !m.is_dir() => Err(std::io::Error::other(Refused(format!(
            "{} exists and is not a directory",
            dir.display()
        )))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod create_tests {
    /// A planted `requests.jsonl -> victim` is refused and the victim untouched; a planted
    /// `slow -> elsewhere` is refused before its *.txt files would be cleared.
    #[test]
    fn planted_symlinks_are_refused_not_followed() {
        let dir = std::env::temp_dir().join(format!("slowtrace-planted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("requests.jsonl")).unwrap();
        let e = super::create_private(&dir.join("requests.jsonl")).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("is a symbolic link; refusing to follow it"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        std::fs::write(dir.join("elsewhere/old.txt"), "someone's").unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("slow")).unwrap();
        let e = super::slow::SlowSink::create(&dir).err().expect("refused");
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(dir.join("elsewhere/old.txt").exists());
        let e = crate::exit::code(&anyhow::Error::from(std::io::Error::from_raw_os_error(
            libc::ELOOP,
        )));
        assert_eq!(e, crate::exit::CANTCREAT);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
