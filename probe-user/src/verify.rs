//! Judging a tuning change: per-interval samples of the signal a knob should move, for
//! each affected workload, before against after, with a rank test.
//!
//! Which signals each knob should move, and in which direction, is a table (data), as in
//! the tuning guides.

use std::{
    fs, io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    report::{Snapshot, Workload},
    stats::{self, Comparison},
};

/// A per-interval signal, computed from two consecutive cumulative snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Throttled periods per CFS period.
    CpuThrottledRatio,
    /// Listen-queue overflows per interval.
    ListenOverflows,
    /// Dropped packets per interval.
    Drops,
    /// Retransmitted segments per interval.
    RetransmittedSegments,
    /// Mean block request service time, ms.
    BlockServiceMs,
    /// Mean DNS latency, ms.
    DnsLatencyMs,
}

impl Signal {
    /// Every signal here is better lower.
    pub const fn lower_is_better(self) -> bool {
        true
    }

    /// The signal's value over one interval, and the load it was measured under (periods,
    /// requests, queries; `None` for counts without a denominator). `None` when the
    /// interval had no load to judge by.
    pub fn sample(self, before: &Workload, after: &Workload) -> Option<(f64, Option<f64>)> {
        match self {
            Self::CpuThrottledRatio => {
                let (b, a) = (before.cpu.as_ref()?, after.cpu.as_ref()?);
                let periods = a.periods.checked_sub(b.periods)?;
                let throttled = a.throttled_periods.checked_sub(b.throttled_periods)?;
                (periods > 0).then(|| (throttled as f64 / periods as f64, Some(periods as f64)))
            }
            Self::ListenOverflows => {
                let count = |w: &Workload| {
                    w.drops
                        .by_reason
                        .get("TCP_LISTEN_OVERFLOW")
                        .copied()
                        .unwrap_or(0)
                };
                Some((count(after).checked_sub(count(before))? as f64, None))
            }
            Self::Drops => Some((
                after.drops.total.checked_sub(before.drops.total)? as f64,
                None,
            )),
            Self::RetransmittedSegments => Some((
                after
                    .tcp
                    .retransmitted_segments
                    .checked_sub(before.tcp.retransmitted_segments)? as f64,
                None,
            )),
            Self::BlockServiceMs => {
                let totals = |w: &Workload| {
                    w.block.iter().fold((0u64, 0u64), |(n, sum), b| {
                        (
                            n + b.service_histogram.count,
                            sum + b.service_histogram.sum_ns,
                        )
                    })
                };
                let ((n0, s0), (n1, s1)) = (totals(before), totals(after));
                let requests = n1.checked_sub(n0)?;
                (requests > 0).then(|| {
                    (
                        s1.saturating_sub(s0) as f64 / requests as f64 / 1e6,
                        Some(requests as f64),
                    )
                })
            }
            Self::DnsLatencyMs => {
                let totals = |w: &Workload| {
                    w.dns
                        .iter()
                        .flat_map(|d| &d.latency_series)
                        .fold((0u64, 0u64), |(n, sum), s| {
                            (n + s.histogram.count, sum + s.histogram.sum_ns)
                        })
                };
                let ((n0, s0), (n1, s1)) = (totals(before), totals(after));
                let responses = n1.checked_sub(n0)?;
                (responses > 0).then(|| {
                    (
                        s1.saturating_sub(s0) as f64 / responses as f64 / 1e6,
                        Some(responses as f64),
                    )
                })
            }
        }
    }
}

/// Which signals each knob should move (the table of `shared/TUNING.md`).
pub fn signals_for(knob: &str) -> &'static [Signal] {
    match knob {
        "cpu.max" | "cpu.cfs_quota_us" | "cpu.cfs_period_us" => &[Signal::CpuThrottledRatio],
        "net.core.somaxconn" | "net.ipv4.tcp_max_syn_backlog" | "net.ipv4.tcp_syncookies" => {
            &[Signal::ListenOverflows]
        }
        "net.core.netdev_max_backlog"
        | "net.core.rmem_max"
        | "net.core.rmem_default"
        | "net.bridge.bridge-nf-call-iptables"
        | "net.ipv4.ip_forward" => &[Signal::Drops],
        "net.ipv4.tcp_rmem"
        | "net.ipv4.tcp_wmem"
        | "net.core.wmem_max"
        | "net.ipv4.tcp_congestion_control" => &[Signal::RetransmittedSegments],
        "blkio.throttle.read_iops_device"
        | "blkio.throttle.write_iops_device"
        | "blkio.throttle.read_bps_device"
        | "blkio.throttle.write_bps_device"
        | "io.max"
        | "queue/scheduler"
        | "queue/nr_requests" => &[Signal::BlockServiceMs],
        _ => &[],
    }
}

/// Where a knob is changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A global sysctl.
    Node,
    /// A sysctl inside a network namespace (a file such as `/run/netns/NAME` or
    /// `/proc/PID/ns/net`).
    Netns(PathBuf),
    /// A file of a cgroup directory.
    Cgroup(PathBuf),
    /// `/sys/block/NAME/...`.
    Device(String),
}

/// A knob at a target: read and write it as users name it.
#[derive(Debug, Clone, Serialize)]
pub struct Knob {
    pub name: String,
    pub target: Target,
}

impl Knob {
    fn path(&self) -> PathBuf {
        match &self.target {
            Target::Node | Target::Netns(_) => {
                Path::new("/proc/sys").join(self.name.replace('.', "/"))
            }
            Target::Cgroup(dir) => dir.join(&self.name),
            Target::Device(device) => Path::new("/sys/block").join(device).join(&self.name),
        }
    }

