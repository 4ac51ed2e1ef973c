//! Kernel struct field offsets from the kernel's own BTF (/sys/kernel/btf/vmlinux).
//!
//! Rust eBPF has no CO-RE relocations, so a program that reads a kernel struct field at a fixed
//! offset silently reads garbage on another kernel. Instead user space looks the offsets up here
//! at start-up and hands them to the programs as a global (`tracer_common::KernelOffsets`).
//!
//! aya parses BTF too, but keeps its type table private, so this is a small reader of the parts
//! of the format we need (kernel docs: Documentation/bpf/btf.rst): the header, the type section
//! walked record by record, struct/union members, and the string section. Nothing else.

use std::{collections::HashMap, path::Path};

use tracer_common::KernelOffsets;

const MAGIC: u16 = 0xeb9f;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {0} has no field {1}")]
    NoField(String, String),
    #[error("kernel BTF: {0}.{1} is a bit field not on a byte boundary")]
    BitField(String, String),
}

/// BTF kinds (include/uapi/linux/btf.h).
mod kind {
    pub const INT: u32 = 1;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

#[derive(Debug, Clone, Copy)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset, and bit-field size (0: not a bit field).
    bit_off: u32,
    bits: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// Referenced type (typedef, modifiers).
    ty: u32,
    members: Vec<Member>,
}

/// Parsed type section: enough to find struct members by name.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (big-endian BTF is not supported)",
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_at = hdr_len + type_off;
        let section = data
            .get(types_at..types_at + type_len)
            .ok_or(BtfError::Malformed("type section out of range"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of range"))?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            ty: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < section.len() {
            let name = u32_at(section, at)?;
            let info = u32_at(section, at + 4)?;
            let size_or_type = u32_at(section, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let off = u32_at(section, m + 8)?;
                        let (bit_off, bits) = if kind_flag {
                            (off & 0x00ff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        members.push(Member {
                            name: u32_at(section, m)?,
                            ty: u32_at(section, m + 4)?,
                            bit_off,
                            bits,
                        });
                    }
                    vlen * 12
                }
                kind::ENUM | kind::FUNC_PROTO => vlen * 8,
                kind::DATASEC | kind::ENUM64 => vlen * 12,
                _ => 0,
            };
            at += extra;
            types.push(Type {
                name,
                kind,
                ty: size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            structs: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if (t.kind == kind::STRUCT || t.kind == kind::UNION) && t.name != 0 {
                // The first definition wins; kernel BTF has one per name for the structs we use.
                btf.structs
                    .entry(btf.string(t.name).to_owned())
                    .or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Skip typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = t.ty
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of `field` in the struct or union `t`, looking into anonymous members (the
    /// kernel nests many fields in unnamed unions and structs).
    /// Returns (bit offset, bit-field size, member).
    fn find(&self, t: &Type, field: &str, depth: u32) -> Option<(u32, u32, Member)> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            if m.name != 0 {
                if self.string(m.name) == field {
                    return Some((m.bit_off, m.bits, *m));
                }
                continue;
            }
            let inner = self.resolve(m.ty)?;
            if inner.kind == kind::STRUCT || inner.kind == kind::UNION {
                if let Some((off, bits, found)) = self.find(inner, field, depth + 1) {
                    return Some((m.bit_off + off, bits, found));
                }
            }
        }
        None
    }

    /// Byte offset of `path` (members separated by dots, e.g. `__sk_common.skc_num`) in struct
    /// `name`.
    pub fn offset(&self, name: &str, path: &str) -> Result<u32, BtfError> {
        let no_field = || BtfError::NoField(name.to_owned(), path.to_owned());
        let mut t = self
            .structs
            .get(name)
            .and_then(|&id| self.types.get(id as usize))
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))?;
        let mut bits_total = 0;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (off, bits, member) = self.find(t, part, 0).ok_or_else(no_field)?;
            if bits != 0 && (bits % 8 != 0 || off % 8 != 0) {
                return Err(BtfError::BitField(name.to_owned(), path.to_owned()));
            }
            bits_total += off;
            if parts.peek().is_some() {
                t = self.resolve(member.ty).ok_or_else(no_field)?;
            }
        }
        if bits_total % 8 != 0 {
            return Err(BtfError::BitField(name.to_owned(), path.to_owned()));
        }
        Ok(bits_total / 8)
    }
}

/// Where the running kernel's BTF is.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Every kernel struct offset the programs use.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    Ok(KernelOffsets {
        sk_family: btf.offset("sock_common", "skc_family")?,
        sk_num: btf.offset("sock_common", "skc_num")?,
        sk_dport: btf.offset("sock_common", "skc_dport")?,
        sk_daddr: btf.offset("sock_common", "skc_daddr")?,
        sk_v6_daddr: btf.offset("sock_common", "skc_v6_daddr")?,
        sk_type: btf.offset("sock", "sk_type")?,
        sk_protocol: btf.offset("sock", "sk_protocol")?,
        unix_addr: btf.offset("unix_sock", "addr")?,
        unix_peer: btf.offset("unix_sock", "peer")?,
        unix_name: btf.offset("unix_address", "name")?,
        task_pid: btf.offset("task_struct", "pid")?,
        task_tgid: btf.offset("task_struct", "tgid")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `struct inner { u16 a; u16 b; }` and
    /// `struct outer { u64 x; union { u32 y; struct inner in; }; u16 z; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0inner\0a\0b\0outer\0x\0y\0in\0z\0u16\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int u16
        push(&[s("u16"), kind::INT << 24, 2, 16]);
        // 2: struct inner, 2 members
        push(&[s("inner"), (kind::STRUCT << 24) | 2, 4]);
        push(&[s("a"), 1, 0]);
        push(&[s("b"), 1, 16]);
        // 3: anonymous union { y: u16 (id 1), in: inner (id 2) }
        push(&[0, (kind::UNION << 24) | 2, 4]);
        push(&[s("y"), 1, 0]);
        push(&[s("in"), 2, 0]);
        // 4: struct outer { x at 0, anon union at 64 bits, z at 96 bits (bit field, 16 bits) }
        push(&[s("outer"), (kind::STRUCT << 24) | (1 << 31) | 3, 16]);
        push(&[s("x"), 1, 0]);
        push(&[0, 3, 64]);
        push(&[s("z"), 1, (16 << 24) | 96]);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        out.extend_from_slice(&24u32.to_le_bytes()); // hdr_len
        out.extend_from_slice(&0u32.to_le_bytes()); // type_off
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(&(t.len() as u32).to_le_bytes()); // str_off
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.offset("outer", "y").unwrap(), 8);
        assert_eq!(btf.offset("outer", "in.b").unwrap(), 10);
        assert_eq!(btf.offset("outer", "z").unwrap(), 12);
        assert_eq!(btf.offset("inner", "b").unwrap(), 2);
        assert!(matches!(
            btf.offset("outer", "nope"),
            Err(BtfError::NoField(..))
        ));
        assert!(matches!(
            btf.offset("nope", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn refuses_garbage() {
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    /// The running kernel's BTF (readable without root) has every field we use, at the offsets
    /// struct sock_common has had on 64-bit kernels for years.
    #[test]
    fn this_kernel_has_our_fields() {
        let path = Path::new(VMLINUX);
        if !path.exists() {
            eprintln!("no {VMLINUX}: skipped");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let o = kernel_offsets(&btf).unwrap();
        assert_eq!(o.sk_daddr, 0);
        assert_eq!(o.sk_dport, 12);
        assert_eq!(o.sk_num, 14);
        assert_eq!(o.sk_family, 16);
        assert!(o.task_pid > 0);
    }
}
