//! What `verify` judges: per-interval measures of the signals, each normalised by the
//! load it was measured under. Published as the `signal` of a verdict (`--signal`,
//! `retransmit_ratio`, ...). Each measure is declared once here ([`Measure::declared`]:
//! what it counts, its load, where both come from); the knob table, `--help`, the
//! judged tables of `docs/verify.md` and the fleet view take their words from that
//! declaration.

use probe_common::{DnsHistogram, LatencyHistogram};
use serde::Serialize;

pub use super::declaration::Declaration;
use super::{
    Sections, block_io,
    block_io::measures as block,
    cpu_throttle::CpuReport,
    cpu_throttle::measures as cpu,
    dns::DnsReport,
    dns::measures as dns,
    drops::measures as drops,
    drops::{BACKLOG_REASONS, DropStats, FORWARDING_REASONS, RCVBUF_REASONS},
    histogram,
    tcp_connections::ConnectionReport,
    tcp_connections::measures as connections,
    tcp_retransmit::TcpStats,
    tcp_retransmit::measures as tcp,
};

/// A per-interval measure of a signal, computed from two consecutive cumulative
/// snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    CpuThrottledRatio,
    CpuThrottledMsPerPeriod,
    CpuStallP99Ms,
    CpuUsageMsPerPeriod,
    ListenOverflowRatio,
    Drops,
    RcvbufDropRatio,
    BacklogDropRatio,
    ForwardDropRatio,
    RetransmitRatio,
    TcpRcvqDropRatio,
    TcpPruneRatio,
    BlockServiceMs,
    BlockServiceP99Ms,
    BlockQueueMs,
    DnsLatencyMs,
    DnsLatencyP99Ms,
    ConnectFailureRatio,
    SrttMs,
    ResetRatio,
    BlockWriteMs,
    BlockWriteP99Ms,
    WritesPerRead,
    ConntrackFullRatio,
}

impl Measure {
    pub const ALL: [Self; 24] = [
        Self::CpuThrottledRatio,
        Self::CpuThrottledMsPerPeriod,
        Self::CpuStallP99Ms,
        Self::CpuUsageMsPerPeriod,
        Self::ListenOverflowRatio,
        Self::Drops,
        Self::RcvbufDropRatio,
        Self::BacklogDropRatio,
        Self::ForwardDropRatio,
        Self::RetransmitRatio,
        Self::TcpRcvqDropRatio,
        Self::TcpPruneRatio,
        Self::BlockServiceMs,
        Self::BlockServiceP99Ms,
        Self::BlockQueueMs,
        Self::DnsLatencyMs,
        Self::DnsLatencyP99Ms,
        Self::ConnectFailureRatio,
        Self::SrttMs,
        Self::ResetRatio,
        Self::BlockWriteMs,
        Self::BlockWriteP99Ms,
        Self::WritesPerRead,
        Self::ConntrackFullRatio,
    ];

    /// The one declaration of each measure, by its signal.
    pub const fn declared(self) -> Declaration {
        match self {
            Self::CpuThrottledRatio => cpu::THROTTLED_RATIO,
            Self::CpuThrottledMsPerPeriod => cpu::THROTTLED_MS_PER_PERIOD,
            Self::CpuStallP99Ms => cpu::STALL_P99_MS,
            Self::CpuUsageMsPerPeriod => cpu::USAGE_MS_PER_PERIOD,
            Self::ListenOverflowRatio => drops::LISTEN_OVERFLOW_RATIO,
            Self::Drops => drops::DROPS,
            Self::RcvbufDropRatio => drops::RCVBUF_DROP_RATIO,
            Self::BacklogDropRatio => drops::BACKLOG_DROP_RATIO,
            Self::ForwardDropRatio => drops::FORWARD_DROP_RATIO,
            Self::RetransmitRatio => tcp::RETRANSMIT_RATIO,
            Self::TcpRcvqDropRatio => tcp::RCVQ_DROP_RATIO,
            Self::TcpPruneRatio => tcp::PRUNE_RATIO,
            Self::BlockServiceMs => block::SERVICE_MS,
            Self::BlockServiceP99Ms => block::SERVICE_P99_MS,
            Self::BlockQueueMs => block::QUEUE_MS,
            Self::DnsLatencyMs => dns::LATENCY_MS,
            Self::DnsLatencyP99Ms => dns::LATENCY_P99_MS,
            Self::ConnectFailureRatio => connections::CONNECT_FAILURE_RATIO,
            Self::SrttMs => connections::SRTT_MS,
            Self::ResetRatio => connections::RESET_RATIO,
            Self::BlockWriteMs => block::WRITE_MS,
            Self::BlockWriteP99Ms => block::WRITE_P99_MS,
            Self::WritesPerRead => block::WRITES_PER_READ,
            Self::ConntrackFullRatio => drops::CONNTRACK_FULL_RATIO,
        }
    }

    /// Every measure here is better lower.
    pub const fn lower_is_better(self) -> bool {
        true
    }

