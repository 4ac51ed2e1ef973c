//! The HTTP prefix parser and the route normalizer (model/http.rs, route.rs, request.rs
//! endpoint_of): the first byte picks the pipelined request to parse, the rest is the prefix
//! the kernel captured.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slowtrace::model::{
    http::{parse_request, parse_status, Parsed},
    request::{endpoint_of, split_endpoint},
    route::{normalize, redact_query},
};

fuzz_target!(|data: &[u8]| {
    let Some((&index, prefix)) = data.split_first() else {
        return;
    };
    if let Parsed::Http(h) = parse_request(prefix, usize::from(index % 8)) {
        let route = normalize(&h.target);
        assert!(!route.contains(['?', '#']), "{route:?}");
        let redacted = redact_query(&h.target);
        assert!(redacted.len() <= h.target.len() + "[redacted]".len());
    }
    let endpoint = endpoint_of(prefix);
    let (method, route) = split_endpoint(&endpoint);
    assert!(method.len() + route.len() <= endpoint.len());
    let _ = parse_status(prefix);
    let _ = normalize(&String::from_utf8_lossy(prefix));
});
