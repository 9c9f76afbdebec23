//! Packet drops with the kernel's drop reason, per socket cgroup or network namespace.
//!
//! Kernels before 5.17 pass no reason (`kfree_skb(skb, location)`): there a drop is
//! keyed by its location, the code address that called `kfree_skb`, which the agent
//! names from `/proc/kallsyms`. Which kind of kernel this is comes from BTF at load time
//! (`kfree_skb_has_reason`), a verifier constant: the other branch is pruned.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::PerCpuHashMap,
    programs::BtfTracePointContext,
};
use probe_common::{
    DropKey, OverflowSlot, drops::DROPS_MAX_KEYS, drops::DropEvent, trace::TraceKind,
};

use crate::{
    aggregate,
    kernel::{self, layout},
    trace,
};

/// This signal's layout, as the loader resolved it from BTF (see `kernel::layout!`).
#[unsafe(no_mangle)]
pub(crate) static DROPS_LAYOUT: aya_ebpf::Global<probe_common::drops::DropsLayout> =
    aya_ebpf::Global::new(probe_common::drops::DropsLayout::UNRESOLVED);

/// `probe_common::drops::DROPS_MAP`: (owner, reason) -> drops.
#[map]
static DROPS: PerCpuHashMap<DropKey, u64> = PerCpuHashMap::with_max_entries(DROPS_MAX_KEYS, 0);

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    try_kfree_skb(&ctx);
    0
}

#[inline(always)]
fn try_kfree_skb(ctx: &BtfTracePointContext) {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let (reason, key_location) = if layout!(DROPS_LAYOUT, kfree_skb_has_reason) != 0 {
        let reason: u32 = ctx.arg(2);
        if reason == layout!(DROPS_LAYOUT, drop_reason_consumed) {
            return;
        }
        (reason, 0)
    } else {
        // These kernels free a consumed skb through `consume_skb`, which has its own
        // tracepoint: there is nothing to filter out here.
        (0, location)
    };

    // Transmit-side drops carry the socket in skb->sk; receive-side drops of 6.12+
    // kernels pass it as rx_sk (the skb is not yet owned there).
    let mut sk: *const u8 = kernel::load(skb, layout!(crate::kernel::KERNEL_LAYOUT, sk_buff_sk));
    if sk.is_null() && layout!(DROPS_LAYOUT, kfree_skb_has_rx_sk) != 0 {
        sk = ctx.arg(3);
    }

    let key = if sk.is_null() {
        // No socket (closed port, firewall on input): the device's namespace tells whose
        // traffic it was.
        let dev: *const u8 = kernel::load(skb, layout!(DROPS_LAYOUT, sk_buff_dev));
        DropKey {
            cgroup_id: 0,
            netns: kernel::device_netns(dev),
            reason,
            location: key_location,
        }
    } else {
        DropKey {
            cgroup_id: kernel::sock_cgroup_id(sk),
            netns: kernel::sock_netns(sk),
            reason,
            location: key_location,
        }
    };
    aggregate::add(&DROPS, &key, &1, OverflowSlot::Drops, |count| *count += 1);

    if trace::enabled(TraceKind::Drop) {
        let event = DropEvent {
            // SAFETY: no preconditions.
            header: trace::header(TraceKind::Drop, key.cgroup_id, key.netns, unsafe {
                bpf_ktime_get_ns()
            }),
            location,
            endpoints: trace::skb_endpoints(skb),
            reason,
            _pad: 0,
        };
        trace::emit(TraceKind::Drop, &event);
    }
}