    /// What the signal is normalised by (its per-interval load).
    pub const fn load(self) -> Option<&'static str> {
        self.declared().load
    }

    /// Block signals are kept per device too, for device-scoped knobs.
    pub const fn per_device(self) -> bool {
        self.declared().per_device
    }

    /// The measures a verdict can be given on (`--signal`).
    pub fn judged() -> impl Iterator<Item = Self> {
        Self::ALL.into_iter().filter(|m| m.declared().judged)
    }

    pub fn name(self) -> String {
        crate::output::serde_name(&self)
    }

    /// Parses a judged measure by its JSON name (`retransmit_ratio`, ...).
    pub fn parse(name: &str) -> Option<Self> {
        Self::judged().find(|s| s.name() == name)
    }

    /// The signal's value over one interval and the load it was measured under; `None`
    /// when the interval had no load to judge by. `device` narrows block signals. Each
    /// signal module computes its own.
    pub fn sample(
        self,
        b: &Sections,
        a: &Sections,
        device: Option<&str>,
    ) -> Option<(f64, Option<f64>)> {
        match self {
            Self::CpuThrottledRatio
            | Self::CpuThrottledMsPerPeriod
            | Self::CpuUsageMsPerPeriod
            | Self::CpuStallP99Ms => self.cpu_sample(b, a),
            Self::ListenOverflowRatio
            | Self::Drops
            | Self::RcvbufDropRatio
            | Self::BacklogDropRatio
            | Self::ForwardDropRatio
            | Self::RetransmitRatio
            | Self::TcpRcvqDropRatio
            | Self::TcpPruneRatio
            | Self::ConntrackFullRatio => self.network_sample(b, a),
            Self::BlockServiceMs
            | Self::BlockServiceP99Ms
            | Self::BlockQueueMs
            | Self::BlockWriteMs
            | Self::BlockWriteP99Ms
            | Self::WritesPerRead => self.block_sample(b, a, device),
            Self::DnsLatencyMs
            | Self::DnsLatencyP99Ms
            | Self::ConnectFailureRatio
            | Self::SrttMs
            | Self::ResetRatio => self.dns_or_connection_sample(b, a),
        }
    }

    /// The cpu section's measures.
    fn cpu_sample(self, b: &Sections, a: &Sections) -> Option<(f64, Option<f64>)> {
        let cpu = |f: fn(&CpuReport, &CpuReport) -> Option<(f64, f64)>| {
            f(b.cpu.as_ref()?, a.cpu.as_ref()?).map(with_load)
        };
        match self {
            Self::CpuThrottledRatio => cpu(CpuReport::throttled_ratio),
            Self::CpuThrottledMsPerPeriod => cpu(CpuReport::throttled_ms_per_period),
            Self::CpuUsageMsPerPeriod => cpu(CpuReport::usage_ms_per_period),
            _ => {
                let stalls = |c: &Option<Box<CpuReport>>| {
                    c.as_ref()
                        .map_or(LatencyHistogram::ZERO, |c| c.stall_histogram)
                };
                latency(&histogram::since(&stalls(&a.cpu), &stalls(&b.cpu)), true)
            }
        }
    }

    /// The drops and tcp sections' measures.
    fn network_sample(self, b: &Sections, a: &Sections) -> Option<(f64, Option<f64>)> {
        let drops = |reasons: &[&str], load: fn(&DropStats) -> u64, adds_drops| {
            DropStats::ratio_of(&b.drops, &a.drops, reasons, load, adds_drops).map(with_load)
        };
        let tcp_received = |part: fn(&TcpStats) -> u64| {
            TcpStats::per_received_segment(&b.tcp, &a.tcp, part).map(with_load)
        };
        match self {
            Self::ListenOverflowRatio => {
                DropStats::listen_overflow_ratio((&b.drops, &b.tcp), (&a.drops, &a.tcp))
                    .map(with_load)
            }
            Self::Drops => Some((a.drops.total.checked_sub(b.drops.total)? as f64, None)),
            Self::RcvbufDropRatio => drops(RCVBUF_REASONS, |d| d.received_datagrams, false),
            Self::BacklogDropRatio => drops(BACKLOG_REASONS, |d| d.received_packets, true),
            Self::ForwardDropRatio => drops(FORWARDING_REASONS, |d| d.forwarded_packets, true),
            Self::RetransmitRatio => TcpStats::retransmit_ratio(&b.tcp, &a.tcp).map(with_load),
            Self::TcpRcvqDropRatio => tcp_received(|t| t.rcvq_drops),
            Self::ConntrackFullRatio => {
                DropStats::conntrack_full_ratio(&b.drops, &a.drops).map(with_load)
            }
            _ => tcp_received(|t| t.rcvq_prunes),
        }
    }

    /// The block section's measures, on `device` or every device.
    fn block_sample(
        self,
        b: &Sections,
        a: &Sections,
        device: Option<&str>,
    ) -> Option<(f64, Option<f64>)> {
        let since = |op: Option<&str>, queue| {
            histogram::since(
                &block_io::total_of(&a.block, device, op, queue),
                &block_io::total_of(&b.block, device, op, queue),
            )
        };
        match self {
            Self::BlockServiceMs => latency(&since(None, false), false),
            Self::BlockServiceP99Ms => latency(&since(None, false), true),
            Self::BlockQueueMs => latency(&since(None, true), false),
            Self::BlockWriteMs => latency(&since(Some("write"), false), false),
            Self::BlockWriteP99Ms => latency(&since(Some("write"), false), true),
            _ => {
                let count = |reports: &[block_io::BlockReport], op| {
                    block_io::requests_of(reports, device, op)
                };
                let reads = count(&a.block, "read").checked_sub(count(&b.block, "read"))?;
                let writes = count(&a.block, "write").checked_sub(count(&b.block, "write"))?;
                (reads > 0).then(|| (writes as f64 / reads as f64, Some(reads as f64)))
            }
        }
    }

    /// The dns and connections sections' measures.
    fn dns_or_connection_sample(self, b: &Sections, a: &Sections) -> Option<(f64, Option<f64>)> {
        let (before, after) = (b.connections.as_deref(), a.connections.as_deref());
        match self {
            Self::DnsLatencyMs | Self::DnsLatencyP99Ms => {
                let total = |d: &Option<Box<DnsReport>>| d.as_deref().map(DnsReport::latency);
                let interval = histogram::since(
                    &total(&a.dns).unwrap_or(DnsHistogram::ZERO),
                    &total(&b.dns).unwrap_or(DnsHistogram::ZERO),
                );
                latency(&interval, self == Self::DnsLatencyP99Ms)
            }
            Self::ConnectFailureRatio => {
                ConnectionReport::failure_ratio(before, after?).map(with_load)
            }
            Self::SrttMs => latency(&ConnectionReport::srtt_since(before, after?), false),
            _ => ConnectionReport::reset_ratio(before, after?).map(with_load),
        }
    }
}

