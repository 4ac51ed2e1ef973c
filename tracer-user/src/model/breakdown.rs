//! A request's time, split by what its serving thread was doing: the kernel adds up the
//! intervals (tracer-common's `sched`), this turns them into the parts users read, adding the
//! on-CPU segment that was still running when the request ended.

use serde::Serialize;
use tracer_common::{sched, RequestRecord};

use super::downstream::findings;

/// The parts of one request's duration, in µs (`requests.jsonl` field `breakdown`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Breakdown {
    pub on_cpu_us: u64,
    pub runqueue_us: u64,
    pub downstream_us: u64,
    pub disk_us: u64,
    pub lock_us: u64,
    pub sleep_us: u64,
    pub other_us: u64,
    /// Duration minus the sum of the parts: what the scheduler view did not see (time before
    /// slowtrace attached, a serving thread other than the one that read the request). Negative
    /// when the parts overlap the end.
    pub unaccounted_us: i64,
    /// Times the serving thread left the CPU during the request.
    pub switches: u64,
}

impl Breakdown {
    /// From a finished request record; `end_ns` is the request's end as user space decided it.
    pub fn from_record(r: &RequestRecord, end_ns: u64) -> Self {
        let s = &r.sched;
        // The thread is on CPU at the end (it writes the response): its last segment runs from
        // its last return to the CPU (or the start) to the end.
        let ran_from = r.sched_last_in.max(r.start_ns).max(r.sched_last_out);
        // Saturating: the sums come from a record, and a torn or corrupt one (the fuzzer's) must
        // not overflow (a panic in debug builds, wrapped nonsense in release).
        let on_cpu_ns = s[sched::ON_CPU].saturating_add(end_ns.saturating_sub(ran_from));
        let parts_ns = [
            sched::RUNQUEUE,
            sched::DOWNSTREAM,
            sched::DISK,
            sched::LOCK,
            sched::SLEEP,
            sched::OTHER,
        ]
        .iter()
        .fold(on_cpu_ns, |sum, &part| sum.saturating_add(s[part]));
        let duration_ns = end_ns.saturating_sub(r.start_ns);
        Self {
            on_cpu_us: on_cpu_ns / 1000,
            runqueue_us: s[sched::RUNQUEUE] / 1000,
            downstream_us: s[sched::DOWNSTREAM] / 1000,
            disk_us: s[sched::DISK] / 1000,
            lock_us: s[sched::LOCK] / 1000,
            sleep_us: s[sched::SLEEP] / 1000,
            other_us: s[sched::OTHER] / 1000,
            unaccounted_us: ((i128::from(duration_ns) - i128::from(parts_ns)) / 1000) as i64,
            switches: s[sched::SWITCHES],
        }
    }

    /// The form the findings take.
    pub fn for_findings(&self, duration_us: u64) -> findings::Breakdown {
        findings::Breakdown {
            total_ns: duration_us * 1000,
            on_cpu_ns: self.on_cpu_us * 1000,
            runqueue_ns: self.runqueue_us * 1000,
            downstream_ns: self.downstream_us * 1000,
            disk_ns: self.disk_us * 1000,
            lock_ns: self.lock_us * 1000,
            sleep_ns: self.sleep_us * 1000,
            other_ns: self.other_us * 1000,
        }
    }

    /// Names of the parts, in the order of [`parts`](Self::parts).
    pub const LABELS: [&'static str; 7] = [
        "cpu",
        "runq",
        "downstream",
        "disk",
        "lock",
        "sleep",
        "other",
    ];

    /// (label, µs) of the parts, for bars and summaries.
    pub fn parts(&self) -> [(&'static str, u64); 7] {
        let us = [
            self.on_cpu_us,
            self.runqueue_us,
            self.downstream_us,
            self.disk_us,
            self.lock_us,
            self.sleep_us,
            self.other_us,
        ];
        std::array::from_fn(|i| (Self::LABELS[i], us[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_add_up_with_the_last_segment() {
        let mut r = RequestRecord::zeroed();
        r.start_ns = 1_000_000;
        // ran 2 ms, blocked on a lock 5 ms, waited 1 ms for a CPU, then ran to the end.
        r.sched[sched::ON_CPU] = 2_000_000;
        r.sched[sched::LOCK] = 5_000_000;
        r.sched[sched::RUNQUEUE] = 1_000_000;
        r.sched[sched::SWITCHES] = 1;
        r.sched_last_in = 9_000_000;
        let b = Breakdown::from_record(&r, 12_000_000);
        assert_eq!(
            (b.on_cpu_us, b.lock_us, b.runqueue_us, b.unaccounted_us),
            (5_000, 5_000, 1_000, 0)
        );
        let f = b.for_findings(11_000);
        assert_eq!(f.lock_ns, 5_000_000);
    }

    /// Found by fuzzing (fuzz/fuzz_targets/records.rs): parts summing past u64::MAX overflowed.
    #[test]
    fn a_corrupt_record_saturates_instead_of_overflowing() {
        let mut r = RequestRecord::zeroed();
        r.start_ns = 100;
        r.sched[sched::ON_CPU] = u64::MAX - 5;
        r.sched[sched::LOCK] = u64::MAX;
        let b = Breakdown::from_record(&r, 3_000_100);
        assert_eq!(b.lock_us, u64::MAX / 1000);
        assert!(b.unaccounted_us < 0, "{}", b.unaccounted_us);
    }

    #[test]
    fn a_thread_that_never_left_was_on_cpu_throughout() {
        let mut r = RequestRecord::zeroed();
        r.start_ns = 100;
        let b = Breakdown::from_record(&r, 3_000_100);
        assert_eq!((b.on_cpu_us, b.unaccounted_us, b.switches), (3_000, 0, 0));
    }
}
