//! What `verify` judges: per-interval measures of the signals, each normalised by the
//! load it was measured under. Published as the `signal` of a verdict (`--signal`,
//! `retransmit_ratio`, ...); each signal module computes its own.

use probe_common::{DnsHistogram, LatencyHistogram};
use serde::Serialize;

use super::{
    block_io, cpu_throttle::CpuReport, dns::DnsReport, drops::DropStats, histogram,
    tcp_connections::ConnectionReport, tcp_retransmit::TcpStats,
};
use crate::report::Workload;

/// A per-interval measure of a signal, computed from two consecutive cumulative
/// snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Throttled periods per CFS period.
    CpuThrottledRatio,
    /// Listen-queue overflows per connection attempt (overflows + passive opens).
    ListenOverflowRatio,
    /// Dropped packets per interval.
    Drops,
    /// Retransmitted segments per sent segment.
    RetransmitRatio,
    /// Mean block request service time (issue to complete), ms.
    BlockServiceMs,
    /// p99 of the block service time within the interval, ms.
    BlockServiceP99Ms,
    /// Mean time requests waited in the scheduler queue (insert to issue), ms.
    BlockQueueMs,
    /// Mean DNS latency, ms.
    DnsLatencyMs,
    /// p99 of the DNS latency within the interval, ms.
    DnsLatencyP99Ms,
    /// Failed connects (every cause, no free local port included) per connect attempt.
    ConnectFailureRatio,
    /// Mean smoothed round-trip time of the connections that ended, ms.
    SrttMs,
    /// Resets received per established connection that ended.
    ResetRatio,
    /// Mean service time of block write requests, ms.
    BlockWriteMs,
    /// p99 of the block write service time within the interval, ms: the writeback
    /// bursts that dirty-page limits shape.
    BlockWriteP99Ms,
    /// Block write requests per read request: metadata writes that reads cause
    /// (access times).
    WritesPerRead,
}

impl Measure {
    pub const ALL: [Self; 15] = [
        Self::CpuThrottledRatio,
        Self::ListenOverflowRatio,
        Self::Drops,
        Self::RetransmitRatio,
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
    ];

    /// Every signal here is better lower.
    pub const fn lower_is_better(self) -> bool {
        true
    }

    /// What the signal is normalised by (its per-interval load).
    pub const fn load(self) -> Option<&'static str> {
        match self {
            Self::CpuThrottledRatio => Some("cfs_periods"),
            Self::ListenOverflowRatio => Some("connection_attempts"),
            Self::Drops => None,
            Self::RetransmitRatio => Some("sent_segments"),
            Self::BlockServiceMs | Self::BlockServiceP99Ms | Self::BlockQueueMs => {
                Some("block_requests")
            }
            Self::DnsLatencyMs | Self::DnsLatencyP99Ms => Some("dns_responses"),
            Self::ConnectFailureRatio => Some("connect_attempts"),
            Self::SrttMs | Self::ResetRatio => Some("closed_connections"),
            Self::BlockWriteMs | Self::BlockWriteP99Ms => Some("block_writes"),
            Self::WritesPerRead => Some("block_reads"),
        }
    }

    /// Block signals are kept per device too, for device-scoped knobs.
    pub const fn per_device(self) -> bool {
        matches!(
            self,
            Self::BlockServiceMs
                | Self::BlockServiceP99Ms
                | Self::BlockQueueMs
                | Self::BlockWriteMs
                | Self::BlockWriteP99Ms
                | Self::WritesPerRead
        )
    }

    pub fn name(self) -> String {
        crate::report::serde_name(&self)
    }

    /// Parses a signal by its JSON name (`retransmit_ratio`, `dns_latency_ms`, ...).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The signal's value over one interval and the load it was measured under; `None`
    /// when the interval had no load to judge by. `device` narrows block signals. Each
    /// signal module computes its own.
    pub fn sample(
        self,
        before: &Workload,
        after: &Workload,
        device: Option<&str>,
    ) -> Option<(f64, Option<f64>)> {
        let (b, a) = (&before.signals, &after.signals);
        let with_load = |(value, load): (f64, f64)| (value, Some(load));
        match self {
            Self::CpuThrottledRatio => {
                CpuReport::throttled_ratio(b.cpu.as_ref()?, a.cpu.as_ref()?).map(with_load)
            }
            Self::ListenOverflowRatio => {
                DropStats::listen_overflow_ratio((&b.drops, &b.tcp), (&a.drops, &a.tcp))
                    .map(with_load)
            }
            Self::Drops => Some((a.drops.total.checked_sub(b.drops.total)? as f64, None)),
            Self::RetransmitRatio => TcpStats::retransmit_ratio(&b.tcp, &a.tcp).map(with_load),
            Self::BlockServiceMs | Self::BlockServiceP99Ms | Self::BlockQueueMs => {
                let queue = self == Self::BlockQueueMs;
                let interval = histogram::since(
                    &block_io::total(&a.block, device, queue),
                    &block_io::total(&b.block, device, queue),
                );
                latency(&interval, self == Self::BlockServiceP99Ms)
            }
            Self::DnsLatencyMs | Self::DnsLatencyP99Ms => {
                let total = |d: &Option<DnsReport>| d.as_ref().map(DnsReport::latency);
                let interval = histogram::since(
                    &total(&a.dns).unwrap_or(DnsHistogram::ZERO),
                    &total(&b.dns).unwrap_or(DnsHistogram::ZERO),
                );
                latency(&interval, self == Self::DnsLatencyP99Ms)
            }
            Self::ConnectFailureRatio => {
                ConnectionReport::failure_ratio(b.connections.as_ref(), a.connections.as_ref()?)
                    .map(with_load)
            }
            Self::SrttMs => latency(
                &ConnectionReport::srtt_since(b.connections.as_ref(), a.connections.as_ref()?),
                false,
            ),
            Self::ResetRatio => {
                ConnectionReport::reset_ratio(b.connections.as_ref(), a.connections.as_ref()?)
                    .map(with_load)
            }
            Self::BlockWriteMs | Self::BlockWriteP99Ms => {
                let interval = histogram::since(
                    &block_io::total_of(&a.block, device, Some("write"), false),
                    &block_io::total_of(&b.block, device, Some("write"), false),
                );
                latency(&interval, self == Self::BlockWriteP99Ms)
            }
            Self::WritesPerRead => {
                let count = |reports: &[block_io::BlockReport], op| {
                    block_io::requests_of(reports, device, op)
                };
                let reads = count(&a.block, "read").checked_sub(count(&b.block, "read"))?;
                let writes = count(&a.block, "write").checked_sub(count(&b.block, "write"))?;
                (reads > 0).then(|| (writes as f64 / reads as f64, Some(reads as f64)))
            }
        }
    }
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

    fn with_block(reports: Vec<BlockReport>) -> Workload {
        let mut w = Workload::default();
        w.signals.block = reports;
        w
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
        let report = |attempts, refused, noport, closed, resets| {
            let mut w = Workload::default();
            w.signals.connections = Some(ConnectionReport {
                connect_attempts: attempts,
                failed: ConnectFailures {
                    refused,
                    port_exhaustion: noport,
                    ..ConnectFailures::default()
                },
                closed,
                resets_received: resets,
                ..ConnectionReport::default()
            });
            w
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
            Measure::ConnectFailureRatio.sample(&Workload::default(), &before, None),
            Some((0.2, Some(10.0)))
        );
    }
}
