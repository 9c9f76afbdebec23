//! Fills the programs' layouts from the running kernel's BTF, and names the kernel's
//! drop reasons. The layout every signal shares ([`KernelLayout`]: a socket's cgroup
//! and namespace) and `trace`'s are resolved here; each signal resolves its own in its
//! module (its `Source::LAYOUT`), through a [`Resolver`].

use std::collections::HashMap;

use probe_common::{KernelLayout, trace::TraceLayout};

use crate::kernel::{
    btf::{Btf, BtfError},
    symbols::Symbols,
};

/// One kernel field a program reads: `(struct, dotted path)`.
pub type FieldPath = (&'static str, &'static str);

pub const SK_BUFF_SK: FieldPath = ("sk_buff", "sk");
pub const SOCK_STATE: FieldPath = ("sock", "__sk_common.skc_state");
pub const SOCK_NET: FieldPath = ("sock", "__sk_common.skc_net.net");
pub const SOCK_CGROUP: FieldPath = ("sock", "sk_cgrp_data.cgroup");
/// Before 5.15 the cgroup pointer is in a union, `val`, tagged by `is_data`/`no_refcnt`.
pub const SOCK_CGROUP_VAL: FieldPath = ("sock", "sk_cgrp_data.val");
pub const SOCK_CGROUP_IS_DATA: FieldPath = ("sock_cgroup_data", "is_data");
pub const SOCK_CGROUP_NO_REFCNT: FieldPath = ("sock_cgroup_data", "no_refcnt");
pub const CGROUP_KN: FieldPath = ("cgroup", "kn");
pub const KERNFS_NODE_ID: FieldPath = ("kernfs_node", "id");
pub const NET_DEVICE_NET: FieldPath = ("net_device", "nd_net.net");
pub const NET_INUM: FieldPath = ("net", "ns.inum");
/// Trace-only fields: optional, see `TraceFields`.
pub const SOCK_FAMILY: FieldPath = ("sock", "__sk_common.skc_family");
pub const SOCK_DADDR: FieldPath = ("sock", "__sk_common.skc_daddr");
pub const SOCK_RCV_SADDR: FieldPath = ("sock", "__sk_common.skc_rcv_saddr");
pub const SOCK_DPORT: FieldPath = ("sock", "__sk_common.skc_dport");
pub const SOCK_NUM: FieldPath = ("sock", "__sk_common.skc_num");
pub const SOCK_V6_DADDR: FieldPath = ("sock", "__sk_common.skc_v6_daddr");
pub const SOCK_V6_RCV_SADDR: FieldPath = ("sock", "__sk_common.skc_v6_rcv_saddr");
pub const SK_BUFF_HEAD: FieldPath = ("sk_buff", "head");
pub const SK_BUFF_NETWORK_HEADER: FieldPath = ("sk_buff", "network_header");

/// Resolves field offsets from BTF, keeping why each field it could not place is
/// missing: a program that needs a missing field is reported unavailable, the others
/// still run.
pub struct Resolver<'a> {
    pub btf: &'a Btf,
    missing: HashMap<FieldPath, String>,
}

impl<'a> Resolver<'a> {
    pub fn new(btf: &'a Btf) -> Self {
        Self {
            btf,
            missing: HashMap::new(),
        }
    }

    /// The field's byte offset, or 0 with why it is missing kept.
    pub fn offset(&mut self, field: FieldPath) -> u32 {
        match self.btf.field_offset(field.0, field.1) {
            Ok(offset) => offset.bytes,
            Err(err) => {
                self.missing.insert(field, err.to_string());
                0
            }
        }
    }

    /// Marks `field` missing, because `why`.
    pub fn missing(&mut self, field: FieldPath, why: String) {
        self.missing.insert(field, why);
    }

    /// How many arguments a tracepoint passes (0 where BTF does not say).
    pub fn tracepoint_args(&self, tracepoint: &str) -> u32 {
        self.btf.tracepoint_args(tracepoint).unwrap_or(0)
    }
}

