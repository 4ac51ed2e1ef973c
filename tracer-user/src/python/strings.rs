//! Decoding `str` and `bytes` objects from raw remote bytes.
//!
//! Code-object names and file names are compact unicode objects: the characters follow the
//! header in the same allocation — right after `PyASCIIObject` when the string is ASCII, after
//! `PyCompactUnicodeObject` otherwise, stored 1, 2 or 4 bytes per character ("kind"). The header
//! sizes differ per version (3.11 still has `wstr`), so they come from the [`Layout`].

use super::{layout::Layout, memory::Fields as _};

/// Longest string we copy, in bytes of the target's representation; longer ones are cut and end
/// in "...". A name or path longer than this is not worth a second read.
pub const MAX_STRING_BYTES: usize = 1024;
/// Longest location table we copy (a 64 KiB table is a function of several thousand lines).
pub const MAX_LINETABLE_BYTES: usize = 64 * 1024;

/// `PyASCIIObject.state` bits (the same in 3.11–3.13: interned:2, kind:3, compact:1, ascii:1).
const STATE_KIND_SHIFT: u32 = 2;
const STATE_KIND_MASK: u32 = 7;
const STATE_COMPACT: u32 = 1 << 5;
const STATE_ASCII: u32 = 1 << 6;

/// Why a remote object did not decode. Garbage here usually means the object was freed and its
/// memory reused between two reads.
#[derive(Debug, PartialEq, Eq)]
pub enum BadObject {
    /// Fewer bytes than the header.
    Short,
    /// A length or kind no live object has.
    Implausible,
    /// Not a compact string (legacy `PyUnicode_FromUnicode`-style objects, gone from 3.12, never
    /// used for code objects' names).
    NotCompact,
}

/// Where the characters of a string are and how to decode them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrData {
    /// Offset of the first character from the object's address.
    pub offset: u64,
    /// Bytes to copy (already capped at [`MAX_STRING_BYTES`]).
    pub len: usize,
    /// Bytes per character: 1, 2 or 4.
    pub kind: u8,
    /// The string was longer than what we copy.
    pub truncated: bool,
}

/// Parse a unicode object's header from the first bytes of the object.
pub fn unicode_header(head: &[u8], l: &Layout) -> Result<StrData, BadObject> {
    let length = head
        .u64_at(l.unicode_length as usize)
        .ok_or(BadObject::Short)? as i64;
    let state = head
        .u32_at(l.unicode_state as usize)
        .ok_or(BadObject::Short)?;
    let kind = (state >> STATE_KIND_SHIFT) & STATE_KIND_MASK;
    if !(0..1 << 30).contains(&length) || !matches!(kind, 1 | 2 | 4) {
        return Err(BadObject::Implausible);
    }
    if state & STATE_COMPACT == 0 {
        return Err(BadObject::NotCompact);
    }
    let ascii = state & STATE_ASCII != 0;
    if ascii && kind != 1 {
        return Err(BadObject::Implausible);
    }
    let offset = if ascii { l.ascii_size } else { l.compact_size };
    let full = length as usize * kind as usize;
    // Cut on a character boundary.
    let len = full.min(MAX_STRING_BYTES / kind as usize * kind as usize);
    Ok(StrData {
        offset,
        len,
        kind: kind as u8,
        truncated: len < full,
    })
}

