//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): struct member
//! offsets, enum values and tracepoint prototypes, which is all tuneprobe needs to adapt
//! its programs to the running kernel without CO-RE.
//!
//! Format: <https://docs.kernel.org/bpf/btf.html>.

use std::{collections::HashMap, path::Path};

/// Where the running kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

// BTF_KIND_* values.
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("kernel BTF has no {kind} named `{name}`")]
    MissingType { kind: &'static str, name: String },
    #[error("kernel BTF: `{ty}` has no field `{field}` (looking up `{path}`)")]
    MissingField {
        ty: String,
        field: String,
        path: String,
    },
    #[error("kernel BTF: `{path}` is a bitfield; tuneprobe reads whole bytes")]
    Bitfield { path: String },
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// Struct or union.
    Composite {
        name: String,
        members: Vec<Member>,
    },
    Enum {
        name: String,
        values: Vec<(String, i64)>,
    },
    /// Typedef and type modifiers: followed through to the type they name.
    Alias {
        name: String,
        type_id: u32,
    },
    Pointer {
        type_id: u32,
    },
    FuncProto {
        params: u32,
    },
    Other,
}

/// Parsed BTF: types by id, plus an index of named structs, enums and typedefs.
#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
    by_name: HashMap<String, Vec<u32>>,
}

