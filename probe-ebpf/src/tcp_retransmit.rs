//! TCP retransmits per cgroup of the socket's owner.
//!
//! `tcp:tcp_retransmit_skb` often fires from a timer in softirq, where the current task
//! is unrelated, so the cgroup comes from the socket, never from the current task.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::PerCpuHashMap,
    programs::BtfTracePointContext,
};
use probe_common::{
    OverflowSlot, RetransmitCounters, RetransmitKey, tcp_retransmit::RetransmitEvent,
    tcp_retransmit::TCP_RETRANSMITS_MAX_CGROUPS, trace::TraceKind,
};

use crate::{
    aggregate,
    kernel::{self, layout},
    trace,
};

/// This signal's layout, as the loader resolved it from BTF (see `kernel::layout!`).
#[unsafe(no_mangle)]
pub(crate) static RETRANSMIT_LAYOUT: aya_ebpf::Global<
    probe_common::tcp_retransmit::RetransmitLayout,
> = aya_ebpf::Global::new(probe_common::tcp_retransmit::RetransmitLayout::UNRESOLVED);

/// `probe_common::tcp_retransmit::TCP_RETRANSMITS_MAP`: (cgroup id, netns) -> counters.
#[map]
static TCP_RETRANSMITS: PerCpuHashMap<RetransmitKey, RetransmitCounters> =
    PerCpuHashMap::with_max_entries(TCP_RETRANSMITS_MAX_CGROUPS, 0);

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    try_tcp_retransmit_skb(&ctx);
    0
}

#[inline(always)]
fn try_tcp_retransmit_skb(ctx: &BtfTracePointContext) {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    // Branch on a read-only global: the verifier prunes the read of a third argument on
    // kernels whose tracepoint has none.
    let err: i32 = if layout!(RETRANSMIT_LAYOUT, tcp_retransmit_has_err) != 0 {
        ctx.arg(2)
    } else {
        0
    };

    let sent = if err == 0 {
        // tcp_skb_pcount(): the segments this skb carries, as RetransSegs counts them.
        let segments: u16 = kernel::load(skb, layout!(RETRANSMIT_LAYOUT, sk_buff_tcp_gso_segs));
        RetransmitCounters {
            retransmits: 1,
            segments: u64::from(segments.max(1)),
            failed: 0,
        }
    } else {
        RetransmitCounters {
            retransmits: 0,
            segments: 0,
            failed: 1,
        }
    };

    let key = RetransmitKey {
        cgroup_id: kernel::sock_cgroup_id(sk),
        netns: kernel::sock_netns(sk),
        _reserved: 0,
    };
    aggregate::add(
        &TCP_RETRANSMITS,
        &key,
        &sent,
        OverflowSlot::TcpRetransmits,
        |counters| counters.add(&sent),
    );

    if trace::enabled(TraceKind::Retransmit) {
        let state: u8 = kernel::load(sk, layout!(crate::kernel::KERNEL_LAYOUT, sock_state));
        let event = RetransmitEvent {
            // SAFETY: no preconditions.
            header: trace::header(TraceKind::Retransmit, key.cgroup_id, key.netns, unsafe {
                bpf_ktime_get_ns()
            }),
            endpoints: trace::sock_endpoints(sk, 6),
            state: u32::from(state),
            failed: sent.failed as u32,
            segments: sent.segments as u32,
            _pad: 0,
        };
        trace::emit(TraceKind::Retransmit, &event);
    }
}
