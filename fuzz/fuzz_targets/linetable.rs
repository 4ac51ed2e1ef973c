//! CPython line tables (python/linetable.rs), every format, the 3.11+ decoder checked against
//! its reference.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| slowtrace::python::fuzz::linetable(data));