/// Where a field sits inside its outermost struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldOffset {
    pub bytes: u32,
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let header = Reader {
            data,
            strings: &[],
            pos: 0,
        };
        if header.u16_at(0)? != MAGIC {
            return Err(malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = header.u32_at(4)? as usize;
        let type_off = header.u32_at(8)? as usize;
        let type_len = header.u32_at(12)? as usize;
        let str_off = header.u32_at(16)? as usize;
        let str_len = header.u32_at(20)? as usize;
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| malformed("string section out of bounds"))?;
        if types_end > data.len() {
            return Err(malformed("type section out of bounds"));
        }

        // Type id 0 is `void`.
        let mut types = vec![Type::Other];
        let mut reader = Reader {
            data,
            strings,
            pos: types_start,
        };
        while reader.pos < types_end {
            types.push(reader.next_type()?);
        }

        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (id, ty) in types.iter().enumerate() {
            let (Type::Composite { name, .. } | Type::Enum { name, .. } | Type::Alias { name, .. }) =
                ty
            else {
                continue;
            };
            if !name.is_empty() {
                by_name.entry(name.clone()).or_default().push(id as u32);
            }
        }
        Ok(Self { types, by_name })
    }

    fn named(&self, name: &str) -> impl Iterator<Item = &Type> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&id| &self.types[id as usize])
    }

    /// Follows typedefs and modifiers (`const`, `volatile`) to the underlying type.
    fn resolve(&self, mut id: u32) -> &Type {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias { type_id, .. }) => id = *type_id,
                Some(ty) => return ty,
                None => return &Type::Other,
            }
        }
        &Type::Other
    }

    fn composite(&self, name: &str) -> Option<&[Member]> {
        // A struct may appear as a forward declaration too; take the definition with members.
        self.named(name).find_map(|ty| match ty {
            Type::Composite { members, .. } if !members.is_empty() => Some(members.as_slice()),
            _ => None,
        })
    }

    /// Byte offset of a dotted field path inside struct `ty`, e.g.
    /// `field_offset("sock", "sk_cgrp_data.cgroup")`. Anonymous structs and unions are
    /// searched transparently, as C does.
    pub fn field_offset(&self, ty: &str, path: &str) -> Result<FieldOffset, BtfError> {
        let (bits, bitfield_size) = self.field_bits(ty, path)?;
        if bitfield_size != 0 || !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield {
                path: format!("{ty}.{path}"),
            });
        }
        Ok(FieldOffset { bytes: bits / 8 })
    }

    /// Where a boolean flag lives: the byte to read and the mask to test. Works for
    /// whole `bool`/`int` fields (low byte) and for one-bit bitfields.
    pub fn flag_location(&self, ty: &str, path: &str) -> Result<(u32, u8), BtfError> {
        let (bits, bitfield_size) = self.field_bits(ty, path)?;
        match bitfield_size {
            0 if bits.is_multiple_of(8) => Ok((bits / 8, 0xff)),
            1 => Ok((bits / 8, 1 << (bits % 8))),
            _ => Err(BtfError::Bitfield {
                path: format!("{ty}.{path}"),
            }),
        }
    }

    /// Bit offset of the field and its bitfield size (0 for a whole field).
    fn field_bits(&self, ty: &str, path: &str) -> Result<(u32, u32), BtfError> {
        let full = format!("{ty}.{path}");
        let mut members = self.composite(ty).ok_or_else(|| BtfError::MissingType {
            kind: "struct",
            name: ty.to_string(),
        })?;
        let mut current = ty.to_string();
        let mut bits = 0u32;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (offset, member) =
                find_member(self, members, part, 0).ok_or_else(|| BtfError::MissingField {
                    ty: current.clone(),
                    field: part.to_string(),
                    path: full.clone(),
                })?;
            bits = bits
                .checked_add(offset)
                .ok_or_else(|| BtfError::Malformed(format!("offset of {full} overflows")))?;
            if parts.peek().is_none() {
                return Ok((bits, member.bitfield_size));
            }
            if member.bitfield_size != 0 {
                return Err(BtfError::Bitfield { path: full });
            }
            match self.resolve(member.type_id) {
                Type::Composite {
                    name,
                    members: inner,
                } => {
                    current = if name.is_empty() {
                        part.to_string()
                    } else {
                        name.clone()
                    };
                    members = inner;
                }
                _ => {
                    return Err(BtfError::MissingField {
                        ty: part.to_string(),
                        field: parts.next().unwrap_or_default().to_string(),
                        path: full,
                    });
                }
            }
        }
        Err(BtfError::MissingField {
            ty: ty.to_string(),
            field: String::new(),
            path: full,
        })
    }

    /// Enumerators of `enum name` (either `ENUM` or `ENUM64`).
    pub fn enum_values(&self, name: &str) -> Result<&[(String, i64)], BtfError> {
        self.named(name)
            .find_map(|ty| match ty {
                Type::Enum { values, .. } if !values.is_empty() => Some(values.as_slice()),
                _ => None,
            })
            .ok_or_else(|| BtfError::MissingType {
                kind: "enum",
                name: name.to_string(),
            })
    }

    /// Value of one enumerator of `enum name`.
    pub fn enum_value(&self, name: &str, enumerator: &str) -> Result<i64, BtfError> {
        self.enum_values(name)?
            .iter()
            .find(|(n, _)| n == enumerator)
            .map(|&(_, v)| v)
            .ok_or_else(|| BtfError::MissingField {
                ty: format!("enum {name}"),
                field: enumerator.to_string(),
                path: format!("{name}::{enumerator}"),
            })
    }

    /// Number of arguments a BTF tracepoint passes to its programs, from the kernel's
    /// `btf_trace_<name>` typedef (its first parameter is the hidden context pointer).
    pub fn tracepoint_args(&self, tracepoint: &str) -> Result<u32, BtfError> {
        let typedef = format!("btf_trace_{tracepoint}");
        let missing = || BtfError::MissingType {
            kind: "tracepoint",
            name: tracepoint.to_string(),
        };
        let id = self
            .by_name
            .get(&typedef)
            .and_then(|ids| ids.first())
            .ok_or_else(missing)?;
        match self.resolve(*id) {
            Type::Pointer { type_id } => match self.resolve(*type_id) {
                Type::FuncProto { params } => Ok(params.saturating_sub(1)),
                _ => Err(missing()),
            },
            _ => Err(missing()),
        }
    }
}

fn malformed(what: &str) -> BtfError {
    BtfError::Malformed(what.to_string())
}

