//! Fills the programs' [`KernelLayout`] from the running kernel's BTF, and names the
//! kernel's drop reasons.

use std::collections::HashMap;

use probe_common::KernelLayout;

use crate::kernel::{
    btf::{Btf, BtfError},
    symbols::Symbols,
};

/// One kernel field a program reads: `(struct, dotted path)`.
pub type FieldPath = (&'static str, &'static str);

pub const SK_BUFF_SK: FieldPath = ("sk_buff", "sk");
pub const SK_BUFF_DEV: FieldPath = ("sk_buff", "dev");
pub const SK_BUFF_CB: FieldPath = ("sk_buff", "cb");
pub const TCP_SKB_CB_GSO_SEGS: FieldPath = ("tcp_skb_cb", "tcp_gso_segs");
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
pub const REQUEST_QUEUE: FieldPath = ("request", "q");
pub const QUEUE_DISK: FieldPath = ("request_queue", "disk");
/// Older kernels (5.10), whose `request_queue` has no `disk`: the request names its disk.
pub const REQUEST_RQ_DISK: FieldPath = ("request", "rq_disk");
pub const DISK_MAJOR: FieldPath = ("gendisk", "major");
pub const DISK_FIRST_MINOR: FieldPath = ("gendisk", "first_minor");
pub const REQUEST_CMD_FLAGS: FieldPath = ("request", "cmd_flags");
pub const REQUEST_DATA_LEN: FieldPath = ("request", "__data_len");
pub const REQUEST_START_TIME: FieldPath = ("request", "start_time_ns");
pub const REQUEST_BIO: FieldPath = ("request", "bio");
pub const BIO_BLKG: FieldPath = ("bio", "bi_blkg");
pub const BLKG_BLKCG: FieldPath = ("blkcg_gq", "blkcg");
pub const BLKCG_CGROUP: FieldPath = ("blkcg", "css.cgroup");
pub const TASK_PID: FieldPath = ("task_struct", "pid");
pub const TASK_CGROUPS: FieldPath = ("task_struct", "cgroups");
pub const CSS_SET_SUBSYS: FieldPath = ("css_set", "subsys");
pub const CSS_CGROUP: FieldPath = ("cgroup_subsys_state", "cgroup");
/// The throttle flag: per task on 6.18+, else on the task's cfs_rq.
pub const TASK_THROTTLED: FieldPath = ("task_struct", "throttled");
pub const TASK_CFS_RQ: FieldPath = ("task_struct", "se.cfs_rq");
/// Non-zero while the cfs_rq or any ancestor is throttled (a child group of a throttled
/// pod has `throttled == 0`).
pub const CFS_RQ_THROTTLE_COUNT: FieldPath = ("cfs_rq", "throttle_count");
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
pub const SOCK_PROTOCOL: FieldPath = ("sock", "sk_protocol");
pub const SOCK_ERR: FieldPath = ("sock", "sk_err");
pub const TCP_SRTT_US: FieldPath = ("tcp_sock", "srtt_us");
/// A windowed minimum (`struct minmax`): its first sample is the current minimum.
pub const TCP_RTT_MIN: FieldPath = ("tcp_sock", "rtt_min");
pub const MINMAX_SAMPLE_V: FieldPath = ("minmax_sample", "v");
pub const TCP_SEGS_OUT: FieldPath = ("tcp_sock", "segs_out");
/// Not a field: the `cpu_cgrp_id` value of `enum cgroup_subsys_id`.
pub const CPU_CGRP_ID: FieldPath = ("cgroup_subsys_id", "cpu_cgrp_id");

