//! A kernel sample → one merged stack of named frames. Runs on the stack resolver thread
//! (`crate::symbols`), which owns the symbols and the Python readers it needs.

use tracer_common::{
    profile::{py_status, sample_kind},
    ProfileRecord,
};

use super::merge::{self, PyRaw};
use crate::{
    model::profile::{FrameInfo, FrameKind},
    symbols::{Resolver, Taken},
};

/// The sample's frames, root to leaf (without the endpoint).
pub fn stack(res: &mut Resolver, r: &ProfileRecord) -> Vec<FrameInfo> {
    let pid = r.tgid;
    // Not Python as far as the kernel knows, or a process the kernel knows as Python but we
    // do not (a forked worker: the kernel copied its parent's layout, and we need its code
    // objects). Probing is rate-limited per process.
    if r.py_status == py_status::NOT_PYTHON || !res.is_python(pid) {
        res.probe(pid);
    }
    let ips: Vec<u64> = r.user[..frames(r.user_len, r.user.len())]
        .iter()
        .copied()
        .take_while(|ip| *ip != 0)
        .collect();
    let user = res.native(pid, &ips);
    let taken = if r.kind == sample_kind::OFF_CPU {
        Taken::SwitchedOut
    } else {
        Taken::Sampled
    };
    let kern = res.kernel(&r.kern[..frames(r.kern_len, r.kern.len())], taken);
    let py = python(res, r);
    let mut out = merge::merge(&user, &py, &kern);
    if r.kind == sample_kind::OFF_CPU && r.state & 0xff == 0 {
        // Switched out while runnable: preempted, then waiting for a CPU.
        out.push(FrameInfo::new(
            FrameKind::Marker,
            "[runnable: waiting for a CPU]",
        ));
    }
    if r.py_status == py_status::TRUNCATED {
        out.insert(
            0,
            FrameInfo::new(FrameKind::Marker, "[deeper python frames cut]"),
        );
    }
    out
}

fn python(res: &mut Resolver, r: &ProfileRecord) -> Vec<PyRaw> {
    let n = (r.py_n as usize).min(r.py.len());
    if n == 0 {
        return Vec::new();
    }
    let raw: Vec<(u64, u64)> = r.py[..n].iter().map(|f| (f.code, f.instr)).collect();
    res.python_frames(r.tgid, &raw)
        .into_iter()
        .zip(&r.py_flags[..n])
        .map(|(frame, &flags)| PyRaw { frame, flags })
        .collect()
}

/// Frames `bpf_get_stack` wrote (it returns bytes, or a negative error), zeros trimmed.
fn frames(len: i32, cap: usize) -> usize {
    usize::try_from(len).map_or(0, |b| (b / 8).min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An on-CPU sample of `pid` with a one-frame user stack.
    fn sample(pid: u32, ip: u64) -> ProfileRecord {
        let mut r = ProfileRecord::zeroed();
        r.kind = sample_kind::ON_CPU;
        r.tgid = pid;
        r.tid = pid;
        r.user[0] = ip;
        r.user_len = 8;
        r
    }

    #[inline(never)]
    fn marker_function() -> u64 {
        marker_function as fn() -> u64 as usize as u64
    }

    /// A native-only sample: one frame, named, no markers.
    #[test]
    fn a_native_sample_is_one_named_frame() {
        let mut res = Resolver::new(None);
        let frames = stack(&mut res, &sample(std::process::id(), marker_function()));
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert!(frames[0].name.contains("marker_function"), "{frames:?}");
        assert_eq!(frames[0].kind, FrameKind::Native);
    }
}
