//! `cargo xtask echo-load --secs N` (hidden): a loopback TCP echo pair doing small round trips as
//! fast as it can, then printing how many it did.
//!
//! It is the bench's socket-heavy process that is *not* a target of slowtrace: every round trip is
//! two sends, two receives and two wake-ups, so every socket and scheduler program slowtrace
//! attaches runs for it (and must bail out quickly). It runs as its own process so that it is
//! seen by the kernel exactly like any other program on the machine.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// Bytes per message: small, so the syscalls and not the copying dominate.
const MSG: usize = 64;

pub fn run(secs: u64) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    // The echo side: one thread, returns when the client closes.
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; MSG];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n])?;
        }
    });
    let mut client = TcpStream::connect(addr)?;
    client.set_nodelay(true)?;
    let msg = [b'x'; MSG];
    let mut back = [0u8; MSG];
    let limit = Duration::from_secs(secs);
    let start = Instant::now();
    let mut trips = 0u64;
    // Checking the clock every 64 trips keeps its cost out of the loop.
    while !trips.is_multiple_of(64) || start.elapsed() < limit {
        client.write_all(&msg)?;
        client.read_exact(&mut back)?;
        trips += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(client);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))?
        .context("echo server")?;
    println!(
        "echo-load: {trips} round trips in {elapsed:.3} s, {:.0} round trips/s",
        trips as f64 / elapsed
    );
    Ok(())
}

/// (round trips, round trips per second) from the line `run` prints.
pub(crate) fn parse(text: &str) -> Option<(u64, f64)> {
    let line = text.lines().find(|l| l.starts_with("echo-load: "))?;
    let trips = line
        .strip_prefix("echo-load: ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let rate = line
        .rsplit_once(", ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((trips, rate))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_own_output() {
        let t = "echo-load: 123456 round trips in 2.000 s, 61728 round trips/s\n";
        assert_eq!(super::parse(t), Some((123456, 61728.0)));
        assert_eq!(super::parse("nothing"), None);
    }
}