    /// Runs `f` in the knob's network namespace (a thread that joins it) when it has one.
    fn in_namespace<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let Target::Netns(ns) = &self.target else {
            return f();
        };
        let ns = fs::File::open(ns)?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on this thread only, with a valid namespace fd.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    f()
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
        })
    }

    pub fn read(&self) -> io::Result<String> {
        let path = self.path();
        self.in_namespace(move || Ok(fs::read_to_string(&path)?.trim().to_string()))
    }

    pub fn write(&self, value: &str) -> io::Result<()> {
        let path = self.path();
        let value = value.to_string();
        self.in_namespace(move || fs::write(&path, value))
    }
}

/// The judgement for one signal of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadVerdict {
    pub cgroup_path: Option<String>,
    pub pod_uid: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub signal: Signal,
    /// Median of the per-interval samples.
    pub before: Option<f64>,
    pub after: Option<f64>,
    #[serde(flatten)]
    pub comparison: Comparison,
    /// After's mean load over before's (periods, requests, queries per interval); far
    /// from 1 means the load itself changed, the main confounder.
    pub load_change: Option<f64>,
}

/// Per-interval samples of every workload between consecutive cumulative snapshots.
#[derive(Debug, Default)]
pub struct Samples {
    /// (cgroup path, signal) -> values and loads.
    series: std::collections::BTreeMap<(String, usize), (Vec<f64>, Vec<f64>)>,
}

impl Samples {
    pub fn add(&mut self, previous: &Snapshot, current: &Snapshot, signals: &[Signal]) {
        for now in &current.workloads {
            let Some(path) = &now.cgroup_path else {
                continue;
            };
            let Some(before) = previous
                .workloads
                .iter()
                .find(|w| w.cgroup_path.as_ref() == Some(path))
            else {
                continue;
            };
            for (i, signal) in signals.iter().enumerate() {
                if let Some((value, load)) = signal.sample(before, now) {
                    let entry = self.series.entry((path.clone(), i)).or_default();
                    entry.0.push(value);
                    if let Some(load) = load {
                        entry.1.push(load);
                    }
                }
            }
        }
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Compares the windows for every workload below `scope` (a cgroup path prefix; `/` for
/// the whole node) that has samples on both sides.
pub fn judge(
    before: &Samples,
    after: &Samples,
    signals: &[Signal],
    last: &Snapshot,
    scope: &str,
) -> Vec<WorkloadVerdict> {
    let within = |path: &str| {
        scope == "/"
            || path == scope
            || path
                .strip_prefix(scope)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    let mut verdicts = Vec::new();
    for ((path, i), (values_before, loads_before)) in &before.series {
        if !within(path) {
            continue;
        }
        let Some((values_after, loads_after)) = after.series.get(&(path.clone(), *i)) else {
            continue;
        };
        let signal = signals[*i];
        let comparison = stats::compare(values_before, values_after, signal.lower_is_better());
        let workload = last
            .workloads
            .iter()
            .find(|w| w.cgroup_path.as_ref() == Some(path));
        verdicts.push(WorkloadVerdict {
            cgroup_path: Some(path.clone()),
            pod_uid: workload.and_then(|w| w.pod_uid.clone()),
            namespace: workload.and_then(|w| w.namespace.clone()),
            pod: workload.and_then(|w| w.pod.clone()),
            container: workload.and_then(|w| w.container.clone()),
            signal,
            before: median(values_before),
            after: median(values_after),
            comparison,
            load_change: mean(loads_after)
                .zip(mean(loads_before))
                .filter(|(_, b)| *b > 0.0)
                .map(|(a, b)| a / b),
        });
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::CpuReport;

    fn snapshot(periods: u64, throttled: u64) -> Snapshot {
        Snapshot {
            duration_s: 1.0,
            probes: vec![],
            map_overflows: Default::default(),
            program_stats: vec![],
            workloads: vec![Workload {
                cgroup_path: Some("/pod/c".into()),
                cpu: Some(CpuReport {
                    periods,
                    throttled_periods: throttled,
                    ..CpuReport::default()
                }),
                ..Workload::default()
            }],
        }
    }

    #[test]
    fn throttling_that_stops_is_an_improvement() {
        let signals = signals_for("cpu.max");
        let (mut before, mut after) = (Samples::default(), Samples::default());
        let mut previous = snapshot(0, 0);
        // 10 intervals throttled in 9 of 10 periods, then 10 without throttling.
        for i in 1..=20u64 {
            let throttled = if i <= 10 { 9 * i } else { 90 };
            let current = snapshot(10 * i, throttled);
            let samples = if i <= 10 { &mut before } else { &mut after };
            samples.add(&previous, &current, signals);
            previous = current;
        }
        let verdicts = judge(&before, &after, signals, &previous, "/pod");
        assert_eq!(verdicts.len(), 1);
        let v = &verdicts[0];
        assert_eq!(v.comparison.verdict, stats::Verdict::Improved, "{v:?}");
        assert_eq!((v.before, v.after), (Some(0.9), Some(0.0)));
        assert_eq!(v.load_change, Some(1.0));
        assert!(judge(&before, &after, signals, &previous, "/elsewhere").is_empty());
    }

    #[test]
    fn knobs_map_to_the_signals_the_guides_name() {
        assert_eq!(
            signals_for("cpu.cfs_quota_us"),
            &[Signal::CpuThrottledRatio]
        );
        assert_eq!(
            signals_for("net.core.somaxconn"),
            &[Signal::ListenOverflows]
        );
        assert_eq!(signals_for("queue/scheduler"), &[Signal::BlockServiceMs]);
        assert!(signals_for("no.such.knob").is_empty());
    }
}
