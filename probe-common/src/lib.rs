//! Types shared between the kernel programs (`probe-ebpf`) and the agent (`probe-user`).
//!
//! Every struct is `#[repr(C)]` without implicit padding, because both sides read the
//! same bytes out of BPF maps: a flag is a `u32`, never a `bool`.
#![no_std]

/// Marks a module's map and record types as plain old data for aya's map accessors
/// (the agent's side only); each module lists its own.
macro_rules! user_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            // SAFETY: `#[repr(C)]`, only integer fields, no padding.
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $ty {}
        )*
    };
}

pub mod block_io;
pub mod cpu_throttle;
pub mod dns;
pub mod drops;
pub mod histogram;
pub mod layout;
pub mod overflow;
pub mod tcp_connections;
pub mod tcp_retransmit;
pub mod trace;

pub use block_io::{BlockKey, BlockStats, InFlightRequest};
pub use cpu_throttle::{ThrottleStats, ThrottledTask};
pub use dns::{DnsCounters, DnsFlow, DnsLatencyKey, DnsQuery, DnsResolverKey};
pub use drops::DropKey;
pub use histogram::{DnsHistogram, LatencyHistogram};
pub use layout::KernelLayout;
pub use tcp_connections::{ConnectionCounters, ConnectionKey, ConnectionTimes};
pub use tcp_retransmit::{RetransmitCounters, RetransmitKey};

/// Declares the signals' shared index spaces, one line per signal: the kind of its
/// `trace` records (`TraceKind`, a bit of `TraceConfig::kinds` and a slot of
/// `TRACE_LOST`) and its maps' slots in `MAP_OVERFLOWS` (`OverflowSlot`, each naming the
/// map whose full updates it counts). Both sides index with them, so a signal adds its
/// line here and nothing in the shared modules.
macro_rules! signals {
    ($(
        $module:ident: $kind:ident [$($(#[$doc:meta])* $slot:ident => $map:ident),+ $(,)?]
    ),+ $(,)?) => {
        /// The kind of a `trace` record, one per signal.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum TraceKind {
            $($kind,)+
        }

        impl TraceKind {
            pub const ALL: &'static [Self] = &[$(Self::$kind,)+];
            pub const COUNT: u32 = Self::ALL.len() as u32;
        }

        /// A slot of `MAP_OVERFLOWS`: updates of one map lost because it was full.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum OverflowSlot {
            $($($(#[$doc])* $slot,)+)+
        }

        impl OverflowSlot {
            pub const ALL: &'static [Self] = &[$($(Self::$slot,)+)+];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// The map whose updates this slot counts.
            pub const fn map_name(self) -> &'static str {
                match self {
                    $($(Self::$slot => $module::$map,)+)+
                }
            }
        }
    };
}

signals! {
    tcp_retransmit: Retransmit [TcpRetransmits => TCP_RETRANSMITS_MAP],
    drops: Drop [Drops => DROPS_MAP],
    dns: Dns [
        DnsInFlight => DNS_IN_FLIGHT_MAP,
        DnsLatency => DNS_LATENCY_MAP,
        DnsCounters => DNS_COUNTERS_MAP,
    ],
    block_io: Block [
        BlockIo => BLOCK_IO_MAP,
        /// Not a full map: completions whose request had no in-flight state (the map
        /// was full at its insert, or it was issued before the probe attached).
        BlockInFlight => BLOCK_IN_FLIGHT_MAP,
    ],
    cpu_throttle: Throttle [CpuThrottle => CPU_THROTTLE_MAP],
    tcp_connections: Connection [
        TcpConnections => TCP_CONNECTIONS_MAP,
        TcpConnectionTimes => TCP_CONNECTION_TIMES_MAP,
    ],
}
