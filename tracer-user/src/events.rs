//! Raw ring-buffer records → typed records. No logic beyond checking the size.

use tracer_common::RequestRecord;

#[derive(Debug, thiserror::Error)]
#[error("ring-buffer record of {got} bytes is too short for a {what} ({need} bytes)")]
pub struct ShortRecord {
    got: usize,
    need: usize,
    what: &'static str,
}

/// A record type the kernel writes to a ring buffer: `#[repr(C)]` plain data, valid for any
/// bit pattern (the `aya::Pod` contract tracer-common's types sign).
pub trait Record: aya::Pod {
    const WHAT: &'static str;
}

impl Record for RequestRecord {
    const WHAT: &'static str = "request record";
}
impl Record for tracer_common::HandlerRecord {
    const WHAT: &'static str = "handler call record";
}
impl Record for tracer_common::DownstreamRecord {
    const WHAT: &'static str = "downstream record";
}
impl Record for tracer_common::ProfileRecord {
    const WHAT: &'static str = "profiling sample";
}

/// Decode one ring-buffer item.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, ShortRecord> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(ShortRecord {
            got: bytes.len(),
            need,
            what: T::WHAT,
        });
    }
    // SAFETY: length checked; T is plain data valid for any bit pattern (`aya::Pod`), and the
    // ring buffer gives no alignment guarantee beyond 8, hence read_unaligned.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The bytes of a record, as the kernel would write them (for the fake kernel of the tests).
#[cfg(test)]
pub fn encode<T: Record>(r: &T) -> Vec<u8> {
    // SAFETY: T is plain data; reading its bytes is always valid.
    unsafe { std::slice::from_raw_parts((r as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short() {
        let mut r = RequestRecord::zeroed();
        r.tgid = 42;
        r.req_len = 3;
        let bytes = encode(&r);
        let back: RequestRecord = decode(&bytes).unwrap();
        assert_eq!((back.tgid, back.req_len), (42, 3));
        let err = decode::<RequestRecord>(&bytes[..10]).unwrap_err();
        assert!(err.to_string().contains("10 bytes"), "{err}");
    }
}
