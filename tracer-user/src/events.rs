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

    /// One fuzz input of fuzz/fuzz_targets/records.rs: a flags byte, then each record as its
    /// type, its length (u16) and its bytes.
    fn fuzz_input(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0u8];
        for (kind, bytes) in records {
            out.push(*kind);
            out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Writes the seeds of fuzz/corpus/records: a Django request on a keep-alive connection
    /// with the Redis and PostgreSQL calls it made, a handler call and a profiling sample.
    /// `cargo test -p tracer-user -- --ignored write_records_seeds`
    #[test]
    #[ignore = "writes fuzz/corpus/records; run by hand"]
    fn write_records_seeds() {
        use tracer_common::{DownstreamRecord, HandlerRecord, ProfileRecord};
        let mut r = RequestRecord::zeroed();
        (r.tgid, r.tid, r.fd, r.conn_id, r.seq) = (4242, 4243, 9, 77, 1);
        (r.local_port, r.peer_family, r.peer_port) = (8000, 2, 51234);
        r.peer_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.comm[..8].copy_from_slice(b"gunicorn");
        let line = b"GET /api/users/42?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n";
        r.req[..line.len()].copy_from_slice(line);
        r.req_len = line.len() as u16;
        let status = b"HTTP/1.1 200 OK\r\nContent-Type: t";
        r.resp[..status.len()].copy_from_slice(status);
        r.resp_len = status.len() as u16;
        (r.start_ns, r.resp_ns, r.end_ns) = (1_000_000_000, 1_004_000_000, 1_004_100_000);
        (r.bytes_in, r.bytes_out) = (line.len() as u64, 1234);
        r.end_reason = tracer_common::EndReason::NextRequest as u8;
        r.sched[0] = 2_500_000;
        let call = |ds_conn_id: u64, port: u16, msg: &[u8], greeting: &[u8]| {
            // SAFETY: plain data, all-zero is valid.
            let mut d: DownstreamRecord = unsafe { std::mem::zeroed() };
            (d.tgid, d.tid, d.fd, d.ds_conn_id) = (4242, 4243, 11, ds_conn_id);
            (d.start_ns, d.resp_ns) = (1_001_000_000, 1_001_200_000);
            (d.req_conn_id, d.req_seq, d.req_fd, d.family, d.port) = (77, 1, 9, 2, port);
            d.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
            d.req[..msg.len()].copy_from_slice(msg);
            d.req_len = msg.len() as u16;
            d.greeting[..greeting.len()].copy_from_slice(greeting);
            d.greeting_len = greeting.len() as u8;
            encode(&d)
        };
        let redis = call(
            5,
            6379,
            b"*2\r\n$3\r\nGET\r\n$15\r\nuser:42:profile\r\n",
            b"",
        );
        let pg = call(6, 5432, b"Q\0\0\0\x1dSELECT 1 FROM t WHERE id = 4\0", b"");
        // SAFETY: plain data, all-zero is valid.
        let mut h: HandlerRecord = unsafe { std::mem::zeroed() };
        (h.tgid, h.tid, h.start_ns, h.end_ns, h.conn_id, h.seq) = (4242, 4243, 1, 9, 77, 1);
        h.req[..line.len()].copy_from_slice(line);
        h.req_len = line.len() as u32;
        let mut p = ProfileRecord::zeroed();
        (p.tgid, p.tid, p.conn_id, p.seq, p.user_len, p.py_n) = (4242, 4243, 77, 1, 16, 1);
        p.user[..2].copy_from_slice(&[0x5555_0000_1000, 0x5555_0000_2000]);
        p.req[..line.len()].copy_from_slice(line);
        p.req_len = line.len() as u32;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/records");
        std::fs::create_dir_all(&dir).unwrap();
        let seeds = [
            ("request", fuzz_input(&[(0, encode(&r))])),
            (
                "request-with-calls",
                fuzz_input(&[(1, redis.clone()), (1, pg), (1, redis), (0, encode(&r))]),
            ),
            ("handler", fuzz_input(&[(2, encode(&h))])),
            ("sample", fuzz_input(&[(3, encode(&p))])),
            ("short", fuzz_input(&[(0, encode(&r)[..40].to_vec())])),
        ];
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
