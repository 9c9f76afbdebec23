//! TCP retransmits, aggregated in the kernel per cgroup of the socket's owner.

use crate::trace::{Endpoints, TraceHeader};

/// Per-CPU hash map: [`RetransmitKey`] -> [`RetransmitCounters`].
pub const TCP_RETRANSMITS_MAP: &str = "TCP_RETRANSMITS";
/// Distinct cgroups tracked at once; beyond this, updates are counted as overflow.
pub const TCP_RETRANSMITS_MAX_CGROUPS: u32 = 16_384;

/// The socket owner's cgroup v2 id and the socket's network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetransmitKey {
    pub cgroup_id: u64,
    /// Network namespace inode number; 0 if unknown.
    pub netns: u32,
    /// Explicit padding: the kernel hashes every key byte.
    pub _reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetransmitCounters {
    /// Retransmitted skbs that went out (`tcp:tcp_retransmit_skb` with `err == 0`).
    pub retransmits: u64,
    /// Segments in those skbs: a GSO skb carries several, and `RetransSegs` counts each.
    pub segments: u64,
    /// Attempts that did not go out (`err != 0`): they are not retransmits on the wire.
    pub failed: u64,
}

impl RetransmitCounters {
    pub fn add(&mut self, other: &Self) {
        self.retransmits += other.retransmits;
        self.segments += other.segments;
        self.failed += other.failed;
    }

    /// What happened since `earlier` (never negative).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            retransmits: self.retransmits.saturating_sub(earlier.retransmits),
            segments: self.segments.saturating_sub(earlier.segments),
            failed: self.failed.saturating_sub(earlier.failed),
        }
    }
}

crate::kernel_layout! {
    /// What the retransmit program needs of `tcp_retransmit_skb` and its skb.
    /// Byte offsets and flags from the running kernel's BTF, in the read-only global
    /// `RETRANSMIT_LAYOUT`.
    pub struct RetransmitLayout in "RETRANSMIT_LAYOUT" {
        /// `sk_buff.cb` + `tcp_skb_cb.tcp_gso_segs`: the skb's segment count (`tcp_skb_pcount`).
        sk_buff_tcp_gso_segs,
        /// 1 if `tcp_retransmit_skb` passes `err` (kernel 6.11+); without it every attempt counts as sent.
        tcp_retransmit_has_err,
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetransmitEvent {
    pub header: TraceHeader,
    pub endpoints: Endpoints,
    /// TCP state (`include/net/tcp_states.h`, part of the user ABI).
    pub state: u32,
    /// The attempt did not go out (`err != 0`).
    pub failed: u32,
    pub segments: u32,
    pub _pad: u32,
}

user_pod!(RetransmitEvent, RetransmitCounters, RetransmitKey);
