//! Raw ring-buffer records → typed records. No logic beyond checking the size.

use tracer_common::RequestRecord;

#[derive(Debug, thiserror::Error)]
#[error("ring-buffer record of {0} bytes is too short for a request record")]
pub struct ShortRecord(usize);

pub fn decode(bytes: &[u8]) -> Result<RequestRecord, ShortRecord> {
    if bytes.len() < std::mem::size_of::<RequestRecord>() {
        return Err(ShortRecord(bytes.len()));
    }
    // SAFETY: length checked; RequestRecord is plain data valid for any bit pattern, and the
    // ring buffer gives no alignment guarantee beyond 8, hence read_unaligned.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RequestRecord>()) })
}

/// A `--handler` call record.
pub fn decode_handler(bytes: &[u8]) -> Result<tracer_common::HandlerRecord, ShortRecord> {
    if bytes.len() < std::mem::size_of::<tracer_common::HandlerRecord>() {
        return Err(ShortRecord(bytes.len()));
    }
    // SAFETY: length checked; plain data valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<tracer_common::HandlerRecord>()) })
}

/// A downstream exchange.
pub fn decode_downstream(bytes: &[u8]) -> Result<tracer_common::DownstreamRecord, ShortRecord> {
    if bytes.len() < std::mem::size_of::<tracer_common::DownstreamRecord>() {
        return Err(ShortRecord(bytes.len()));
    }
    // SAFETY: length checked; plain data valid for any bit pattern.
    Ok(unsafe {
        std::ptr::read_unaligned(bytes.as_ptr().cast::<tracer_common::DownstreamRecord>())
    })
}

/// A profiling sample.
pub fn decode_profile(bytes: &[u8]) -> Result<tracer_common::ProfileRecord, ShortRecord> {
    if bytes.len() < std::mem::size_of::<tracer_common::ProfileRecord>() {
        return Err(ShortRecord(bytes.len()));
    }
    // SAFETY: length checked; plain data valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<tracer_common::ProfileRecord>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short() {
        let mut r = RequestRecord::zeroed();
        r.tgid = 42;
        r.req_len = 3;
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&r as *const RequestRecord).cast::<u8>(),
                std::mem::size_of_val(&r),
            )
        };
        let back = decode(bytes).unwrap();
        assert_eq!((back.tgid, back.req_len), (42, 3));
        assert!(decode(&bytes[..10]).is_err());
    }
}