/// A layout global resolved for this kernel: its name and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

impl Global {
    /// The value back from its bytes (for tests).
    #[cfg(test)]
    pub fn read<T: aya::Pod>(&self) -> T {
        assert_eq!(self.bytes.len(), size_of::<T>(), "{}", self.name);
        // SAFETY: as many bytes as a `T`, which is plain data.
        unsafe { std::ptr::read_unaligned(self.bytes.as_ptr().cast::<T>()) }
    }

    pub fn of<T: aya::Pod>(name: &'static str, value: &T) -> Self {
        // SAFETY: `Pod` types are plain bytes without padding (the layouts are
        // `#[repr(C)]` structs of `u32`s).
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        };
        Self {
            name,
            bytes: bytes.to_vec(),
        }
    }
}

/// A signal's layout resolved alone from the running kernel's BTF, for its tests:
/// fails if BTF could not place one of its fields.
#[cfg(test)]
pub(crate) fn resolved_alone<T: aya::Pod>(signal: Resolve) -> (Btf, T) {
    let btf = Btf::from_sys_fs().unwrap();
    let resolved = resolve(&btf, &[signal]);
    assert!(resolved.missing.is_empty(), "{:?}", resolved.missing);
    let layout = resolved.globals.last().unwrap().read();
    (btf, layout)
}

/// A signal's layout, resolved from BTF (`Source::LAYOUT`).
pub type Resolve = fn(&mut Resolver) -> Global;

/// Every layout global, and the fields this kernel's BTF could not place.
#[derive(Debug)]
pub struct ResolvedLayout {
    pub globals: Vec<Global>,
    pub missing: HashMap<FieldPath, String>,
}

