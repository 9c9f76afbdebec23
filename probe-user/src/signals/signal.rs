//! The signals by name: the one table of what each is called where.

use probe_common::trace::TraceKind;
use serde::Serialize;

/// The signals tuneprobe measures; each kernel program feeds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    TcpRetransmit,
    Drops,
    BlockIo,
    CpuThrottle,
    Dns,
}

impl Signal {
    pub const ALL: [Self; 5] = [
        Self::TcpRetransmit,
        Self::Drops,
        Self::BlockIo,
        Self::CpuThrottle,
        Self::Dns,
    ];

    /// The name in `probes[].signal` and in the `signal` label of
    /// `tuneprobe_probe_attached`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::TcpRetransmit => "tcp_retransmit",
            Self::Drops => "drops",
            Self::BlockIo => "block_io",
            Self::CpuThrottle => "cpu_throttle",
            Self::Dns => "dns",
        }
    }

    /// The name `trace` takes on its command line and prints in its events' `signal`
    /// (published before the names above, and kept).
    pub const fn trace_name(self) -> &'static str {
        match self {
            Self::TcpRetransmit => "retransmits",
            Self::Drops => "drops",
            Self::BlockIo => "block",
            Self::CpuThrottle => "throttle",
            Self::Dns => "dns",
        }
    }

    /// The kind of its `trace` records.
    pub const fn trace_kind(self) -> TraceKind {
        match self {
            Self::TcpRetransmit => TraceKind::Retransmit,
            Self::Drops => TraceKind::Drop,
            Self::BlockIo => TraceKind::Block,
            Self::CpuThrottle => TraceKind::Throttle,
            Self::Dns => TraceKind::Dns,
        }
    }

    pub const fn of_trace_kind(kind: TraceKind) -> Self {
        match kind {
            TraceKind::Retransmit => Self::TcpRetransmit,
            TraceKind::Drop => Self::Drops,
            TraceKind::Block => Self::BlockIo,
            TraceKind::Throttle => Self::CpuThrottle,
            TraceKind::Dns => Self::Dns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_json() {
        for signal in Signal::ALL {
            assert_eq!(serde_json::to_value(signal).unwrap(), signal.name());
            assert_eq!(Signal::of_trace_kind(signal.trace_kind()), signal);
        }
    }
}
