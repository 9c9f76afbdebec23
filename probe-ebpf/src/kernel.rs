//! Reads of kernel structs at offsets the agent resolved from BTF.

use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};
use probe_common::KernelLayout;

#[unsafe(no_mangle)]
static KERNEL_LAYOUT: Global<KernelLayout> = Global::new(KernelLayout::UNRESOLVED);

// `include/net/tcp_states.h`: part of the user ABI (inet_diag), the same on every kernel.
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;

#[inline(always)]
pub fn layout() -> KernelLayout {
    KERNEL_LAYOUT.load()
}

/// Reads a `T` at `base + offset`.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad pointer returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}

/// Cgroup v2 id of a socket's owner, or 0 for sockets that carry no cgroup (time-wait
/// and request sockets are smaller structs than `struct sock`).
#[inline(always)]
pub fn sock_cgroup_id(layout: &KernelLayout, sk: *const u8) -> u64 {
    let state: u8 = read(sk, layout.sock_state).unwrap_or(TCP_TIME_WAIT);
    if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
        return 0;
    }
    read::<*const u8>(sk, layout.sock_cgroup)
        .map(|cgroup| cgroup_id(layout, cgroup))
        .unwrap_or(0)
}

/// Id of a `struct cgroup` (its kernfs node id, the directory's inode number); 0 if null.
#[inline(always)]
pub fn cgroup_id(layout: &KernelLayout, cgroup: *const u8) -> u64 {
    if cgroup.is_null() {
        return 0;
    }
    let Ok(kn) = read::<*const u8>(cgroup, layout.cgroup_kn) else {
        return 0;
    };
    if kn.is_null() {
        return 0;
    }
    read(kn, layout.kernfs_node_id).unwrap_or(0)
}

/// Follows a chain of pointers from `base` (each read at the next offset), stopping at
/// the first null; returns the last pointer.
#[inline(always)]
pub fn follow<const N: usize>(base: *const u8, offsets: [u32; N]) -> *const u8 {
    let mut ptr = base;
    for offset in offsets {
        if ptr.is_null() {
            return ptr;
        }
        ptr = read(ptr, offset).unwrap_or(core::ptr::null());
    }
    ptr
}

/// Network namespace inode of a socket (any kind: `sock_common` is shared by all).
#[inline(always)]
pub fn sock_netns(layout: &KernelLayout, sk: *const u8) -> u32 {
    read::<*const u8>(sk, layout.sock_net)
        .map(|net| net_inum(layout, net))
        .unwrap_or(0)
}

/// Network namespace inode of a network device.
#[inline(always)]
pub fn device_netns(layout: &KernelLayout, dev: *const u8) -> u32 {
    if dev.is_null() {
        return 0;
    }
    read::<*const u8>(dev, layout.net_device_net)
        .map(|net| net_inum(layout, net))
        .unwrap_or(0)
}

#[inline(always)]
fn net_inum(layout: &KernelLayout, net: *const u8) -> u32 {
    if net.is_null() {
        return 0;
    }
    read(net, layout.net_inum).unwrap_or(0)
}
