//! Stack captures of slow requests while they run: the watchdog decides, the worker reads (on
//! the stack resolver thread, `crate::symbols`).

pub mod ehframe;
pub mod eventloop;
pub mod procinfo;
pub mod unwind;
pub mod watchdog;
pub mod worker;
