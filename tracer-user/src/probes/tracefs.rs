//! tracefs: where tracepoint ids and record layouts live. Not mounted on every machine.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use tracer_common::TracepointOffsets;

const MOUNT_POINT: &str = "/sys/kernel/tracing";
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it failed ({0}); as root run: \
         mount -t tracefs nodev /sys/kernel/tracing"
    )]
    MountFailed(std::io::Error),
    #[error(
        "tracepoint {0} not found under {1} (is this kernel built with CONFIG_FTRACE_SYSCALLS?)"
    )]
    MissingEvent(&'static str, PathBuf),
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("field {field} not found in {path}")]
    MissingField { field: &'static str, path: PathBuf },
}

/// Find tracefs, mounting it (as bpftrace does) when it is not there. Returns its path and whether
/// slowtrace mounted it.
pub fn ensure() -> Result<(PathBuf, bool), TracefsError> {
    if let Some(p) = find() {
        return Ok((p, false));
    }
    let src = CString::new("nodev").expect("no NUL");
    let target = CString::new(MOUNT_POINT).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::MountFailed(std::io::Error::last_os_error()));
    }
    find().map(|p| (p, true)).ok_or_else(|| {
        TracefsError::MountFailed(std::io::Error::other(
            "mounted, but events/ is still missing",
        ))
    })
}

/// Where tracefs is mounted with its events, if it is.
pub fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events/syscalls").is_dir())
}

/// Offsets of the tracepoint fields we read (`sched_process_fork`, `signal_generate`,
/// `sched_switch`, `sched_wakeup`, `cgroup_attach_task`), from their format files.
pub fn offsets(tracefs: &Path) -> Result<TracepointOffsets, TracefsError> {
    let path = tracefs.join("events/sched/sched_process_fork/format");
    if !path.exists() {
        return Err(TracefsError::MissingEvent(
            "sched:sched_process_fork",
            tracefs.to_owned(),
        ));
    }
    let text = fs::read_to_string(&path).map_err(|e| TracefsError::Read(path.clone(), e))?;
    let field = |field: &'static str| {
        field_offset(&text, field).ok_or_else(|| TracefsError::MissingField {
            field,
            path: path.clone(),
        })
    };
    let sig_path = tracefs.join("events/signal/signal_generate/format");
    let sig_text =
        fs::read_to_string(&sig_path).map_err(|e| TracefsError::Read(sig_path.clone(), e))?;
    let sig_field = |field: &'static str| {
        field_offset(&sig_text, field).ok_or_else(|| TracefsError::MissingField {
            field,
            path: sig_path.clone(),
        })
    };
    let sw_path = tracefs.join("events/sched/sched_switch/format");
    let sw_text =
        fs::read_to_string(&sw_path).map_err(|e| TracefsError::Read(sw_path.clone(), e))?;
    let sw_field = |field: &'static str| {
        field_offset(&sw_text, field).ok_or_else(|| TracefsError::MissingField {
            field,
            path: sw_path.clone(),
        })
    };
    let wk_path = tracefs.join("events/sched/sched_wakeup/format");
    let wk_text =
        fs::read_to_string(&wk_path).map_err(|e| TracefsError::Read(wk_path.clone(), e))?;
    let wakeup_pid = field_offset(&wk_text, "pid").ok_or_else(|| TracefsError::MissingField {
        field: "pid",
        path: wk_path.clone(),
    })?;
    // Only read with --cgroup; a kernel without the event (no cgroups) keeps the defaults and
    // fails when that program is attached, with the tracepoint's name.
    let at_path = tracefs.join("events/cgroup/cgroup_attach_task/format");
    let at_text = fs::read_to_string(&at_path).unwrap_or_default();
    let at_field = |field: &str, default: u32| field_offset(&at_text, field).unwrap_or(default);
    Ok(TracepointOffsets {
        wakeup_pid,
        attach_dst_root: at_field("dst_root", 8),
        attach_dst_id: at_field("dst_id", 16),
        attach_pid: at_field("pid", 24),
        _pad: 0,
        switch_prev_state: sw_field("prev_state")?,
        switch_next_pid: sw_field("next_pid")?,
        fork_parent_pid: field("parent_pid")?,
        fork_child_pid: field("child_pid")?,
        signal_sig: sig_field("sig")?,
        signal_pid: sig_field("pid")?,
    })
}

/// `field:pid_t child_pid; offset:20; size:4; signed:1;` (tab-separated) → 20
fn field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
        let ident = decl.rsplit([' ', '*']).next()?;
        if ident != name {
            return None;
        }
        let off = line.split("offset:").nth(1)?.split(';').next()?;
        off.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_format_offsets() {
        let f = "name: sched_process_fork\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(f, "parent_pid"), Some(12));
        assert_eq!(field_offset(f, "child_pid"), Some(20));
        assert_eq!(field_offset(f, "parent_comm"), Some(8));
        assert_eq!(field_offset(f, "nope"), None);
    }
}