/// A bounds-checked cursor over the type section: every read of a malformed file is an
/// error, never a panic.
struct Reader<'a> {
    data: &'a [u8],
    strings: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u16_at(&self, off: usize) -> Result<u16, BtfError> {
        self.data
            .get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| malformed("truncated header"))
    }

    fn u32_at(&self, off: usize) -> Result<u32, BtfError> {
        self.data
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| malformed("truncated data"))
    }

    fn name_at(&self, off: u32) -> Result<String, BtfError> {
        let rest = self
            .strings
            .get(off as usize..)
            .ok_or_else(|| malformed("name offset out of bounds"))?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    /// One type and its trailing data; what tuneprobe does not look into is `Other`.
    fn next_type(&mut self) -> Result<Type, BtfError> {
        let name = self.name_at(self.u32_at(self.pos)?)?;
        let info = self.u32_at(self.pos + 4)?;
        let size_or_type = self.u32_at(self.pos + 8)?;
        self.pos += 12;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        Ok(match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => {
                self.pos += 4;
                Type::Other
            }
            KIND_ARRAY => {
                self.pos += 12;
                Type::Other
            }
            KIND_STRUCT | KIND_UNION => Type::Composite {
                name,
                members: self.members(vlen, kind_flag)?,
            },
            KIND_ENUM => Type::Enum {
                name,
                values: self.enum_values(vlen, kind_flag)?,
            },
            KIND_ENUM64 => Type::Enum {
                name,
                values: self.enum64_values(vlen)?,
            },
            KIND_FUNC_PROTO => {
                self.pos += 8 * vlen;
                Type::FuncProto {
                    params: vlen as u32,
                }
            }
            KIND_DATASEC => {
                self.pos += 12 * vlen;
                Type::Other
            }
            KIND_PTR => Type::Pointer {
                type_id: size_or_type,
            },
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                Type::Alias {
                    name,
                    type_id: size_or_type,
                }
            }
            // FWD, FUNC, FLOAT: no trailing data.
            _ if kind <= KIND_ENUM64 => Type::Other,
            _ => return Err(BtfError::Malformed(format!("unknown BTF kind {kind}"))),
        })
    }

    /// A struct's or union's members; with `kind_flag` the offset word also holds the
    /// bitfield size.
    fn members(&mut self, vlen: usize, kind_flag: bool) -> Result<Vec<Member>, BtfError> {
        let mut members = Vec::with_capacity(vlen);
        for _ in 0..vlen {
            let offset = self.u32_at(self.pos + 8)?;
            let (bit_offset, bitfield_size) = if kind_flag {
                (offset & 0xff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            members.push(Member {
                name: self.name_at(self.u32_at(self.pos)?)?,
                type_id: self.u32_at(self.pos + 4)?,
                bit_offset,
                bitfield_size,
            });
            self.pos += 12;
        }
        Ok(members)
    }

    /// 32-bit enum values, signed when `kind_flag` says so.
    fn enum_values(&mut self, vlen: usize, signed: bool) -> Result<Vec<(String, i64)>, BtfError> {
        let mut values = Vec::with_capacity(vlen);
        for _ in 0..vlen {
            let raw = self.u32_at(self.pos + 4)?;
            let value = if signed {
                i64::from(raw as i32)
            } else {
                i64::from(raw)
            };
            values.push((self.name_at(self.u32_at(self.pos)?)?, value));
            self.pos += 8;
        }
        Ok(values)
    }

    fn enum64_values(&mut self, vlen: usize) -> Result<Vec<(String, i64)>, BtfError> {
        let mut values = Vec::with_capacity(vlen);
        for _ in 0..vlen {
            let lo = u64::from(self.u32_at(self.pos + 4)?);
            let hi = u64::from(self.u32_at(self.pos + 8)?);
            values.push((
                self.name_at(self.u32_at(self.pos)?)?,
                ((hi << 32) | lo) as i64,
            ));
            self.pos += 12;
        }
        Ok(values)
    }
}

/// Anonymous structs nest a few levels in real kernels; a deeper (or cyclic) chain is
/// malformed BTF.
const MAX_ANONYMOUS_DEPTH: u32 = 16;

/// Finds `name` among `members`, descending into anonymous structs and unions.
/// Returns the member's bit offset from the start of `members`' struct.
fn find_member<'a>(
    btf: &'a Btf,
    members: &'a [Member],
    name: &str,
    depth: u32,
) -> Option<(u32, &'a Member)> {
    if depth > MAX_ANONYMOUS_DEPTH {
        return None;
    }
    for member in members {
        if member.name == name {
            return Some((member.bit_offset, member));
        }
        if member.name.is_empty()
            && let Type::Composite { members: inner, .. } = btf.resolve(member.type_id)
            && let Some((offset, found)) = find_member(btf, inner, name, depth + 1)
        {
            return Some((member.bit_offset.checked_add(offset)?, found));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Btf {
        Btf::from_sys_fs().expect("these machines publish /sys/kernel/btf/vmlinux")
    }

    #[test]
    fn resolves_plain_nested_and_anonymous_fields() {
        let btf = kernel();
        // `sk_buff.sk` and `.dev` live in anonymous unions; their offsets differ per build.
        let sk = btf.field_offset("sk_buff", "sk").unwrap().bytes;
        let dev = btf.field_offset("sk_buff", "dev").unwrap().bytes;
        assert!(sk > 0 && dev > 0 && sk != dev && sk < 256 && dev < 256);
        // The first member of a struct sits at 0.
        assert_eq!(btf.field_offset("tcp_skb_cb", "seq").unwrap().bytes, 0);
        // tcp_gso_segs follows seq and end_seq inside an anonymous union/struct.
        assert_eq!(
            btf.field_offset("tcp_skb_cb", "tcp_gso_segs")
                .unwrap()
                .bytes,
            8
        );
        // Nested path: sock_common is the first member of sock.
        let state = btf.field_offset("sock", "__sk_common.skc_state").unwrap();
        assert_eq!(state, btf.field_offset("sock_common", "skc_state").unwrap());
        let cgroup = btf
            .field_offset("sock", "sk_cgrp_data.cgroup")
            .unwrap()
            .bytes;
        assert_eq!(
            cgroup,
            btf.field_offset("sock", "sk_cgrp_data").unwrap().bytes
                + btf
                    .field_offset("sock_cgroup_data", "cgroup")
                    .unwrap()
                    .bytes
        );
    }

    #[test]
    fn agrees_with_bpftool_dump_when_available() {
        // `bpftool btf dump` prints member offsets in bits; cross-check one we compute.
        let Ok(out) = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF])
            .output()
        else {
            eprintln!("bpftool not installed; skipping the cross-check");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut in_sk_buff = false;
        let mut expected = None;
        for line in text.lines() {
            if line.starts_with('[') {
                in_sk_buff = line.contains("STRUCT 'sk_buff' size=");
                continue;
            }
            if in_sk_buff && line.trim_start().starts_with("'len' type_id=") {
                let bits: u32 = line
                    .split("bits_offset=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .unwrap();
                expected = Some(bits / 8);
                break;
            }
        }
        let btf = kernel();
        assert_eq!(
            Some(btf.field_offset("sk_buff", "len").unwrap().bytes),
            expected
        );
    }

    #[test]
    fn missing_field_names_it() {
        let err = kernel()
            .field_offset("sock", "sk_no_such_field")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sk_no_such_field") && err.contains("sock"),
            "{err}"
        );
        let err = kernel()
            .field_offset("no_such_struct", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no_such_struct"), "{err}");
    }

    #[test]
    fn reads_drop_reasons_and_tracepoint_arity() {
        let btf = kernel();
        assert_eq!(
            btf.enum_value("skb_drop_reason", "SKB_CONSUMED").unwrap(),
            1
        );
        assert!(
            btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_NO_SOCKET")
                .is_ok()
        );
        assert!(btf.enum_value("skb_drop_reason", "NOPE").is_err());
        // kfree_skb(skb, location, reason[, rx_sk]); tcp_retransmit_skb(sk, skb[, err]).
        let kfree = btf.tracepoint_args("kfree_skb").unwrap();
        assert!((3..=4).contains(&kfree), "{kfree}");
        let retrans = btf.tracepoint_args("tcp_retransmit_skb").unwrap();
        assert!((2..=3).contains(&retrans), "{retrans}");
        assert!(btf.tracepoint_args("no_such_tracepoint").is_err());
    }

    #[test]
    fn flags_whole_and_bitfield() {
        let btf = kernel();
        // 6.18: `bool throttled` in task_struct, `bool throttled:1` in cfs_rq.
        let (byte, mask) = btf.flag_location("task_struct", "throttled").unwrap();
        assert_eq!(mask, 0xff);
        assert!(byte > 0);
        let (_, mask) = btf.flag_location("cfs_rq", "throttled").unwrap();
        assert_eq!(mask.count_ones(), 1);
        assert!(
            btf.field_offset("cfs_rq", "throttled").is_err(),
            "a bitfield has no byte offset"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(Btf::parse(b"nope"), Err(BtfError::Malformed(_))));
        assert!(matches!(
            Btf::parse(&[0u8; 64]),
            Err(BtfError::Malformed(_))
        ));
        // Valid magic, header pointing past the end.
        let mut data = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        data.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(Btf::parse(&data), Err(BtfError::Malformed(_))));
    }
}
