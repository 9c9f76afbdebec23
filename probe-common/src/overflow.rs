//! Updates lost because a bounded map was full.

/// Per-CPU array indexed by [`OverflowSlot`]: updates that could not insert a new key.
pub const MAP_OVERFLOWS_MAP: &str = "MAP_OVERFLOWS";

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverflowSlot {
    TcpRetransmits = 0,
    Drops = 1,
    BlockIo = 2,
    /// Not a full map: completions whose request had no in-flight state (the map was
    /// full at its insert, or it was issued before the probe attached).
    BlockInFlight = 3,
    CpuThrottle = 4,
    DnsInFlight = 5,
    DnsLatency = 6,
    DnsCounters = 7,
    TcpConnections = 8,
    TcpConnectionTimes = 9,
}

impl OverflowSlot {
    pub const ALL: [Self; 10] = [
        Self::TcpRetransmits,
        Self::Drops,
        Self::BlockIo,
        Self::BlockInFlight,
        Self::CpuThrottle,
        Self::DnsInFlight,
        Self::DnsLatency,
        Self::DnsCounters,
        Self::TcpConnections,
        Self::TcpConnectionTimes,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The map whose updates this slot counts.
    pub const fn map_name(self) -> &'static str {
        match self {
            Self::TcpRetransmits => crate::tcp_retransmit::TCP_RETRANSMITS_MAP,
            Self::Drops => crate::drops::DROPS_MAP,
            Self::BlockIo => crate::block_io::BLOCK_IO_MAP,
            Self::BlockInFlight => crate::block_io::BLOCK_IN_FLIGHT_MAP,
            Self::CpuThrottle => crate::cpu_throttle::CPU_THROTTLE_MAP,
            Self::DnsInFlight => crate::dns::DNS_IN_FLIGHT_MAP,
            Self::DnsLatency => crate::dns::DNS_LATENCY_MAP,
            Self::DnsCounters => crate::dns::DNS_COUNTERS_MAP,
            Self::TcpConnections => crate::tcp_connections::TCP_CONNECTIONS_MAP,
            Self::TcpConnectionTimes => crate::tcp_connections::TCP_CONNECTION_TIMES_MAP,
        }
    }
}