impl ResolvedLayout {
    /// Why a program needing `fields` cannot run here, if it cannot.
    pub fn unavailable(&self, fields: &[FieldPath]) -> Option<String> {
        let reasons: Vec<&str> = fields
            .iter()
            .filter_map(|field| self.missing.get(field).map(String::as_str))
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// The shared layout, `trace`'s, and each of `signals`' own.
pub fn resolve(btf: &Btf, signals: &[Resolve]) -> ResolvedLayout {
    let mut resolver = Resolver::new(btf);
    let mut globals = vec![
        Global::of(KernelLayout::GLOBAL, &common(&mut resolver)),
        Global::of(TraceLayout::GLOBAL, &trace_fields(btf)),
    ];
    globals.extend(signals.iter().map(|resolve| resolve(&mut resolver)));
    ResolvedLayout {
        globals,
        missing: resolver.missing,
    }
}

/// The reads every signal shares: a socket's or a device's cgroup and namespace.
pub fn common(r: &mut Resolver) -> KernelLayout {
    let sock_cgroup = sock_cgroup(r);
    KernelLayout {
        sk_buff_sk: r.offset(SK_BUFF_SK),
        sock_state: r.offset(SOCK_STATE),
        sock_net: r.offset(SOCK_NET),
        sock_cgroup: sock_cgroup.offset,
        sock_cgroup_in_val: sock_cgroup.in_val,
        sock_cgroup_val_tags: sock_cgroup.tags,
        cgroup_kn: r.offset(CGROUP_KN),
        kernfs_node_id: r.offset(KERNFS_NODE_ID),
        net_device_net: r.offset(NET_DEVICE_NET),
        net_inum: r.offset(NET_INUM),
    }
}

/// Fields only `trace` events use (addresses, ports). They are optional: a kernel that
/// lacks them (IPv6 compiled out, renamed fields) keeps every program; its events then
/// carry no addresses, and the flags say so to the programs.
pub fn trace_fields(btf: &Btf) -> TraceLayout {
    let all = |fields: &[FieldPath]| -> Option<Vec<u32>> {
        fields
            .iter()
            .map(|f| btf.field_offset(f.0, f.1).ok().map(|o| o.bytes))
            .collect()
    };
    let mut layout = TraceLayout {
        sock_num: btf
            .field_offset(SOCK_NUM.0, SOCK_NUM.1)
            .map_or(0, |o| o.bytes),
        ..TraceLayout::UNRESOLVED
    };
    if let Some(o) = all(&[
        SOCK_FAMILY,
        SOCK_DADDR,
        SOCK_RCV_SADDR,
        SOCK_DPORT,
        SOCK_NUM,
    ]) {
        layout.sock_addresses = 1;
        layout.sock_family = o[0];
        layout.sock_daddr = o[1];
        layout.sock_rcv_saddr = o[2];
        layout.sock_dport = o[3];
        layout.sock_num = o[4];
    }
    if let Some(o) = all(&[SOCK_V6_DADDR, SOCK_V6_RCV_SADDR]) {
        layout.sock_has_v6 = 1;
        layout.sock_v6_daddr = o[0];
        layout.sock_v6_rcv_saddr = o[1];
    }
    if let Some(o) = all(&[SK_BUFF_HEAD, SK_BUFF_NETWORK_HEADER]) {
        layout.skb_headers = 1;
        layout.sk_buff_head = o[0];
        layout.sk_buff_network_header = o[1];
    }
    layout
}

struct SockCgroup {
    offset: u32,
    in_val: u32,
    tags: u32,
}

/// Where a socket's cgroup is: `sock_cgroup_data.cgroup` (5.15+), or before that in the
/// union's `val`, a `struct cgroup *` unless its tag bits (`is_data`, and `no_refcnt`
/// where the kernel has it, as 5.10 does; their positions from BTF) are set.
fn sock_cgroup(r: &mut Resolver) -> SockCgroup {
    let btf = r.btf;
    let pointer_err = match btf.field_offset(SOCK_CGROUP.0, SOCK_CGROUP.1) {
        Ok(offset) => {
            return SockCgroup {
                offset: offset.bytes,
                in_val: 0,
                tags: 0,
            };
        }
        Err(err) => err,
    };
    let val = btf.field_offset(SOCK_CGROUP_VAL.0, SOCK_CGROUP_VAL.1);
    let is_data = btf.flag_location(SOCK_CGROUP_IS_DATA.0, SOCK_CGROUP_IS_DATA.1);
    match (val, is_data) {
        // The tags must be in `val`'s low byte (x86-64 and arm64 are little-endian).
        (Ok(val), Ok((0, is_data))) => {
            let no_refcnt = btf
                .flag_location(SOCK_CGROUP_NO_REFCNT.0, SOCK_CGROUP_NO_REFCNT.1)
                .ok()
                .filter(|&(byte, _)| byte == 0)
                .map_or(0, |(_, mask)| mask);
            SockCgroup {
                offset: val.bytes,
                in_val: 1,
                tags: u32::from(is_data | no_refcnt),
            }
        }
        (val, is_data) => {
            let why = match (val, is_data) {
                (Err(err), _) | (_, Err(err)) => err.to_string(),
                _ => "`sock_cgroup_data.is_data` is not in the low byte of `val`".to_string(),
            };
            r.missing(
                SOCK_CGROUP,
                format!("{pointer_err}; nor the older `val` layout: {why}"),
            );
            SockCgroup {
                offset: 0,
                in_val: 0,
                tags: 0,
            }
        }
    }
}

/// Names of the kernel's `enum skb_drop_reason` values, prefix stripped
/// (`SKB_DROP_REASON_NO_SOCKET` -> `NO_SOCKET`); on kernels without drop reasons (before
/// 5.17), the function that dropped the packet, `at:FUNCTION`.
#[derive(Debug, Clone, Default)]
pub struct DropReasons {
    names: HashMap<u32, String>,
    /// Set where `kfree_skb` passes no reason: drops are named by their location.
    by_location: Option<Symbols>,
}

impl DropReasons {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let names = btf
            .enum_values("skb_drop_reason")?
            .iter()
            .filter(|(name, _)| name != "SKB_DROP_REASON_MAX")
            .map(|(name, value)| {
                let short = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(name);
                (*value as u32, short.to_string())
            })
            .collect();
        Ok(Self {
            names,
            by_location: None,
        })
    }

    /// For kernels whose `kfree_skb` passes no reason: drops are named by the kernel
    /// function that dropped them, from `symbols`.
    pub fn by_location(symbols: Symbols) -> Self {
        Self {
            names: HashMap::new(),
            by_location: Some(symbols),
        }
    }

    /// Whether drops are named by location (`at:FUNCTION`) rather than by reason.
    pub fn named_by_location(&self) -> bool {
        self.by_location.is_some()
    }

    /// The name of a drop: its reason, or on kernels without drop reasons `at:` and the
    /// function its `location` (a return address into that function) is in, without
    /// the offset, so that one place in the code is one name (`at:__udp4_lib_rcv`). An
    /// address no symbol covers (the kernel hides them) stays a number, `at:0xffff...`.
    pub fn name_of(&self, reason: u32, location: u64) -> String {
        match &self.by_location {
            Some(symbols) => format!("at:{}", symbols.caller(location)),
            None => self.name(reason),
        }
    }

    /// The reason's name; values this kernel's BTF does not list (subsystem reasons)
    /// keep their number so nothing is lost.
    pub fn name(&self, value: u32) -> String {
        self.names
            .get(&value)
            .cloned()
            .unwrap_or_else(|| format!("UNKNOWN_{value}"))
    }

    pub fn value(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(&v, _)| v)
    }
}