/// Decode the characters. A lone surrogate (legal in a Python `str`) becomes U+FFFD.
pub fn decode(data: &[u8], s: StrData) -> String {
    let mut out: String = match s.kind {
        // UCS1 is Latin-1 (ASCII being its subset): each byte is its own code point.
        1 => data.iter().map(|&b| char::from(b)).collect(),
        2 => data
            .chunks_exact(2)
            .map(|c| {
                char::from_u32(u32::from(u16::from_le_bytes([c[0], c[1]])))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        _ => data
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    };
    if s.truncated {
        out.push_str("...");
    }
    out
}

/// Decode a whole unicode object if `obj` (read from its address) holds all its characters;
/// `Ok(Err(n))`: a complete read needs `n` bytes from the object's start.
pub fn unicode(obj: &[u8], l: &Layout) -> Result<Result<String, usize>, BadObject> {
    let s = unicode_header(obj, l)?;
    let start = s.offset as usize;
    match obj.get(start..start + s.len) {
        Some(data) => Ok(Ok(decode(data, s))),
        None => Ok(Err(start + s.len)),
    }
}

/// A bytes object's contents if `obj` holds them all, else the total length a read needs.
/// Capped at `max` bytes (a longer object is [`BadObject::Implausible`] for our purposes).
pub fn bytes(obj: &[u8], l: &Layout, max: usize) -> Result<Result<Vec<u8>, usize>, BadObject> {
    let size = obj.u64_at(l.bytes_size as usize).ok_or(BadObject::Short)? as i64;
    let size = usize::try_from(size).map_err(|_| BadObject::Implausible)?;
    if size > max {
        return Err(BadObject::Implausible);
    }
    let start = l.bytes_data as usize;
    match obj.get(start..start + size) {
        Some(d) => Ok(Ok(d.to_vec())),
        None => Ok(Err(start + size)),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::python::layout::Layout;

    /// Build the bytes of a compact unicode object as CPython lays it out for `l`.
    pub fn unicode_object(l: &Layout, s: &str) -> Vec<u8> {
        let chars: Vec<u32> = s.chars().map(u32::from).collect();
        let max = chars.iter().copied().max().unwrap_or(0);
        let (kind, ascii) = match max {
            0..=0x7f => (1u32, true),
            0x80..=0xff => (1, false),
            0x100..=0xffff => (2, false),
            _ => (4, false),
        };
        let head = if ascii { l.ascii_size } else { l.compact_size } as usize;
        let mut obj = vec![0u8; head];
        obj[l.unicode_length as usize..][..8].copy_from_slice(&(chars.len() as u64).to_le_bytes());
        let state =
            (kind << STATE_KIND_SHIFT) | STATE_COMPACT | if ascii { STATE_ASCII } else { 0 };
        obj[l.unicode_state as usize..][..4].copy_from_slice(&state.to_le_bytes());
        for c in chars {
            obj.extend_from_slice(&c.to_le_bytes()[..kind as usize]);
        }
        obj.extend_from_slice(&[0; 4]); // terminating NUL, as CPython stores one
        obj
    }

    #[test]
    fn every_kind_in_every_version() {
        for (maj, min) in [(3, 11), (3, 12), (3, 13)] {
            let l = Layout::for_version(maj, min).unwrap();
            for s in [
                "handle_request",
                "",
                "Café.__init__",     // UCS1, not ASCII
                "περίπτωση.λ",       // UCS2
                "emoji_🐍_function", // UCS4
                "/srv/app/views/über.py",
            ] {
                let obj = unicode_object(&l, s);
                assert_eq!(
                    unicode(&obj, &l).unwrap(),
                    Ok(s.to_string()),
                    "{maj}.{min} {s}"
                );
            }
        }
    }

    #[test]
    fn short_read_asks_for_the_rest() {
        let l = Layout::for_version(3, 12).unwrap();
        let obj = unicode_object(&l, "a_rather_long_qualified_name");
        let need = unicode(&obj[..50], &l).unwrap().unwrap_err();
        assert_eq!(need, 40 + 28);
        assert_eq!(
            unicode(&obj[..need], &l).unwrap().unwrap(),
            "a_rather_long_qualified_name"
        );
        assert_eq!(unicode(&obj[..20], &l), Err(BadObject::Short));
    }

    #[test]
    fn long_strings_are_cut_on_a_character() {
        let l = Layout::for_version(3, 13).unwrap();
        let long: String = "ж".repeat(700); // UCS2: 1400 bytes
        let obj = unicode_object(&l, &long);
        let s = unicode_header(&obj, &l).unwrap();
        assert_eq!((s.len, s.kind, s.truncated), (1024, 2, true));
        let got = unicode(&obj, &l).unwrap().unwrap();
        assert_eq!(got, format!("{}...", "ж".repeat(512)));
    }

    #[test]
    fn garbage_is_rejected() {
        let l = Layout::for_version(3, 11).unwrap();
        let mut obj = unicode_object(&l, "x");
        obj[l.unicode_state as usize] = 0x0c | 0x20; // kind 3
        assert_eq!(unicode(&obj, &l), Err(BadObject::Implausible));
        let mut obj = unicode_object(&l, "x");
        obj[l.unicode_length as usize + 7] = 0x80; // negative length
        assert_eq!(unicode(&obj, &l), Err(BadObject::Implausible));
        let mut obj = unicode_object(&l, "x");
        obj[l.unicode_state as usize] &= !0x20; // not compact
        assert_eq!(unicode(&obj, &l), Err(BadObject::NotCompact));
        let mut obj = unicode_object(&l, "ab");
        obj[l.unicode_state as usize] = (2 << 2) | 0x20 | 0x40; // ASCII yet 2 bytes a char
        assert_eq!(unicode(&obj, &l), Err(BadObject::Implausible));
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let s = StrData {
            offset: 0,
            len: 4,
            kind: 2,
            truncated: false,
        };
        assert_eq!(decode(&[0x00, 0xd8, 0x41, 0x00], s), "\u{fffd}A");
    }

    #[test]
    fn bytes_objects() {
        let l = Layout::for_version(3, 12).unwrap();
        let mut obj = vec![0u8; 32];
        obj[16..24].copy_from_slice(&5u64.to_le_bytes());
        obj.extend_from_slice(b"hello\0");
        assert_eq!(bytes(&obj, &l, 100).unwrap(), Ok(b"hello".to_vec()));
        assert_eq!(bytes(&obj[..34], &l, 100).unwrap(), Err(37));
        assert_eq!(bytes(&obj, &l, 4), Err(BadObject::Implausible));
    }
}
