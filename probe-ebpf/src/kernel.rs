//! Reads of kernel structs at offsets the agent resolved from BTF.
//!
//! The programs are BTF tracepoints, so their pointer arguments are typed: the verifier
//! knows `rq` is a `struct request *` and lets the program load its fields directly,
//! checking each load against the kernel's own type at that offset and turning it into
//! a fault-safe load (a bad address reads as zero). Pointers loaded that way are typed
//! too (`rq->bio` is a `struct bio *`), so whole chains need no helper call, where a
//! `bpf_probe_read_kernel` costs about 25 ns each (`cargo xtask bench`). This only works
//! because the offsets are verifier constants: they live in a frozen read-only map (see
//! [`layout!`]).

use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};
use probe_common::KernelLayout;

/// The reads every signal shares (a socket's cgroup and namespace); each signal's own
/// fields are in its module's layout global (`block_io::BLOCK_LAYOUT`, ...).
#[unsafe(no_mangle)]
pub(crate) static KERNEL_LAYOUT: Global<KernelLayout> = Global::new(KernelLayout::UNRESOLVED);

// `include/net/tcp_states.h`: part of the user ABI (inet_diag), the same on every kernel.
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;

/// A layout global's value as the loader wrote it (`Global` is transparent over it).
#[inline(always)]
pub fn layout_ptr<T>(global: &Global<T>) -> *const T {
    (global as *const Global<T>).cast()
}

/// One field of a layout global, e.g. `layout!(KERNEL_LAYOUT, sk_buff_sk)`: a volatile
/// load of just that field, so the compiler cannot fold in the placeholder and nothing
/// else is copied. The globals live in `.rodata`, which the loader freezes, so the
/// verifier reads the loaded value as a constant: a branch on a flag is pruned and
/// `base + offset` stays a typed pointer.
macro_rules! layout {
    ($global:path, $field:ident) => {
        // SAFETY: `layout_ptr` points at an initialized, never-written layout.
        unsafe {
            core::ptr::read_volatile(&raw const (*$crate::kernel::layout_ptr(&$global)).$field)
        }
    };
}
pub(crate) use layout;

/// Loads a `T` at `base + offset`, where `base` is a pointer the verifier types from BTF
/// (a BTF tracepoint's argument, or a pointer loaded from one). The verifier rejects the
/// program at load time if the offset is not inside a field of `T`'s size.
#[inline(always)]
pub fn load<T: Copy>(base: *const u8, offset: u32) -> T {
    // SAFETY: a BPF load from a BTF-typed pointer; the kernel makes a faulting address
    // read as zero, and every `T` used here is an integer or a pointer.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>()) }
}

/// Reads a `T` at `base + offset` through `bpf_probe_read_kernel`: for memory the
/// verifier has no type for (packet bytes behind `skb->head`).
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad pointer returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}

/// Cgroup v2 id of a socket's owner, or 0 for sockets that carry no cgroup (time-wait
/// and request sockets are smaller structs than `struct sock`).
#[inline(always)]
pub fn sock_cgroup_id(sk: *const u8) -> u64 {
    if sk.is_null() {
        return 0;
    }
    let state: u8 = load(sk, layout!(KERNEL_LAYOUT, sock_state));
    if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
        return 0;
    }
    if layout!(KERNEL_LAYOUT, sock_cgroup_in_val) != 0 {
        return sock_cgroup_val_id(load(sk, layout!(KERNEL_LAYOUT, sock_cgroup)));
    }
    cgroup_id(load(sk, layout!(KERNEL_LAYOUT, sock_cgroup)))
}

/// Cgroup v2 id from `sock_cgroup_data.val` (kernels before 5.15, e.g. 5.10), where the
/// socket's `struct cgroup *` shares a `u64` with the cgroup v1 net_prio/net_cls data.
///
/// As the kernel's own `sock_cgroup_ptr()` reads it: with a tag bit set (`is_data`: the
/// socket carries a prioidx and classid instead, once net_prio or net_cls was used on a
/// v1 hierarchy; `no_refcnt`) or a null pointer, the kernel counts the socket in the root
/// cgroup. That names no workload, so such sockets get 0, unattributed: their counts go
/// to the owner of the socket's network namespace, as for time-wait sockets.
#[inline(always)]
fn sock_cgroup_val_id(val: u64) -> u64 {
    if val == 0 || val & u64::from(layout!(KERNEL_LAYOUT, sock_cgroup_val_tags)) != 0 {
        return 0;
    }
    // A number to the verifier, not a typed pointer: read through the helper.
    let cgroup = val as *const u8;
    let kn: *const u8 =
        read(cgroup, layout!(KERNEL_LAYOUT, cgroup_kn)).unwrap_or(core::ptr::null());
    if kn.is_null() {
        return 0;
    }
    read(kn, layout!(KERNEL_LAYOUT, kernfs_node_id)).unwrap_or(0)
}

/// Id of a `struct cgroup` (its kernfs node id, the directory's inode number); 0 if null.
#[inline(always)]
pub fn cgroup_id(cgroup: *const u8) -> u64 {
    if cgroup.is_null() {
        return 0;
    }
    let kn: *const u8 = load(cgroup, layout!(KERNEL_LAYOUT, cgroup_kn));
    if kn.is_null() {
        return 0;
    }
    load(kn, layout!(KERNEL_LAYOUT, kernfs_node_id))
}

/// Follows a chain of pointers from `base` (each loaded at the next offset), stopping at
/// the first null; returns the last pointer.
#[inline(always)]
pub fn follow<const N: usize>(base: *const u8, offsets: [u32; N]) -> *const u8 {
    let mut ptr = base;
    for offset in offsets {
        if ptr.is_null() {
            return ptr;
        }
        ptr = load(ptr, offset);
    }
    ptr
}

/// Network namespace inode of a socket (any kind: `sock_common` is shared by all).
#[inline(always)]
pub fn sock_netns(sk: *const u8) -> u32 {
    if sk.is_null() {
        return 0;
    }
    net_inum(load(sk, layout!(KERNEL_LAYOUT, sock_net)))
}

/// Network namespace inode of a network device.
#[inline(always)]
pub fn device_netns(dev: *const u8) -> u32 {
    if dev.is_null() {
        return 0;
    }
    net_inum(load(dev, layout!(KERNEL_LAYOUT, net_device_net)))
}

#[inline(always)]
fn net_inum(net: *const u8) -> u32 {
    if net.is_null() {
        return 0;
    }
    load(net, layout!(KERNEL_LAYOUT, net_inum))
}
