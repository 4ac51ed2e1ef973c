//! What /proc says about a thread right now: scheduler state, the syscall it is in, its kernel
//! stack. Cheap reads that need no stack walking and work for blocked threads.

use std::fs;

use crate::model::slow::Frame;

/// `running`, `runnable` or `blocked` from /proc/PID/task/TID/stat. Linux reports both running and
/// runnable as `R`; `on_cpu` (from the kernel's own view, /proc/.../syscall saying "running")
/// tells them apart.
pub fn state(pid: u32, tid: u32) -> Option<&'static str> {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(match rest.split_whitespace().next()? {
        "R" => "running",
        "S" | "D" | "I" => "blocked",
        "T" | "t" => "stopped",
        "Z" | "X" => "exited",
        _ => "unknown",
    })
}

/// The syscall a blocked thread is in and its user program counter, from /proc/.../syscall
/// ("nr a1 .. a6 sp pc"; "running" when on a CPU in user space).
pub fn syscall(pid: u32, tid: u32) -> Option<(i64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    parse_syscall(&text)
}

fn parse_syscall(text: &str) -> Option<(i64, u64)> {
    let f: Vec<&str> = text.split_whitespace().collect();
    let nr: i64 = f.first()?.parse().ok()?;
    let pc = u64::from_str_radix(f.last()?.trim_start_matches("0x"), 16).ok()?;
    Some((nr, pc))
}

/// Kernel stack of a thread as the kernel prints it (root only), innermost first.
pub fn kernel_stack(pid: u32, tid: u32) -> Vec<Frame> {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack"))
        .unwrap_or_default()
        .lines()
        .filter_map(parse_kstack_line)
        .collect()
}

/// `[<0>] do_nanosleep+0x6d/0x1a0` → `do_nanosleep`
fn parse_kstack_line(line: &str) -> Option<Frame> {
    let sym = line.split_once("] ")?.1.trim();
    let name = sym.split('+').next()?.trim();
    (!name.is_empty()).then(|| Frame {
        function: name.to_owned(),
        file: None,
        line: None,
        module: None,
    })
}

/// x86-64 syscall names for the calls a server blocks in.
pub fn syscall_name(nr: i64) -> String {
    let name = match nr {
        0 => "read",
        1 => "write",
        7 => "poll",
        17 => "pread64",
        18 => "pwrite64",
        19 => "readv",
        20 => "writev",
        23 => "select",
        34 => "pause",
        35 => "nanosleep",
        40 => "sendfile",
        42 => "connect",
        43 => "accept",
        44 => "sendto",
        45 => "recvfrom",
        46 => "sendmsg",
        47 => "recvmsg",
        61 => "wait4",
        72 => "fcntl",
        73 => "flock",
        74 => "fsync",
        202 => "futex",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        257 => "openat",
        270 => "pselect6",
        271 => "ppoll",
        281 => "epoll_pwait",
        288 => "accept4",
        441 => "epoll_pwait2",
        -1 => return "none (in kernel, not in a syscall)".to_owned(),
        _ => return format!("syscall {nr}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_syscall_and_stack() {
        assert_eq!(
            parse_syscall("230 0x1 0x0 0x7ffd 0x0 0x0 0x0 0x7ffd5a0 0x7f12ab34\n"),
            Some((230, 0x7f12ab34))
        );
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(
            parse_kstack_line("[<0>] do_nanosleep+0x6d/0x1a0")
                .unwrap()
                .function,
            "do_nanosleep"
        );
        assert_eq!(syscall_name(230), "clock_nanosleep");
        assert_eq!(syscall_name(9999), "syscall 9999");
    }

    #[test]
    fn own_thread_state() {
        // SAFETY: plain syscall. The test's own thread is on a CPU while it asks.
        let tid = unsafe { libc::gettid() } as u32;
        assert_eq!(state(std::process::id(), tid), Some("running"));
    }
}
