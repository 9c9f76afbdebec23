//! DNS latency from the dataplane: queries leaving a workload's sockets are matched with
//! the responses coming back, by (socket cgroup, addresses, ports, transaction id).

use crate::trace::TraceHeader;

/// Hash map: [`DnsFlow`] -> [`DnsQuery`], queries waiting for their response. Userspace
/// removes the ones older than the timeout and counts them as timeouts.
pub const DNS_IN_FLIGHT_MAP: &str = "DNS_IN_FLIGHT";
pub const DNS_IN_FLIGHT_MAX: u32 = 16_384;
/// Hash map: [`DnsLatencyKey`] -> [`crate::DnsHistogram`], shared values with atomic
/// adds, allocated on use (5.9 KiB per key with traffic).
pub const DNS_LATENCY_MAP: &str = "DNS_LATENCY";
pub const DNS_LATENCY_MAX_KEYS: u32 = 4096;
/// Per-CPU hash map: [`DnsResolverKey`] -> [`DnsCounters`].
pub const DNS_COUNTERS_MAP: &str = "DNS_COUNTERS";
pub const DNS_COUNTERS_MAX_KEYS: u32 = 8192;

/// The DNS port, for UDP and TCP.
pub const DNS_PORT: u16 = 53;
/// Bytes of the question section the kernel parser looks at: a longer query name is
/// counted as malformed (the longest legal name is 255 bytes; real ones are far shorter).
pub const QUESTION_BYTES: usize = 128;
/// Labels the kernel parser walks at most.
pub const MAX_LABELS: usize = 32;

/// Transport, in keys.
pub const PROTO_UDP: u8 = 17;
pub const PROTO_TCP: u8 = 6;

/// Query types kept apart; everything else is [`QTYPE_OTHER`].
pub const QTYPE_A: u8 = 1;
pub const QTYPE_AAAA: u8 = 2;
pub const QTYPE_SRV: u8 = 3;
pub const QTYPE_PTR: u8 = 4;
pub const QTYPE_OTHER: u8 = 0;

/// Folds a wire query type into the small set above.
#[inline(always)]
pub fn qtype_class(wire: u16) -> u8 {
    match wire {
        1 => QTYPE_A,
        28 => QTYPE_AAAA,
        33 => QTYPE_SRV,
        12 => QTYPE_PTR,
        _ => QTYPE_OTHER,
    }
}

/// An IPv4 address is stored as `::ffff:a.b.c.d`, so one key type covers both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsFlow {
    pub cgroup_id: u64,
    pub client: [u8; 16],
    pub server: [u8; 16],
    pub client_port: u16,
    pub txid: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// A query in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsQuery {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when it left.
    pub sent_ns: u64,
    pub qtype: u8,
    pub _pad: [u8; 7],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsResolverKey {
    pub cgroup_id: u64,
    pub resolver: [u8; 16],
}

/// Counts per (workload, resolver).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCounters {
    pub queries: u64,
    pub responses: u64,
    /// Responses that matched no query in flight (late after a timeout, or a query sent
    /// before the probe attached).
    pub unmatched: u64,
    /// Packets to or from port 53 that are not a parsable DNS message.
    pub malformed: u64,
}

impl DnsCounters {
    pub fn add(&mut self, other: &Self) {
        self.queries += other.queries;
        self.responses += other.responses;
        self.unmatched += other.unmatched;
        self.malformed += other.malformed;
    }

    /// What happened since `earlier` (never negative).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            queries: self.queries.saturating_sub(earlier.queries),
            responses: self.responses.saturating_sub(earlier.responses),
            unmatched: self.unmatched.saturating_sub(earlier.unmatched),
            malformed: self.malformed.saturating_sub(earlier.malformed),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsLatencyKey {
    pub cgroup_id: u64,
    pub resolver: [u8; 16],
    pub rcode: u8,
    /// One of the `QTYPE_*` classes.
    pub qtype: u8,
    pub _pad: [u8; 6],
}

/// Bytes of a DNS message copied into a [`DnsEvent`]: enough for the header and any
/// realistic question; the userspace decoder checks every bound.
pub const DNS_CAPTURE_BYTES: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    pub header: TraceHeader,
    pub latency_ns: u64,
    pub resolver: [u8; 16],
    /// Bytes of the response message in `message` (at most [`DNS_CAPTURE_BYTES`]).
    pub captured: u32,
    /// The whole message's length on the wire.
    pub message_len: u32,
    pub proto: u8,
    pub _pad: [u8; 7],
    pub message: [u8; DNS_CAPTURE_BYTES],
}

user_pod!(
    DnsEvent,
    DnsCounters,
    DnsFlow,
    DnsLatencyKey,
    DnsQuery,
    DnsResolverKey
);