/// Names of block operations (`cmd_flags & REQ_OP_MASK`) from the kernel's `enum req_op`.
#[derive(Debug, Clone, Default)]
pub struct BlockOps {
    names: HashMap<u32, &'static str>,
}

impl BlockOps {
    pub fn from_btf(btf: &Btf) -> Self {
        // `enum req_op` since 6.0; `enum req_opf` before (5.10).
        let ty = ["req_op", "req_opf"]
            .into_iter()
            .find(|ty| btf.enum_values(ty).is_ok())
            .unwrap_or("req_op");
        let names = [
            ("REQ_OP_READ", "read"),
            ("REQ_OP_WRITE", "write"),
            ("REQ_OP_FLUSH", "flush"),
            ("REQ_OP_DISCARD", "discard"),
        ]
        .into_iter()
        .filter_map(|(enumerator, name)| {
            let value = btf.enum_value(ty, enumerator).ok()?;
            Some((value as u32, name))
        })
        .collect();
        Self { names }
    }

    /// `read`, `write`, `flush`, `discard`, or `other` for everything else.
    pub fn name(&self, op: u32) -> &'static str {
        self.names.get(&op).copied().unwrap_or("other")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_resolves_the_shared_layout() {
        let btf = Btf::from_sys_fs().unwrap();
        let mut r = Resolver::new(&btf);
        let l = common(&mut r);
        assert!(r.missing.is_empty(), "{:?}", r.missing);
        assert_eq!(
            l.sock_state,
            btf.field_offset("sock_common", "skc_state").unwrap().bytes
        );
        // 6.18: the socket's cgroup is a pointer of its own, not the older union.
        assert_eq!(l.sock_cgroup_in_val, 0);
        assert_eq!(
            l.sock_cgroup,
            btf.field_offset("sock", "sk_cgrp_data.cgroup")
                .unwrap()
                .bytes
        );
        // The global is the layout's bytes, under its name.
        let global = Global::of(KernelLayout::GLOBAL, &l);
        assert_eq!(global.name, "KERNEL_LAYOUT");
        assert_eq!(global.bytes.len(), size_of::<KernelLayout>());
        assert_eq!(global.read::<KernelLayout>(), l);
    }