/// The layout, and the fields this kernel's BTF could not place. A program that needs a
/// missing field is reported unavailable; the others still run.
#[derive(Debug)]
pub struct ResolvedLayout {
    pub layout: KernelLayout,
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

pub fn resolve(btf: &Btf) -> ResolvedLayout {
    let mut missing = HashMap::new();
    let cpu_cgrp_id = cpu_cgrp_id(btf, &mut missing);
    let throttle = throttle_flag(btf, &mut missing);
    let sock_cgroup = sock_cgroup(btf, &mut missing);
    let (queue_disk, request_has_rq_disk) = request_disk(btf, &mut missing);
    let mut offset = |field: FieldPath| match btf.field_offset(field.0, field.1) {
        Ok(offset) => offset.bytes,
        Err(err) => {
            missing.insert(field, err.to_string());
            0
        }
    };
    let sk_buff_cb = offset(SK_BUFF_CB);
    let gso_segs = offset(TCP_SKB_CB_GSO_SEGS);
    let blkcg_cgroup = offset(BLKCG_CGROUP);
    let css_set_subsys = offset(CSS_SET_SUBSYS);
    let rtt_min = offset(TCP_RTT_MIN);
    let minmax_v = offset(MINMAX_SAMPLE_V);
    let mut layout = KernelLayout {
        sk_buff_sk: offset(SK_BUFF_SK),
        sk_buff_dev: offset(SK_BUFF_DEV),
        sk_buff_tcp_gso_segs: sk_buff_cb.saturating_add(gso_segs),
        sock_state: offset(SOCK_STATE),
        sock_net: offset(SOCK_NET),
        sock_cgroup: sock_cgroup.offset,
        sock_cgroup_in_val: sock_cgroup.in_val,
        sock_cgroup_val_tags: sock_cgroup.tags,
        cgroup_kn: offset(CGROUP_KN),
        kernfs_node_id: offset(KERNFS_NODE_ID),
        net_device_net: offset(NET_DEVICE_NET),
        net_inum: offset(NET_INUM),
        tcp_retransmit_has_err: u32::from(
            btf.tracepoint_args("tcp_retransmit_skb").unwrap_or(0) >= 3,
        ),
        kfree_skb_has_rx_sk: u32::from(btf.tracepoint_args("kfree_skb").unwrap_or(0) >= 4),
        kfree_skb_has_reason: u32::from(btf.tracepoint_args("kfree_skb").unwrap_or(0) >= 3),
        drop_reason_consumed: btf
            .enum_value("skb_drop_reason", "SKB_CONSUMED")
            .map_or(u32::MAX, |v| v as u32),
        request_queue: offset(REQUEST_QUEUE),
        queue_disk,
        request_has_rq_disk,
        disk_major: offset(DISK_MAJOR),
        disk_first_minor: offset(DISK_FIRST_MINOR),
        request_cmd_flags: offset(REQUEST_CMD_FLAGS),
        request_data_len: offset(REQUEST_DATA_LEN),
        request_start_time_ns: offset(REQUEST_START_TIME),
        request_bio: offset(REQUEST_BIO),
        bio_blkg: offset(BIO_BLKG),
        blkg_blkcg: offset(BLKG_BLKCG),
        blkcg_cgroup,
        task_pid: offset(TASK_PID),
        task_cgroups: offset(TASK_CGROUPS),
        // `subsys` is an array of css pointers indexed by subsystem id.
        css_set_cpu_css: css_set_subsys.saturating_add(cpu_cgrp_id.saturating_mul(8)),
        css_cgroup: offset(CSS_CGROUP),
        throttle_per_task: throttle.per_task,
        throttled_byte: throttle.byte,
        throttled_mask: throttle.mask,
        task_cfs_rq: throttle.task_cfs_rq,
        sched_switch_has_prev_state: u32::from(
            btf.tracepoint_args("sched_switch").unwrap_or(0) >= 4,
        ),
        sock_num: offset(SOCK_NUM),
        sock_protocol: offset(SOCK_PROTOCOL),
        sock_err: offset(SOCK_ERR),
        tcp_srtt_us: offset(TCP_SRTT_US),
        tcp_min_rtt_us: rtt_min.saturating_add(minmax_v),
        tcp_segs_out: offset(TCP_SEGS_OUT),
        ..KernelLayout::UNRESOLVED
    };
    trace_fields(btf, &mut layout);
    ResolvedLayout { layout, missing }
}

/// The cpu controller's subsystem id, which indexes a css set's `subsys` (0, and
/// missing, when the kernel does not say).
fn cpu_cgrp_id(btf: &Btf, missing: &mut HashMap<FieldPath, String>) -> u32 {
    match btf.enum_value(CPU_CGRP_ID.0, CPU_CGRP_ID.1) {
        Ok(id) => id as u32,
        Err(err) => {
            missing.insert(CPU_CGRP_ID, err.to_string());
            0
        }
    }
}

/// Fields only `trace` events use (addresses, ports). They are optional: a kernel that
/// lacks them (IPv6 compiled out, renamed fields) keeps every program; its events then
/// carry no addresses, and the flags say so to the programs.
fn trace_fields(btf: &Btf, layout: &mut KernelLayout) {
    let all = |fields: &[FieldPath]| -> Option<Vec<u32>> {
        fields
            .iter()
            .map(|f| btf.field_offset(f.0, f.1).ok().map(|o| o.bytes))
            .collect()
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
}

/// Where a request's disk is: `request.q->disk` where BTF has it, else `request.rq_disk`
/// (5.10). Returns the offset of the last field read, and 1 if it is `rq_disk`.
fn request_disk(btf: &Btf, missing: &mut HashMap<FieldPath, String>) -> (u32, u32) {
    match btf.field_offset(QUEUE_DISK.0, QUEUE_DISK.1) {
        Ok(offset) => (offset.bytes, 0),
        Err(queue_err) => match btf.field_offset(REQUEST_RQ_DISK.0, REQUEST_RQ_DISK.1) {
            Ok(offset) => (offset.bytes, 1),
            Err(err) => {
                missing.insert(QUEUE_DISK, format!("{queue_err}; nor {err}"));
                (0, 0)
            }
        },
    }
}

struct SockCgroup {
    offset: u32,
    in_val: u32,
    tags: u32,
}

/// Where a socket's cgroup is: `sock_cgroup_data.cgroup` (5.15+), or before that in the
/// union's `val`, a `struct cgroup *` unless its tag bits (`is_data`, and `no_refcnt`
/// where the kernel has it, as 5.10 does; their positions from BTF) are set.
fn sock_cgroup(btf: &Btf, missing: &mut HashMap<FieldPath, String>) -> SockCgroup {
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
            missing.insert(
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

struct ThrottleFlag {
    per_task: u32,
    byte: u32,
    mask: u32,
    task_cfs_rq: u32,
}

/// 6.18 marks throttled tasks themselves; older kernels count throttles on the task's
/// cfs_rq (`throttle_count` covers throttled ancestors too).
fn throttle_flag(btf: &Btf, missing: &mut HashMap<FieldPath, String>) -> ThrottleFlag {
    if let Ok((byte, mask)) = btf.flag_location(TASK_THROTTLED.0, TASK_THROTTLED.1) {
        return ThrottleFlag {
            per_task: 1,
            byte,
            mask: u32::from(mask),
            task_cfs_rq: 0,
        };
    }
    let cfs_rq = btf.field_offset(TASK_CFS_RQ.0, TASK_CFS_RQ.1);
    let flag = btf.flag_location(CFS_RQ_THROTTLE_COUNT.0, CFS_RQ_THROTTLE_COUNT.1);
    match (cfs_rq, flag) {
        (Ok(cfs_rq), Ok((byte, mask))) => ThrottleFlag {
            per_task: 0,
            byte,
            mask: u32::from(mask),
            task_cfs_rq: cfs_rq.bytes,
        },
        (Err(err), _) | (_, Err(err)) => {
            missing.insert(
                TASK_THROTTLED,
                format!("neither task_struct.throttled nor cfs_rq.throttle_count: {err}"),
            );
            ThrottleFlag {
                per_task: 0,
                byte: 0,
                mask: 0,
                task_cfs_rq: 0,
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
    fn running_kernel_resolves_every_field() {
        let btf = Btf::from_sys_fs().unwrap();
        let resolved = resolve(&btf);
        assert!(resolved.missing.is_empty(), "{:?}", resolved.missing);
        let l = resolved.layout;
        assert_eq!(
            l.sock_state,
            btf.field_offset("sock_common", "skc_state").unwrap().bytes
        );
        assert_eq!(
            l.sk_buff_tcp_gso_segs,
            btf.field_offset("sk_buff", "cb").unwrap().bytes + 8
        );
        assert_eq!(l.drop_reason_consumed, 1);
        // 6.18: the disk is the request queue's, and the socket's cgroup a pointer of
        // its own, not the older union.
        assert_eq!(l.request_has_rq_disk, 0);
        assert_eq!(
            l.queue_disk,
            btf.field_offset("request_queue", "disk").unwrap().bytes
        );
        assert_eq!(l.sock_cgroup_in_val, 0);
        assert_eq!(
            l.sock_cgroup,
            btf.field_offset("sock", "sk_cgrp_data.cgroup")
                .unwrap()
                .bytes
        );
        // This machine's kernel (6.18) has rx_sk and err, and throttles per task.
        assert_eq!(l.kfree_skb_has_rx_sk, 1);
        assert_eq!(l.tcp_retransmit_has_err, 1);
        assert_eq!(l.throttle_per_task, 1);
        assert_eq!(l.throttled_mask, 0xff);
        assert_eq!(
            l.throttled_byte,
            btf.field_offset("task_struct", "throttled").unwrap().bytes
        );
        let cpu_id = btf.enum_value("cgroup_subsys_id", "cpu_cgrp_id").unwrap() as u32;
        assert_eq!(
            l.css_set_cpu_css,
            btf.field_offset("css_set", "subsys").unwrap().bytes + 8 * cpu_id
        );
        assert_eq!(
            l.blkcg_cgroup,
            btf.field_offset("blkcg", "css").unwrap().bytes
                + btf
                    .field_offset("cgroup_subsys_state", "cgroup")
                    .unwrap()
                    .bytes
        );
    }

    #[test]
    fn trace_address_fields_resolve_from_btf() {
        let btf = Btf::from_sys_fs().unwrap();
        let l = resolve(&btf).layout;
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
        let mut resolved = resolve(&btf);
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
