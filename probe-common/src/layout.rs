//! Kernel facts the programs need, resolved from the running kernel's BTF at load time.
//!
//! Rust eBPF has no CO-RE relocations, so no struct offset is compiled in: the agent
//! fills a [`KernelLayout`] from `/sys/kernel/btf/vmlinux` and hands it to the programs
//! as the read-only global [`KERNEL_LAYOUT_GLOBAL`].

/// Name of the read-only global holding the [`KernelLayout`].
pub const KERNEL_LAYOUT_GLOBAL: &str = "KERNEL_LAYOUT";

/// Byte offsets of the fields the programs read, plus a few kernel capabilities.
///
/// Offsets that go through nested members (`sock.sk_cgrp_data.cgroup`) are summed: the
/// programs only ever read the final field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `sk_buff.sk`
    pub sk_buff_sk: u32,
    /// `sk_buff.dev`
    pub sk_buff_dev: u32,
    /// `sk_buff.cb` + `tcp_skb_cb.tcp_gso_segs`: the skb's segment count (`tcp_skb_pcount`).
    pub sk_buff_tcp_gso_segs: u32,
    /// `sock.__sk_common.skc_state`
    pub sock_state: u32,
    /// `sock.__sk_common.skc_net.net`
    pub sock_net: u32,
    /// `sock.sk_cgrp_data.cgroup`, or `sock.sk_cgrp_data.val` where `sock_cgroup_in_val`.
    pub sock_cgroup: u32,
    /// 1 where `sock_cgroup_data` is the union of kernels before 5.15: `val` holds the
    /// `struct cgroup *` unless one of the bits in `sock_cgroup_val_tags` is set.
    pub sock_cgroup_in_val: u32,
    /// The tag bits of `val` (`is_data`, and `no_refcnt` where present), from BTF.
    pub sock_cgroup_val_tags: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `kernfs_node.id`: the cgroup id userspace sees as the directory's inode number.
    pub kernfs_node_id: u32,
    /// `net_device.nd_net.net`
    pub net_device_net: u32,
    /// `net.ns.inum`
    pub net_inum: u32,
    /// 1 if `tcp_retransmit_skb` passes `err` (kernel 6.11+); without it every attempt counts as sent.
    pub tcp_retransmit_has_err: u32,
    /// 1 if `kfree_skb` passes `rx_sk` (kernel 6.12+), so receive-side drops keep their socket.
    pub kfree_skb_has_rx_sk: u32,
    /// 1 if `kfree_skb` passes a drop reason (kernel 5.17+); without it drops are keyed by
    /// `location`, the code address that dropped the packet.
    pub kfree_skb_has_reason: u32,
    /// `SKB_CONSUMED`: not a drop; older kernels report it through `kfree_skb`.
    pub drop_reason_consumed: u32,

    /// `request.q`
    pub request_queue: u32,
    /// `request_queue.disk`, or `request.rq_disk` where `request_has_rq_disk`.
    pub queue_disk: u32,
    /// 1 where the request names its disk itself, `request.rq_disk` (older kernels such as
    /// 5.10, whose `request_queue` has no `disk`): `queue_disk` is then that field's offset.
    pub request_has_rq_disk: u32,
    /// `gendisk.major`
    pub disk_major: u32,
    /// `gendisk.first_minor`
    pub disk_first_minor: u32,
    /// `request.cmd_flags`
    pub request_cmd_flags: u32,
    /// `request.__data_len`: bytes still to complete.
    pub request_data_len: u32,
    /// `request.start_time_ns`: when the request struct was allocated for this IO.
    pub request_start_time_ns: u32,
    /// `request.bio`
    pub request_bio: u32,
    /// `bio.bi_blkg`
    pub bio_blkg: u32,
    /// `blkcg_gq.blkcg`
    pub blkg_blkcg: u32,
    /// `blkcg.css.cgroup`
    pub blkcg_cgroup: u32,

    /// `task_struct.pid` (the thread id)
    pub task_pid: u32,
    /// `task_struct.cgroups` + `css_set.subsys[cpu_cgrp_id]`: the task's cpu css.
    pub task_cgroups: u32,
    pub css_set_cpu_css: u32,
    /// `cgroup_subsys_state.cgroup`
    pub css_cgroup: u32,
    /// 1: the throttle flag is on the task (`task_struct.throttled`, 6.18+);
    /// 0: on its cfs_rq (`task_struct.se.cfs_rq->throttle_count`, non-zero while it or
    /// an ancestor is throttled).
    pub throttle_per_task: u32,
    /// Byte holding the throttle flag, in the task or in the cfs_rq.
    pub throttled_byte: u32,
    /// Mask of the flag in that byte (0xff for a whole `bool`/`int`, one bit for a bitfield).
    pub throttled_mask: u32,
    /// `task_struct.se.cfs_rq`, when the flag is on the cfs_rq.
    pub task_cfs_rq: u32,
    /// 1 if `sched_switch` passes `prev_state` (5.18+): with the cfs_rq flag, a task
    /// that blocked is not a throttled one.
    pub sched_switch_has_prev_state: u32,

    // For `tuneprobe trace` only: a kernel without these fields still runs every
    // program, its events just lack addresses.
    /// 1 if the socket address fields below resolved.
    pub sock_addresses: u32,
    /// `sock.__sk_common.skc_family`
    pub sock_family: u32,
    /// `sock.__sk_common.skc_daddr` / `skc_rcv_saddr` (IPv4, network order)
    pub sock_daddr: u32,
    pub sock_rcv_saddr: u32,
    /// `sock.__sk_common.skc_dport` (network order) / `skc_num` (host order)
    pub sock_dport: u32,
    pub sock_num: u32,
    /// 1 if the IPv6 address fields resolved (kernels built with IPv6).
    pub sock_has_v6: u32,
    /// `sock.__sk_common.skc_v6_daddr` / `skc_v6_rcv_saddr`
    pub sock_v6_daddr: u32,
    pub sock_v6_rcv_saddr: u32,
    /// 1 if `sk_buff.head` and `sk_buff.network_header` resolved.
    pub skb_headers: u32,
    pub sk_buff_head: u32,
    pub sk_buff_network_header: u32,

    /// `sock.sk_protocol` (a `u16` since 5.6)
    pub sock_protocol: u32,
    /// `sock.sk_err`: why a connect failed.
    pub sock_err: u32,
    /// `tcp_sock.srtt_us` (smoothed RTT in µs, shifted left by 3)
    pub tcp_srtt_us: u32,
    /// `tcp_sock.rtt_min` + `minmax_sample.v`: the windowed minimum's best sample (µs).
    pub tcp_min_rtt_us: u32,
    /// `tcp_sock.segs_out`: 0 while not even a SYN went out.
    pub tcp_segs_out: u32,
}

