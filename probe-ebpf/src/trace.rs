//! Per-event output for `tuneprobe trace`, shared by the signal modules.
//!
//! Gated by a read-only global the loader sets only for `trace`: elsewhere the verifier
//! sees `kinds == 0` as a constant and drops the emitting code, so `serve` and
//! `snapshot` pay nothing for it.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use probe_common::trace::{Endpoints, TRACE_RING_IDLE_BYTES, TraceConfig, TraceHeader, TraceKind};

use crate::kernel::{self, layout};

/// This signal's layout, as the loader resolved it from BTF (see `kernel::layout!`).
#[unsafe(no_mangle)]
pub(crate) static TRACE_LAYOUT: aya_ebpf::Global<probe_common::trace::TraceLayout> =
    aya_ebpf::Global::new(probe_common::trace::TraceLayout::UNRESOLVED);

#[unsafe(no_mangle)]
static TRACE_CONFIG: Global<TraceConfig> = Global::new(TraceConfig::OFF);

/// `probe_common::trace::TRACE_EVENTS_MAP`; `trace` resizes it at load time.
#[map]
pub static TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(TRACE_RING_IDLE_BYTES, 0);

/// `probe_common::trace::TRACE_LOST_MAP`: records that did not fit, per kind.
#[map]
static TRACE_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(TraceKind::COUNT, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[inline(always)]
pub fn enabled(kind: TraceKind) -> bool {
    TRACE_CONFIG.load().kinds & kind.bit() != 0
}

#[inline(always)]
pub fn min_block_ns() -> u64 {
    TRACE_CONFIG.load().min_block_ns
}

#[inline(always)]
pub fn header(kind: TraceKind, cgroup_id: u64, netns: u32, time_ns: u64) -> TraceHeader {
    TraceHeader {
        kind: kind as u32,
        netns,
        time_ns,
        cgroup_id,
    }
}

/// Copies a small event into the ring buffer; counts it if it does not fit.
#[inline(always)]
pub fn emit<T>(kind: TraceKind, event: &T) {
    if TRACE_EVENTS.output::<T>(event, 0).is_err() {
        lost(kind);
    }
}

#[inline(always)]
pub fn lost(kind: TraceKind) {
    if let Some(count) = TRACE_LOST.get_ptr_mut(kind as u32) {
        // SAFETY: per-CPU slot, only this CPU's running program touches it.
        unsafe { *count += 1 };
    }
}

/// A socket's addresses and ports, from its `sock_common`.
#[inline(always)]
pub fn sock_endpoints(sk: *const u8, protocol: u8) -> Endpoints {
    let mut out = Endpoints::default();
    if layout!(TRACE_LAYOUT, sock_addresses) == 0 || sk.is_null() {
        return out;
    }
    let family: u16 = kernel::load(sk, layout!(TRACE_LAYOUT, sock_family));
    out.family = family;
    out.protocol = protocol;
    out.sport = kernel::load(sk, layout!(TRACE_LAYOUT, sock_num));
    out.dport = u16::from_be(kernel::load(sk, layout!(TRACE_LAYOUT, sock_dport)));
    // Addresses are copied whole: the helper takes any size, a direct load at most 8
    // bytes, and this path only runs for `tuneprobe trace`.
    if family == AF_INET {
        let s: [u8; 4] = kernel::read(sk, layout!(TRACE_LAYOUT, sock_rcv_saddr)).unwrap_or([0; 4]);
        let d: [u8; 4] = kernel::read(sk, layout!(TRACE_LAYOUT, sock_daddr)).unwrap_or([0; 4]);
        out.saddr = mapped(s);
        out.daddr = mapped(d);
    } else if family == AF_INET6 && layout!(TRACE_LAYOUT, sock_has_v6) != 0 {
        out.saddr = kernel::read(sk, layout!(TRACE_LAYOUT, sock_v6_rcv_saddr)).unwrap_or([0; 16]);
        out.daddr = kernel::read(sk, layout!(TRACE_LAYOUT, sock_v6_daddr)).unwrap_or([0; 16]);
    } else {
        out.family = 0;
    }
    out
}

/// A packet's addresses, protocol and ports, from its network header (IPv4, or IPv6
/// without extension headers). Unknown parts stay zero.
#[inline(always)]
pub fn skb_endpoints(skb: *const u8) -> Endpoints {
    let mut out = Endpoints::default();
    if layout!(TRACE_LAYOUT, skb_headers) == 0 {
        return out;
    }
    // `head` points at bytes the verifier has no type for: read behind it with the helper.
    let head: *const u8 = kernel::load(skb, layout!(TRACE_LAYOUT, sk_buff_head));
    let network: u16 = kernel::load(skb, layout!(TRACE_LAYOUT, sk_buff_network_header));
    // `~0` means unset; a header past 4 KiB of headroom is not one we trust.
    if head.is_null() || network >= 4096 {
        return out;
    }
    let ip = head.wrapping_add(usize::from(network));
    let first: u8 = kernel::read(ip, 0).unwrap_or(0);
    let l4 = match first >> 4 {
        4 => {
            out.family = AF_INET;
            out.protocol = kernel::read(ip, 9).unwrap_or(0);
            out.saddr = mapped(kernel::read(ip, 12).unwrap_or([0; 4]));
            out.daddr = mapped(kernel::read(ip, 16).unwrap_or([0; 4]));
            let fragment: [u8; 2] = kernel::read(ip, 6).unwrap_or([0xff; 2]);
            // Only the first fragment carries the ports.
            if u16::from_be_bytes(fragment) & 0x1fff != 0 {
                return out;
            }
            u32::from(first & 0x0f) * 4
        }
        6 => {
            out.family = AF_INET6;
            out.protocol = kernel::read(ip, 6).unwrap_or(0);
            out.saddr = kernel::read(ip, 8).unwrap_or([0; 16]);
            out.daddr = kernel::read(ip, 24).unwrap_or([0; 16]);
            40
        }
        _ => return out,
    };
    if out.protocol == IPPROTO_TCP || out.protocol == IPPROTO_UDP {
        let ports: [u8; 4] = kernel::read(ip, l4).unwrap_or([0; 4]);
        out.sport = u16::from_be_bytes([ports[0], ports[1]]);
        out.dport = u16::from_be_bytes([ports[2], ports[3]]);
    }
    out
}

#[inline(always)]
pub fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}
