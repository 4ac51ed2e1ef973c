//! The pure part of the agent: kernel records in, requests and statistics out. No I/O here, so
//! every piece is driven by synthetic input in unit tests.

pub mod breakdown;
pub mod downstream;
pub mod endpoints;
pub mod handler;
pub mod http;
pub mod ids;
pub mod profile;
pub mod request;
pub mod route;
pub mod slow;
pub mod tracker;

pub use endpoints::Endpoints;
pub use request::{Context, Request};
pub use tracker::Tracker;
