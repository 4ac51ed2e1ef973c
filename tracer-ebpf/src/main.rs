//! slowtrace's kernel programs: rebuild requests on served sockets from syscall tracepoints.
//!
//! * `sys_enter_*` programs check the process is a target and that the fd is a tracked connection,
//!   then stash the arguments per thread; one `sys_exit_io` program, attached to every exit, finishes
//!   the syscall with its return value and drives the connection state machine in `tracer-common`.
//! * One ring-buffer record per request, written when the request ends.
//! * Targets follow forks (`sched_process_fork`) and binds of watched ports (`sys_enter_bind`).
#![no_std]
#![no_main]

mod capture;
mod downstream;
mod handlers;
pub mod io;
mod maps;
mod procs;
mod profile;
mod pywalk;
mod sched;
mod sock;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach this; the loop only satisfies the type.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
