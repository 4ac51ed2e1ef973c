//! Frames that belong to how a stack was taken, not to the thread: cut before anyone sees them.

use crate::model::slow::Frame;

/// How a kernel stack was taken, which decides what its innermost frames are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// By the on-CPU perf-event sampler (timer interrupt, perf and BPF frames on top).
    Sampled,
    /// At a switch-out, by the sched_switch tracepoint program, called from the scheduler.
    SwitchedOut,
}

/// The kernel frames of a stack taken as `taken`, without the taking.
pub fn kernel_frames(frames: Vec<Frame>, taken: Taken) -> Vec<Frame> {
    match taken {
        Taken::Sampled => without_probe_frames(frames),
        Taken::SwitchedOut => without_tracepoint_frames(frames),
    }
}

/// The innermost kernel frames of a sample are the sampling machinery itself (our BPF program,
/// the tracepoint or perf-event path, the timer interrupt): drop everything up to the last of
/// them. A sample taken while the thread ran in user space has nothing left, as it should.
pub fn without_probe_frames(frames: Vec<Frame>) -> Vec<Frame> {
    const MACHINERY: &[&str] = &[
        "bpf_",
        "__bpf_",
        "__traceiter_",
        "perf_",
        "__perf_",
        "asm_sysvec_",
        "sysvec_",
        "__sysvec_",
        "hrtimer_",
    ];
    without_frames_up_to_last(frames, MACHINERY)
}

/// Off CPU the stack ends in our tracepoint program, called from the scheduler: drop that
/// part only (the timer and sleep frames under it, `hrtimer_nanosleep` among them, are where
/// the thread waits).
fn without_tracepoint_frames(frames: Vec<Frame>) -> Vec<Frame> {
    without_frames_up_to_last(
        frames,
        &["bpf_", "__bpf_", "__traceiter_", "trace_call_bpf"],
    )
}

/// Drop every frame up to (and including) the last one whose name starts with one of
/// `prefixes`: the innermost frames that belong to how the stack was taken, not to the thread.
fn without_frames_up_to_last(frames: Vec<Frame>, prefixes: &[&str]) -> Vec<Frame> {
    let cut = frames
        .iter()
        .rposition(|f| prefixes.iter().any(|m| f.function.starts_with(m)))
        .map_or(0, |i| i + 1);
    frames.into_iter().skip(cut).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> Frame {
        Frame {
            function: name.into(),
            file: None,
            line: None,
            module: None,
        }
    }

    fn names(v: Vec<Frame>) -> Vec<String> {
        v.into_iter().map(|x| x.function).collect()
    }

    #[test]
    fn probe_frames_are_dropped() {
        let off = vec![
            f("bpf_prog_09a9_off_cpu"),
            f("bpf_trace_run4"),
            f("__traceiter_sched_switch"),
            f("__schedule"),
            f("schedule"),
            f("do_nanosleep"),
        ];
        let names = names(without_probe_frames(off));
        assert_eq!(names, ["__schedule", "schedule", "do_nanosleep"]);
        let in_user = vec![
            f("bpf_prog_x"),
            f("perf_swevent_hrtimer"),
            f("asm_sysvec_apic_timer_interrupt"),
        ];
        assert!(without_probe_frames(in_user).is_empty());
    }

    #[test]
    fn a_switch_out_keeps_the_timer_the_thread_sleeps_in() {
        let off = vec![
            f("bpf_prog_09a9_off_cpu"),
            f("__traceiter_sched_switch"),
            f("__schedule"),
            f("schedule"),
            f("do_nanosleep"),
            f("hrtimer_nanosleep"),
            f("__x64_sys_clock_nanosleep"),
        ];
        assert_eq!(
            names(kernel_frames(off, Taken::SwitchedOut)),
            [
                "__schedule",
                "schedule",
                "do_nanosleep",
                "hrtimer_nanosleep",
                "__x64_sys_clock_nanosleep"
            ]
        );
    }
}
