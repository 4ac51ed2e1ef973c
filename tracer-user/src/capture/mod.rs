//! Stack captures of slow requests while they run: the watchdog decides, the worker reads.

pub mod procinfo;
pub mod python;
pub mod symbols;
pub mod watchdog;
pub mod worker;