/// A sample whose load is known.
fn with_load((value, load): (f64, f64)) -> (f64, Option<f64>) {
    (value, Some(load))
}

/// The mean or p99 of an interval's histogram, with its count as the load.
fn latency<const N: usize, const S: u32>(
    interval: &LatencyHistogram<N, S>,
    p99: bool,
) -> Option<(f64, Option<f64>)> {
    if interval.count == 0 {
        return None;
    }
    let value = if p99 {
        histogram::quantile_ms(interval, 0.99)?
    } else {
        histogram::mean_ms(interval)?
    };
    Some((value, Some(interval.count as f64)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::{
        block_io::BlockReport,
        tcp_connections::{ConnectFailures, ConnectionReport},
    };

    fn block(op: &str, requests: u64, ms: u64) -> BlockReport {
        let mut h = LatencyHistogram::ZERO;
        h.count = requests;
        h.sum_ns = requests * ms * 1_000_000;
        h.buckets[LatencyHistogram::<100, 2>::bucket(ms * 1_000_000)] = requests;
        BlockReport {
            device: "loop0".into(),
            op: op.into(),
            requests,
            service_histogram: h,
            ..BlockReport::default()
        }
    }

    fn with_block(reports: Vec<BlockReport>) -> Sections {
        Sections {
            block: reports,
            ..Sections::default()
        }
    }

    #[test]
    fn block_writes_and_writes_per_read_are_per_operation() {
        let before = with_block(vec![block("read", 10, 1), block("write", 5, 8)]);
        let after = with_block(vec![block("read", 30, 1), block("write", 15, 8)]);
        let sample = |m: Measure| m.sample(&before, &after, None).unwrap();
        // Reads do not dilute the write latency.
        let (write_ms, writes) = sample(Measure::BlockWriteMs);
        assert!((write_ms - 8.0).abs() < 0.01, "{write_ms}");
        assert_eq!(writes, Some(10.0));
        let (ratio, reads) = sample(Measure::WritesPerRead);
        assert_eq!((ratio, reads), (0.5, Some(20.0)));
        // Another device, or no read in the interval: nothing to judge.
        assert!(
            Measure::WritesPerRead
                .sample(&before, &after, Some("sda"))
                .is_none()
        );
        assert!(
            Measure::WritesPerRead
                .sample(&after, &after, None)
                .is_none()
        );
    }

    #[test]
    fn connect_failures_count_every_cause_per_attempt() {
        let report = |attempts, refused, noport, closed, resets| Sections {
            connections: Some(Box::new(ConnectionReport {
                connect_attempts: attempts,
                failed: ConnectFailures {
                    refused,
                    port_exhaustion: noport,
                    ..ConnectFailures::default()
                },
                closed,
                resets_received: resets,
                ..ConnectionReport::default()
            })),
            ..Sections::default()
        };
        let (before, after) = (report(10, 1, 1, 4, 0), report(30, 6, 11, 14, 5));
        assert_eq!(
            Measure::ConnectFailureRatio.sample(&before, &after, None),
            Some((0.75, Some(20.0)))
        );
        assert_eq!(
            Measure::ResetRatio.sample(&before, &after, None),
            Some((0.5, Some(10.0)))
        );
        // A workload that started connecting in this interval counts from zero.
        assert_eq!(
            Measure::ConnectFailureRatio.sample(&Sections::default(), &before, None),
            Some((0.2, Some(10.0)))
        );
    }
}
