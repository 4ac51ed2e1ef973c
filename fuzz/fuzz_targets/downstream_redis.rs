//! The redis recognizer and command decoder (model/downstream/redis.rs) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slowtrace::model::downstream::Protocol;

fuzz_target!(|data: &[u8]| slowtrace_fuzz::downstream(Protocol::Redis, data));
