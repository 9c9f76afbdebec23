//! Fills the programs' [`KernelLayout`] from the running kernel's BTF, and names the
//! kernel's drop reasons.

use std::collections::HashMap;

use probe_common::KernelLayout;

use crate::btf::{Btf, BtfError};

/// One kernel field a program reads: `(struct, dotted path)`.
pub type FieldPath = (&'static str, &'static str);

pub const SK_BUFF_SK: FieldPath = ("sk_buff", "sk");
pub const SK_BUFF_DEV: FieldPath = ("sk_buff", "dev");
pub const SK_BUFF_CB: FieldPath = ("sk_buff", "cb");
pub const TCP_SKB_CB_GSO_SEGS: FieldPath = ("tcp_skb_cb", "tcp_gso_segs");
pub const SOCK_STATE: FieldPath = ("sock", "__sk_common.skc_state");
pub const SOCK_NET: FieldPath = ("sock", "__sk_common.skc_net.net");
pub const SOCK_CGROUP: FieldPath = ("sock", "sk_cgrp_data.cgroup");
pub const CGROUP_KN: FieldPath = ("cgroup", "kn");
pub const KERNFS_NODE_ID: FieldPath = ("kernfs_node", "id");
pub const NET_DEVICE_NET: FieldPath = ("net_device", "nd_net.net");
pub const NET_INUM: FieldPath = ("net", "ns.inum");

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
    let mut offset = |field: FieldPath| match btf.field_offset(field.0, field.1) {
        Ok(offset) => offset.bytes,
        Err(err) => {
            missing.insert(field, err.to_string());
            0
        }
    };
    let sk_buff_cb = offset(SK_BUFF_CB);
    let gso_segs = offset(TCP_SKB_CB_GSO_SEGS);
    let layout = KernelLayout {
        sk_buff_sk: offset(SK_BUFF_SK),
        sk_buff_dev: offset(SK_BUFF_DEV),
        sk_buff_tcp_gso_segs: sk_buff_cb + gso_segs,
        sock_state: offset(SOCK_STATE),
        sock_net: offset(SOCK_NET),
        sock_cgroup: offset(SOCK_CGROUP),
        cgroup_kn: offset(CGROUP_KN),
        kernfs_node_id: offset(KERNFS_NODE_ID),
        net_device_net: offset(NET_DEVICE_NET),
        net_inum: offset(NET_INUM),
        tcp_retransmit_has_err: u32::from(
            btf.tracepoint_args("tcp_retransmit_skb").unwrap_or(0) >= 3,
        ),
        kfree_skb_has_rx_sk: u32::from(btf.tracepoint_args("kfree_skb").unwrap_or(0) >= 4),
        drop_reason_consumed: btf
            .enum_value("skb_drop_reason", "SKB_CONSUMED")
            .map(|v| v as u32)
            // Kernels before 6.0 had no SKB_CONSUMED; no real reason uses u32::MAX.
            .unwrap_or(u32::MAX),
        _reserved: 0,
    };
    ResolvedLayout { layout, missing }
}

/// Names of the kernel's `enum skb_drop_reason` values, prefix stripped
/// (`SKB_DROP_REASON_NO_SOCKET` -> `NO_SOCKET`).
#[derive(Debug, Clone, Default)]
pub struct DropReasons {
    names: HashMap<u32, String>,
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
        Ok(Self { names })
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
        // This machine's kernel (6.18) has rx_sk and err.
        assert_eq!(l.kfree_skb_has_rx_sk, 1);
        assert_eq!(l.tcp_retransmit_has_err, 1);
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
    fn drop_reason_names_come_from_the_kernel() {
        let reasons = DropReasons::from_btf(&Btf::from_sys_fs().unwrap()).unwrap();
        let no_socket = reasons.value("NO_SOCKET").unwrap();
        assert_eq!(reasons.name(no_socket), "NO_SOCKET");
        assert!(reasons.value("NETFILTER_DROP").is_some());
        assert!(reasons.value("SOCKET_RCVBUFF").is_some());
        assert!(reasons.value("QDISC_DROP").is_some());
        assert_eq!(reasons.name(0x7fff_0000), "UNKNOWN_2147418112");
    }
}
