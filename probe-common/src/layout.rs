//! Kernel facts the programs need, resolved from the running kernel's BTF at load time.
//!
//! Rust eBPF has no CO-RE relocations, so no struct offset is compiled in: the agent
//! fills each layout from `/sys/kernel/btf/vmlinux` and hands it to the programs as a
//! read-only global: [`KernelLayout`] for the reads every signal shares (a socket's
//! cgroup and namespace), and one per signal in the signal's own module
//! (`block_io::BlockLayout`, ...), declared with `kernel_layout!`.

/// Declares a layout: a `#[repr(C)]` struct of `u32` byte offsets and flags that the
/// agent fills from BTF and hands to the programs as the read-only global named after
/// `in` (its `GLOBAL`), with the all-zero placeholder compiled into the object
/// (`UNRESOLVED`) and, for the agent, aya's `Pod`.
#[macro_export]
macro_rules! kernel_layout {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident in $global:literal {
            $($(#[$field_meta:meta])* $field:ident,)*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        $vis struct $name {
            $($(#[$field_meta])* pub $field: u32,)*
        }

        impl $name {
            /// Name of the read-only global the programs read it from.
            pub const GLOBAL: &'static str = $global;
            /// Placeholder compiled into the object; the loader always overrides it.
            pub const UNRESOLVED: Self = Self { $($field: 0,)* };
        }

        // SAFETY: `#[repr(C)]`, only `u32` fields, no padding.
        #[cfg(feature = "user")]
        unsafe impl aya::Pod for $name {}
    };
}

kernel_layout! {
    /// The reads every signal shares: a socket's or a device's cgroup and network
    /// namespace (`probe-ebpf/src/kernel.rs`). Offsets that go through nested members
    /// (`sock.sk_cgrp_data.cgroup`) are summed: the programs only ever read the final
    /// field.
    pub struct KernelLayout in "KERNEL_LAYOUT" {
        /// `sk_buff.sk`
        sk_buff_sk,
        /// `sock.__sk_common.skc_state`
        sock_state,
        /// `sock.__sk_common.skc_net.net`
        sock_net,
        /// `sock.sk_cgrp_data.cgroup`, or `sock.sk_cgrp_data.val` where `sock_cgroup_in_val`.
        sock_cgroup,
        /// 1 where `sock_cgroup_data` is the union of kernels before 5.15: `val` holds the
        /// `struct cgroup *` unless one of the bits in `sock_cgroup_val_tags` is set.
        sock_cgroup_in_val,
        /// The tag bits of `val` (`is_data`, and `no_refcnt` where present), from BTF.
        sock_cgroup_val_tags,
        /// `cgroup.kn`
        cgroup_kn,
        /// `kernfs_node.id`: the cgroup id userspace sees as the directory's inode number.
        kernfs_node_id,
        /// `net_device.nd_net.net`
        net_device_net,
        /// `net.ns.inum`
        net_inum,
    }
}