    #[test]
    fn trace_address_fields_resolve_from_btf() {
        let btf = Btf::from_sys_fs().unwrap();
        let l = trace_fields(&btf);
        assert_eq!((l.sock_addresses, l.sock_has_v6, l.skb_headers), (1, 1, 1));
        let at = |ty: &str, path: &str| btf.field_offset(ty, path).unwrap().bytes;
        assert_eq!(l.sock_family, at("sock_common", "skc_family"));
        assert_eq!(l.sock_daddr, at("sock_common", "skc_daddr"));
        assert_eq!(l.sock_rcv_saddr, at("sock_common", "skc_rcv_saddr"));
        assert_eq!(l.sock_dport, at("sock_common", "skc_dport"));
        assert_eq!(l.sock_num, at("sock_common", "skc_num"));
        assert_eq!(l.sock_v6_daddr, at("sock_common", "skc_v6_daddr"));
        assert_eq!(l.sk_buff_network_header, at("sk_buff", "network_header"));
        // The ports share one 32-bit word: dport first, then the local port.
        assert_eq!(l.sock_num, l.sock_dport + 2);
    }

    #[test]
    fn unavailable_names_the_missing_field() {
        let btf = Btf::from_sys_fs().unwrap();
        let mut resolved = resolve(&btf, &[]);
        let err = btf
            .field_offset("sock", "sk_cgrp_data.not_there")
            .unwrap_err();
        resolved.missing.insert(SOCK_CGROUP, err.to_string());
        let why = resolved.unavailable(&[SK_BUFF_SK, SOCK_CGROUP]).unwrap();
        assert!(why.contains("not_there"), "{why}");
        assert!(resolved.unavailable(&[SK_BUFF_SK]).is_none());
    }

    #[test]
    fn block_op_names_come_from_the_kernel() {
        let ops = BlockOps::from_btf(&Btf::from_sys_fs().unwrap());
        assert_eq!(ops.name(0), "read");
        assert_eq!(ops.name(1), "write");
        assert_eq!(ops.name(2), "flush");
        assert_eq!(ops.name(3), "discard");
        assert_eq!(ops.name(9), "other");
    }

    #[test]
    fn drop_reason_names_come_from_the_kernel() {
        let reasons = DropReasons::from_btf(&Btf::from_sys_fs().unwrap()).unwrap();
        let no_socket = reasons.value("NO_SOCKET").unwrap();
        assert_eq!(reasons.name(no_socket), "NO_SOCKET");
        assert!(reasons.value("NETFILTER_DROP").is_some());
        assert!(reasons.value("SOCKET_RCVBUFF").is_some());
        assert!(reasons.value("QDISC_DROP").is_some());
        assert_eq!(reasons.name(0x7fff_0000), "UNKNOWN_2147418112");
        // 5.17+: the reason names a drop, whatever its location.
        assert!(!reasons.named_by_location());
        assert_eq!(reasons.name_of(no_socket, 0), "NO_SOCKET");
        assert_eq!(
            reasons.name_of(no_socket, 0xffff_ffff_81a0_0010),
            "NO_SOCKET"
        );
    }

    #[test]
    fn without_drop_reasons_the_dropping_function_names_a_drop() {
        let symbols = Symbols::parse(
            "ffffffff81a00000 t __udp4_lib_rcv
ffffffff81a00800 T nf_hook_slow
             ffffffff81b00000 T udp_rcv
",
        );
        let reasons = DropReasons::by_location(symbols);
        assert!(reasons.named_by_location());
        assert_eq!(
            reasons.name_of(0, 0xffff_ffff_81a0_0123),
            "at:__udp4_lib_rcv"
        );
        assert_eq!(reasons.name_of(0, 0xffff_ffff_81a0_0900), "at:nf_hook_slow");
        let hidden = DropReasons::by_location(Symbols::default());
        assert_eq!(
            hidden.name_of(0, 0xffff_ffff_81a0_0123),
            "at:0xffffffff81a00123"
        );
    }
}
