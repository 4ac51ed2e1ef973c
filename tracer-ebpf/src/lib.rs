#![no_std]
//! The kernel programs are the `tracer` binary (src/main.rs), built for bpfel-unknown-none by
//! tracer-user/build.rs. This empty library only lets tracer-user name the crate as a
//! build-dependency so cargo rebuilds it when the programs change.
