//! DNS latency per workload and resolver, from `cgroup_skb` programs on the root cgroup
//! v2: egress sees every query a socket sends to port 53, ingress every response.
//!
//! A query and its response are matched by (socket cgroup, client address and port,
//! server address, transaction id, transport). The parser reads a fixed maximum of
//! bytes and counts anything it cannot parse as malformed; it never fails the packet:
//! both programs always let it through.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_skb_cgroup_id, bpf_skb_load_bytes},
    },
    macros::{cgroup_skb, map},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::SkBuffContext,
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use probe_common::{
    DnsCounters, DnsFlow, DnsHistogram, DnsLatencyKey, DnsQuery, DnsResolverKey, OverflowSlot,
    dns::{DNS_CAPTURE_BYTES, DnsEvent},
    dns::{
        DNS_COUNTERS_MAX_KEYS, DNS_IN_FLIGHT_MAX, DNS_LATENCY_MAX_KEYS, DNS_PORT, MAX_LABELS,
        PROTO_TCP, PROTO_UDP, QUESTION_BYTES, qtype_class,
    },
    trace::TraceKind,
};

use crate::{aggregate, trace};

/// `probe_common::dns::DNS_IN_FLIGHT_MAP`
#[map]
static DNS_IN_FLIGHT: HashMap<DnsFlow, DnsQuery> = HashMap::with_max_entries(DNS_IN_FLIGHT_MAX, 0);

/// `probe_common::dns::DNS_LATENCY_MAP`: values are large, so they are allocated on use
/// (socket programs, unlike tracing ones, may use such maps on every kernel).
#[map]
static DNS_LATENCY: HashMap<DnsLatencyKey, DnsHistogram> =
    HashMap::with_max_entries(DNS_LATENCY_MAX_KEYS, BPF_F_NO_PREALLOC);

/// `probe_common::dns::DNS_COUNTERS_MAP`
#[map]
static DNS_COUNTERS: PerCpuHashMap<DnsResolverKey, DnsCounters> =
    PerCpuHashMap::with_max_entries(DNS_COUNTERS_MAX_KEYS, 0);

static ZERO_HISTOGRAM: DnsHistogram = DnsHistogram::ZERO;

/// Room for the question section: too large for the 512-byte BPF stack next to the keys.
#[map]
static QUESTION_SCRATCH: PerCpuArray<[u8; QUESTION_BYTES]> = PerCpuArray::with_max_entries(1, 0);

/// cgroup_skb verdict: let the packet pass. The probe only observes.
const PASS: i32 = 1;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const DNS_HEADER: usize = 12;

#[cgroup_skb]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    if ports_in_place(&ctx).may_be(is_query)
        && let Some(packet) = parse_packet(&ctx)
        && is_query(packet.sport, packet.dport)
    {
        on_query(&ctx, &packet);
    }
    PASS
}

#[cgroup_skb]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    if ports_in_place(&ctx).may_be(is_response)
        && let Some(packet) = parse_packet(&ctx)
        && is_response(packet.sport, packet.dport)
    {
        on_response(&ctx, &packet);
    }
    PASS
}

/// A client's query: to port 53 from another port. A server's own traffic (its queries
/// in, its answers out) is neither a client query nor a client response.
#[inline(always)]
fn is_query(sport: u16, dport: u16) -> bool {
    dport == DNS_PORT && sport != DNS_PORT
}

#[inline(always)]
fn is_response(sport: u16, dport: u16) -> bool {
    sport == DNS_PORT && dport != DNS_PORT
}

/// What the packet's linear head says before any helper call: both programs run on
/// every packet every socket sends or receives, and nearly all of them are not DNS.
enum Gate {
    /// Not UDP or TCP, or a later fragment (no ports).
    NotDns,
    Ports(u16, u16),
    /// The headers reach past the linear part: the full parse decides.
    Unknown,
}

impl Gate {
    #[inline(always)]
    fn may_be(&self, wanted: fn(u16, u16) -> bool) -> bool {
        match *self {
            Gate::NotDns => false,
            Gate::Ports(sport, dport) => wanted(sport, dport),
            Gate::Unknown => true,
        }
    }
}

