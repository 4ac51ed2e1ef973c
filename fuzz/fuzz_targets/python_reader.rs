//! The CPython stack reader on adversarial process images (python/fuzz.rs says how the bytes
//! become a process whose pointers loop, leave the image or change between reads).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    slowtrace::python::fuzz::image(data);
});
