//! Per-event records for `tuneprobe trace`.
//!
//! Events go through one ring buffer, and only while `trace` runs: the programs check a
//! read-only global ([`TRACE_CONFIG_GLOBAL`]) that the loader sets only for `trace`. The
//! verifier sees a constant there, so for `serve` and `snapshot` the emitting branch is
//! dead code and costs nothing. Every record starts with a [`TraceHeader`] whose `kind`
//! says which struct follows.

/// Ring buffer of trace records.
pub const TRACE_EVENTS_MAP: &str = "TRACE_EVENTS";
/// Per-CPU array indexed by [`TraceKind`]: records that did not fit in the ring buffer.
pub const TRACE_LOST_MAP: &str = "TRACE_LOST";
/// Name of the read-only global holding the [`TraceConfig`].
pub const TRACE_CONFIG_GLOBAL: &str = "TRACE_CONFIG";
/// Ring buffer size for `trace` (a power of two, a multiple of the page size).
pub const TRACE_RING_BYTES: u32 = 1 << 20;
/// Ring buffer size when nothing traces: the smallest the kernel accepts (one page).
pub const TRACE_RING_IDLE_BYTES: u32 = 4096;

pub use crate::TraceKind;

impl TraceKind {
    /// The bit of this kind in [`TraceConfig::kinds`].
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }

    pub fn from_u32(value: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| *k as u32 == value)
    }
}

/// What to emit; all zero (nothing) unless `trace` loaded the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// [`TraceKind::bit`]s of the signals to emit.
    pub kinds: u32,
    pub _pad: u32,
    /// Block requests faster than this (service plus queue time) are not emitted.
    pub min_block_ns: u64,
}

impl TraceConfig {
    pub const OFF: Self = Self {
        kinds: 0,
        _pad: 0,
        min_block_ns: 0,
    };
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceHeader {
    /// A [`TraceKind`].
    pub kind: u32,
    /// Network namespace inode, 0 if unknown or not a network event.
    pub netns: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// Cgroup id in the hierarchy of the signal: v2 for network events, the blkio
    /// hierarchy for block, the cpu hierarchy for throttle (the same ids the maps use).
    pub cgroup_id: u64,
}

/// Addresses as `::ffff:a.b.c.d` for IPv4 (like the DNS keys); ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// `AF_INET` (2) or `AF_INET6` (10); 0 when the addresses are unknown.
    pub family: u16,
    /// IP protocol (6 TCP, 17 UDP, ...); 0 if unknown.
    pub protocol: u8,
    pub _pad: u8,
}

crate::kernel_layout! {
    /// Fields only `tuneprobe trace` events use: a kernel without them still runs every
    /// program, its events just lack addresses.
    /// Byte offsets and flags from the running kernel's BTF, in the read-only global
    /// `TRACE_LAYOUT`.
    pub struct TraceLayout in "TRACE_LAYOUT" {
        /// 1 if the socket address fields below resolved.
        sock_addresses,
        /// `sock.__sk_common.skc_family`
        sock_family,
        /// `sock.__sk_common.skc_daddr` / `skc_rcv_saddr` (IPv4, network order)
        sock_daddr,
        sock_rcv_saddr,
        /// `sock.__sk_common.skc_dport` (network order) / `skc_num` (host order)
        sock_dport,
        sock_num,
        /// 1 if the IPv6 address fields resolved (kernels built with IPv6).
        sock_has_v6,
        /// `sock.__sk_common.skc_v6_daddr` / `skc_v6_rcv_saddr`
        sock_v6_daddr,
        sock_v6_rcv_saddr,
        /// 1 if `sk_buff.head` and `sk_buff.network_header` resolved.
        skb_headers,
        sk_buff_head,
        sk_buff_network_header,
    }
}

user_pod!(TraceConfig, TraceHeader);