/// The packet's linear head: `data..end`, where it may be read in place.
#[inline(always)]
fn linear(ctx: &SkBuffContext) -> (*const u8, *const u8) {
    // SAFETY: the context is a valid `__sk_buff`.
    unsafe {
        (
            (*ctx.skb.skb).data as usize as *const u8,
            (*ctx.skb.skb).data_end as usize as *const u8,
        )
    }
}

/// A `T` at `offset` of the packet: read in place when the linear head holds it, else
/// copied with `bpf_skb_load_bytes`.
#[inline(always)]
fn load<T: Copy>(ctx: &SkBuffContext, offset: usize) -> Option<T> {
    let (data, end) = linear(ctx);
    let at = data.wrapping_add(offset);
    if at.wrapping_add(size_of::<T>()) <= end {
        // SAFETY: within `data..end`, checked just above; any alignment.
        return Some(unsafe { at.cast::<T>().read_unaligned() });
    }
    ctx.load(offset).ok()
}

#[inline(always)]
fn ports_in_place(ctx: &SkBuffContext) -> Gate {
    let (data, end) = linear(ctx);
    // SAFETY (all reads below): each is within `data..end`, checked just before it.
    let (proto, l4) = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            if data.wrapping_add(Ipv4Hdr::LEN) > end {
                return Gate::Unknown;
            }
            let version_ihl = unsafe { *data };
            let fragment = unsafe { [*data.wrapping_add(6), *data.wrapping_add(7)] };
            if u16::from_be_bytes(fragment) & 0x1fff != 0 {
                return Gate::NotDns;
            }
            (
                unsafe { *data.wrapping_add(9) },
                usize::from(version_ihl & 0x0f) * 4,
            )
        }
        ETH_P_IPV6 => {
            if data.wrapping_add(Ipv6Hdr::LEN) > end {
                return Gate::Unknown;
            }
            (unsafe { *data.wrapping_add(6) }, Ipv6Hdr::LEN)
        }
        _ => return Gate::NotDns,
    };
    if proto != PROTO_UDP && proto != PROTO_TCP {
        return Gate::NotDns;
    }
    // UDP and TCP both start with the source and destination ports.
    let ports = data.wrapping_add(l4);
    if ports.wrapping_add(4) > end {
        return Gate::Unknown;
    }
    unsafe {
        Gate::Ports(
            u16::from_be_bytes([*ports, *ports.wrapping_add(1)]),
            u16::from_be_bytes([*ports.wrapping_add(2), *ports.wrapping_add(3)]),
        )
    }
}

/// Addresses, ports and where the DNS message starts.
struct Packet {
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    /// Offset of the DNS message (after TCP's two-byte length prefix).
    message: usize,
    /// Bytes of the packet from `message` on; negative-free by construction.
    message_len: usize,
}

#[inline(always)]
fn parse_packet(ctx: &SkBuffContext) -> Option<Packet> {
    let len = ctx.skb.len() as usize;
    let (proto, src, dst, l4) = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            let ip: Ipv4Hdr = load(ctx, 0)?;
            // Only the first fragment carries the ports.
            if ip.frag_offset() != 0 {
                return None;
            }
            (
                ip.proto,
                mapped(ip.src_addr),
                mapped(ip.dst_addr),
                usize::from(ip.ihl()),
            )
        }
        ETH_P_IPV6 => {
            // Extension headers before the transport header are not followed.
            let ip: Ipv6Hdr = load(ctx, 0)?;
            (ip.next_hdr, ip.src_addr, ip.dst_addr, Ipv6Hdr::LEN)
        }
        _ => return None,
    };
    let (sport, dport, message) = match proto {
        PROTO_UDP => {
            let udp: UdpHdr = load(ctx, l4)?;
            (udp.src_port(), udp.dst_port(), l4 + UdpHdr::LEN)
        }
        PROTO_TCP => {
            let tcp: TcpHdr = load(ctx, l4)?;
            let ports = (u16::from_be_bytes(tcp.source), u16::from_be_bytes(tcp.dest));
            // Skip the two-byte length prefix of DNS over TCP.
            (ports.0, ports.1, l4 + usize::from(tcp.doff()) * 4 + 2)
        }
        _ => return None,
    };
    if proto == PROTO_TCP && len <= message {
        // SYN, ACK, FIN, or a lone length prefix: no DNS message in this segment.
        return None;
    }
    Some(Packet {
        proto,
        src,
        dst,
        sport,
        dport,
        message,
        message_len: len.saturating_sub(message),
    })
}

