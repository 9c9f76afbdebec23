//! Packet drops from `skb:kfree_skb`, aggregated in the kernel by owner and reason.

use crate::trace::{Endpoints, TraceHeader};

/// Per-CPU hash map: [`DropKey`] -> drop count (`u64`).
pub const DROPS_MAP: &str = "DROPS";
/// Distinct (owner, reason) pairs tracked at once.
pub const DROPS_MAX_KEYS: u32 = 32_768;

/// Who a dropped packet belonged to, and why the kernel dropped it.
///
/// With a socket, `cgroup_id` is the socket's cgroup v2 id and `netns` the socket's
/// network namespace. Without one (a packet to a closed port, a firewall drop on input),
/// `cgroup_id` is 0 and `netns` is the namespace of the device the packet was on; the
/// agent attributes it to the pod that lives in that namespace.
///
/// Kernels whose `kfree_skb` passes a drop reason (5.17+) key by `reason`, and
/// `location` is 0. Older ones pass none: there `reason` is 0 and `location` is the
/// kernel code address that dropped the packet (the return address into the function
/// that called `kfree_skb`), which the agent names from `/proc/kallsyms`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub cgroup_id: u64,
    /// Network namespace inode number (`stat -L -c %i /proc/PID/ns/net`); 0 if unknown.
    pub netns: u32,
    /// The kernel's `enum skb_drop_reason` value; its name comes from BTF.
    pub reason: u32,
    /// Where the kernel dropped it, on kernels without drop reasons; else 0.
    pub location: u64,
}

crate::kernel_layout! {
    /// What the drop program needs of `kfree_skb` and its skb.
    /// Byte offsets and flags from the running kernel's BTF, in the read-only global
    /// `DROPS_LAYOUT`.
    pub struct DropsLayout in "DROPS_LAYOUT" {
        /// `sk_buff.dev`
        sk_buff_dev,
        /// 1 if `kfree_skb` passes `rx_sk` (kernel 6.12+), so receive-side drops keep their socket.
        kfree_skb_has_rx_sk,
        /// 1 if `kfree_skb` passes a drop reason (kernel 5.17+); without it drops are keyed by
        /// `location`, the code address that dropped the packet.
        kfree_skb_has_reason,
        /// `SKB_CONSUMED`: not a drop; older kernels report it through `kfree_skb`.
        drop_reason_consumed,
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    pub header: TraceHeader,
    /// Kernel text address of the function that dropped the packet (`location`).
    pub location: u64,
    pub endpoints: Endpoints,
    /// `enum skb_drop_reason` value.
    pub reason: u32,
    pub _pad: u32,
}

user_pod!(DropEvent, DropKey);
