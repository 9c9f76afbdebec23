//! Types shared between the kernel programs (`probe-ebpf`) and the agent (`probe-user`).
//!
//! Every struct is `#[repr(C)]` without implicit padding, because both sides read the
//! same bytes out of BPF maps: a flag is a `u32`, never a `bool`.
#![no_std]

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
pub use overflow::OverflowSlot;
pub use tcp_connections::{ConnectionCounters, ConnectionKey, ConnectionTimes};
pub use tcp_retransmit::{RetransmitCounters, RetransmitKey};

/// Marks a type as plain old data for aya's map accessors.
#[cfg(feature = "user")]
macro_rules! user_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            // SAFETY: `#[repr(C)]`, only integer fields, no padding.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}

// SAFETY: `#[repr(C)]`, only `u64` fields and arrays of them.
#[cfg(feature = "user")]
unsafe impl<const N: usize, const SUB: u32> aya::Pod for LatencyHistogram<N, SUB> {}

#[cfg(feature = "user")]
user_pod!(
    BlockKey,
    BlockStats,
    ConnectionCounters,
    ConnectionKey,
    ConnectionTimes,
    DnsCounters,
    DnsFlow,
    DnsLatencyKey,
    DnsQuery,
    DnsResolverKey,
    DropKey,
    InFlightRequest,
    RetransmitCounters,
    RetransmitKey,
    ThrottleStats,
    ThrottledTask,
    trace::TraceConfig,
    trace::TraceHeader,
    trace::RetransmitEvent,
    trace::DropEvent,
    trace::DnsEvent,
    trace::BlockEvent,
    trace::ThrottleEvent,
    trace::ConnectionEvent,
);