#[inline(always)]
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// The parts of a DNS header the probe uses.
struct Header {
    txid: u16,
    is_response: bool,
    opcode: u8,
    rcode: u8,
    questions: u16,
}

#[inline(always)]
fn header(ctx: &SkBuffContext, packet: &Packet) -> Option<Header> {
    if packet.message_len < DNS_HEADER {
        return None;
    }
    let raw: [u8; 6] = load(ctx, packet.message)?;
    let flags = u16::from_be_bytes([raw[2], raw[3]]);
    Some(Header {
        txid: u16::from_be_bytes([raw[0], raw[1]]),
        is_response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0x0f) as u8,
        rcode: (flags & 0x0f) as u8,
        questions: u16::from_be_bytes([raw[4], raw[5]]),
    })
}

#[inline(always)]
fn on_query(ctx: &SkBuffContext, packet: &Packet) {
    // SAFETY: the context is a valid skb.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let counters = DnsResolverKey {
        cgroup_id,
        resolver: packet.dst,
    };
    let Some(header) = header(ctx, packet) else {
        count(&counters, malformed());
        return;
    };
    if header.is_response || header.questions != 1 {
        count(&counters, malformed());
        return;
    }
    if header.opcode != 0 {
        // NOTIFY, UPDATE, ...: DNS, but not lookups.
        return;
    }
    let Some(qtype) = question_type(ctx, packet) else {
        count(&counters, malformed());
        return;
    };
    let flow = DnsFlow {
        cgroup_id,
        client: packet.src,
        server: packet.dst,
        client_port: packet.sport,
        txid: header.txid,
        proto: packet.proto,
        _pad: [0; 3],
    };
    let query = DnsQuery {
        // SAFETY: no preconditions.
        sent_ns: unsafe { bpf_ktime_get_ns() },
        qtype: qtype_class(qtype),
        _pad: [0; 7],
    };
    if DNS_IN_FLIGHT.insert(flow, query, 0).is_err() {
        aggregate::count_overflow(OverflowSlot::DnsInFlight);
    }
    count(
        &counters,
        DnsCounters {
            queries: 1,
            ..DnsCounters::default()
        },
    );
}

#[inline(always)]
fn on_response(ctx: &SkBuffContext, packet: &Packet) {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the context is a valid skb.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let counters = DnsResolverKey {
        cgroup_id,
        resolver: packet.src,
    };
    let Some(header) = header(ctx, packet) else {
        count(&counters, malformed());
        return;
    };
    if !header.is_response || header.questions != 1 {
        count(&counters, malformed());
        return;
    }
    let flow = DnsFlow {
        cgroup_id,
        client: packet.dst,
        server: packet.src,
        client_port: packet.dport,
        txid: header.txid,
        proto: packet.proto,
        _pad: [0; 3],
    };
    // SAFETY: copied out at once.
    let Some(query) = (unsafe { DNS_IN_FLIGHT.get(flow) }).copied() else {
        count(
            &counters,
            DnsCounters {
                unmatched: 1,
                ..DnsCounters::default()
            },
        );
        return;
    };
    let _ = DNS_IN_FLIGHT.remove(flow);
    let latency_ns = now.saturating_sub(query.sent_ns);
    if trace::enabled(TraceKind::Dns) {
        trace_response(ctx, packet, cgroup_id, now, latency_ns);
    }
    count(
        &counters,
        DnsCounters {
            responses: 1,
            ..DnsCounters::default()
        },
    );
    let key = DnsLatencyKey {
        cgroup_id,
        resolver: packet.src,
        rcode: header.rcode,
        qtype: query.qtype,
        _pad: [0; 6],
    };
    if let Some(histogram) = aggregate::shared_entry(
        &DNS_LATENCY,
        &key,
        &ZERO_HISTOGRAM,
        OverflowSlot::DnsLatency,
    ) {
        aggregate::record(histogram, latency_ns);
    }
}

