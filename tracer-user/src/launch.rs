//! `slowtrace record -- CMD`: start the command so that it is a target before it runs a single
//! instruction of its own, so nothing it forks early escapes.
//!
//! `Command::spawn` returns only after exec, so the child cannot simply wait for us after spawn
//! returns. Instead the child, between fork and exec, writes its pid to one pipe and waits on
//! another; a helper thread adds the pid to the targets and releases it.

use std::{
    io,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
};

fn pipe() -> io::Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

fn close(fd: i32) {
    // SAFETY: we own fd.
    unsafe { libc::close(fd) };
}

/// Spawn `prog args`, calling `register(pid)` before the child execs.
///
/// `output`: None leaves the command on our terminal (`record`). Some(file) for when the terminal
/// is not ours to share (`top` draws on it and reads keys from it): the command gets no stdin and
/// writes its stdout and stderr to the file, created private.
pub fn spawn_registered(
    prog: &Path,
    args: &[String],
    output: Option<&Path>,
    register: impl FnOnce(u32) -> anyhow::Result<()> + Send,
) -> anyhow::Result<Child> {
    // Before the pipes, so an error here leaks no descriptor.
    let output = match output {
        Some(path) => {
            let out = crate::sinks::create_private(path)?;
            Some((out.try_clone()?, out))
        }
        None => None,
    };
    let (pid_r, pid_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let mut cmd = Command::new(prog);
    cmd.args(args);
    if let Some((out, err)) = output {
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    }
    // SAFETY: only async-signal-safe calls (getpid, write, read) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Our copies of the parent's ends, or EOF on `go_r` could never come.
            libc::close(go_w);
            libc::close(pid_r);
            let pid = libc::getpid();
            let bytes = pid.to_ne_bytes();
            if libc::write(pid_w, bytes.as_ptr().cast(), bytes.len()) != bytes.len() as isize {
                return Err(io::Error::last_os_error());
            }
            let mut go = 0u8;
            if libc::read(go_r, (&raw mut go).cast(), 1) != 1 {
                return Err(io::Error::other("slowtrace did not release the command"));
            }
            Ok(())
        });
    }
    let result = std::thread::scope(|s| {
        let helper = s.spawn(move || -> anyhow::Result<()> {
            let mut buf = [0u8; 4];
            // SAFETY: reading into a local buffer.
            let n = unsafe { libc::read(pid_r, buf.as_mut_ptr().cast(), buf.len()) };
            if n != 4 {
                close(go_w);
                anyhow::bail!("the command did not start");
            }
            let res = register(i32::from_ne_bytes(buf) as u32);
            if res.is_ok() {
                // SAFETY: writing one byte from a local.
                unsafe { libc::write(go_w, [1u8].as_ptr().cast(), 1) };
            }
            // On failure the child reads EOF and its exec is abandoned.
            close(go_w);
            res
        });
        let child = cmd.spawn();
        // Whatever happened, let the helper see EOF before joining it.
        close(pid_w);
        close(go_r);
        let registered = helper
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("helper panicked")));
        (child, registered)
    });
    close(pid_r);
    match result {
        (Ok(child), Ok(())) => Ok(child),
        (Err(e), _) => Err(anyhow::anyhow!("starting {}: {e}", prog.display())),
        (Ok(mut child), Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}