impl KernelLayout {
    /// Placeholder compiled into the object; the loader always overrides it.
    pub const UNRESOLVED: Self = Self {
        sk_buff_sk: 0,
        sk_buff_dev: 0,
        sk_buff_tcp_gso_segs: 0,
        sock_state: 0,
        sock_net: 0,
        sock_cgroup: 0,
        sock_cgroup_in_val: 0,
        sock_cgroup_val_tags: 0,
        cgroup_kn: 0,
        kernfs_node_id: 0,
        net_device_net: 0,
        net_inum: 0,
        tcp_retransmit_has_err: 0,
        kfree_skb_has_rx_sk: 0,
        kfree_skb_has_reason: 0,
        drop_reason_consumed: 0,
        request_queue: 0,
        queue_disk: 0,
        request_has_rq_disk: 0,
        disk_major: 0,
        disk_first_minor: 0,
        request_cmd_flags: 0,
        request_data_len: 0,
        request_start_time_ns: 0,
        request_bio: 0,
        bio_blkg: 0,
        blkg_blkcg: 0,
        blkcg_cgroup: 0,
        task_pid: 0,
        task_cgroups: 0,
        css_set_cpu_css: 0,
        css_cgroup: 0,
        throttle_per_task: 0,
        throttled_byte: 0,
        throttled_mask: 0,
        task_cfs_rq: 0,
        sched_switch_has_prev_state: 0,
        sock_addresses: 0,
        sock_family: 0,
        sock_daddr: 0,
        sock_rcv_saddr: 0,
        sock_dport: 0,
        sock_num: 0,
        sock_has_v6: 0,
        sock_v6_daddr: 0,
        sock_v6_rcv_saddr: 0,
        skb_headers: 0,
        sk_buff_head: 0,
        sk_buff_network_header: 0,
        sock_protocol: 0,
        sock_err: 0,
        tcp_srtt_us: 0,
        tcp_min_rtt_us: 0,
        tcp_segs_out: 0,
    };
}