/// Emits an answered query with a bounded copy of the response: the name, type and
/// response code are decoded in userspace, where a parser can afford to be careful.
#[inline(always)]
fn trace_response(ctx: &SkBuffContext, packet: &Packet, cgroup_id: u64, now: u64, latency_ns: u64) {
    let Some(mut entry) = trace::TRACE_EVENTS.reserve::<DnsEvent>(0) else {
        trace::lost(TraceKind::Dns);
        return;
    };
    let event = entry.as_mut_ptr();
    // A response reaches here only with a whole header, so `take` is 12..=CAPTURE.
    let take = if packet.message_len < DNS_CAPTURE_BYTES {
        packet.message_len
    } else {
        DNS_CAPTURE_BYTES
    };
    // The same value in a form whose bounds every verifier keeps (older ones lose them
    // through the clamp above); black_box stops the compiler from dropping the mask.
    const _: () = assert!(DNS_CAPTURE_BYTES.is_power_of_two());
    let take = ((core::hint::black_box(take).wrapping_sub(1)) & (DNS_CAPTURE_BYTES - 1)) + 1;
    // SAFETY: `event` is the reserved record; every field but the tail of `message`
    // (beyond `captured`) is written, and `take` is within 1..=DNS_CAPTURE_BYTES.
    unsafe {
        let loaded = bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            packet.message as u32,
            (&raw mut (*event).message).cast(),
            take as u32,
        );
        (*event).header = trace::header(TraceKind::Dns, cgroup_id, 0, now);
        (*event).latency_ns = latency_ns;
        (*event).resolver = packet.src;
        (*event).captured = if loaded == 0 { take as u32 } else { 0 };
        (*event).message_len = packet.message_len as u32;
        (*event).proto = packet.proto;
        (*event)._pad = [0; 7];
    }
    entry.submit(0);
}

/// The wire QTYPE of the single question, after walking its name's labels within the
/// first [`QUESTION_BYTES`] bytes; `None` if the name is not a plain label sequence.
#[inline(always)]
fn question_type(ctx: &SkBuffContext, packet: &Packet) -> Option<u16> {
    let available = packet.message_len.saturating_sub(DNS_HEADER);
    // The shortest question: the root name (one byte), QTYPE and QCLASS.
    if available < 5 {
        return None;
    }
    let take = if available < QUESTION_BYTES {
        available
    } else {
        QUESTION_BYTES
    };
    // Same value (5..=QUESTION_BYTES, a power of two), in a form whose bounds kernel 6.1's
    // verifier keeps: without it, it sees a possibly negative length.
    const _: () = assert!(QUESTION_BYTES.is_power_of_two());
    let take = ((take - 1) & (QUESTION_BYTES - 1)) + 1;
    let buf = QUESTION_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU map value, used by this program run only.
    let buf = unsafe { &mut *buf };
    // SAFETY: `buf` holds QUESTION_BYTES and `take` is within 5..=QUESTION_BYTES.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            (packet.message + DNS_HEADER) as u32,
            buf.as_mut_ptr().cast(),
            take as u32,
        )
    };
    if loaded != 0 {
        return None;
    }
    let mut pos = 0usize;
    let mut ended = false;
    for _ in 0..MAX_LABELS {
        if pos >= take {
            return None;
        }
        // black_box: see below; here the compiler knows pos < take <= QUESTION_BYTES.
        let label = buf[core::hint::black_box(pos) & (QUESTION_BYTES - 1)];
        if label == 0 {
            ended = true;
            break;
        }
        // A compression pointer (or a reserved label type) cannot start a question name.
        if label & 0xc0 != 0 {
            return None;
        }
        pos += usize::from(label) + 1;
    }
    // QTYPE and QCLASS follow the terminating zero.
    if !ended || pos + 4 >= take {
        return None;
    }
    // Opaque to the compiler, so the masks below stay: it would drop them as redundant
    // (pos + 4 < take <= QUESTION_BYTES), and kernel 6.1's verifier cannot see that bound
    // through a comparison of two registers.
    let pos = core::hint::black_box(pos);
    let high = buf[(pos + 1) & (QUESTION_BYTES - 1)];
    let low = buf[(pos + 2) & (QUESTION_BYTES - 1)];
    Some(u16::from_be_bytes([high, low]))
}

#[inline(always)]
fn malformed() -> DnsCounters {
    DnsCounters {
        malformed: 1,
        ..DnsCounters::default()
    }
}

#[inline(always)]
fn count(key: &DnsResolverKey, delta: DnsCounters) {
    aggregate::add(
        &DNS_COUNTERS,
        key,
        &delta,
        OverflowSlot::DnsCounters,
        |counters| counters.add(&delta),
    );
}
