//! Judging a tuning change: per-interval samples of the signal a knob should move, for
//! each affected workload, normalised by the load it was measured under, before against
//! after, with a rank test.
//!
//! Which signals each knob should move is a table (data), as in the tuning guides; each
//! signal knows its own load denominator.

pub mod stats;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use probe_common::{DnsHistogram, LatencyHistogram};
use serde::Serialize;

use crate::{
    workloads::attribution::is_within,
    signals::{
        block_io, cpu_throttle::CpuReport, dns::DnsReport, drops::DropStats, histogram,
        tcp_retransmit::TcpStats,
    },
    report::{Snapshot, Workload},
    kernel::sockdiag::{self, Listener},
    verify::stats::{Comparison, Verdict},
    tuning,
};

/// A per-interval signal, computed from two consecutive cumulative snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
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
}

impl Signal {
    pub const ALL: [Self; 9] = [
        Self::CpuThrottledRatio,
        Self::ListenOverflowRatio,
        Self::Drops,
        Self::RetransmitRatio,
        Self::BlockServiceMs,
        Self::BlockServiceP99Ms,
        Self::BlockQueueMs,
        Self::DnsLatencyMs,
        Self::DnsLatencyP99Ms,
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
        }
    }

    /// Block signals are kept per device too, for device-scoped knobs.
    const fn per_device(self) -> bool {
        matches!(
            self,
            Self::BlockServiceMs | Self::BlockServiceP99Ms | Self::BlockQueueMs
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
            Self::CpuThrottledRatio => CpuReport::throttled_ratio(b.cpu.as_ref()?, a.cpu.as_ref()?)
                .map(with_load),
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

/// Which signals each knob should move (the table of `shared/TUNING.md`). Knobs that
/// move none of tuneprobe's signals (`vm.swappiness`, mount options) are inventoried and
/// their changes recorded, but not judged.
const KNOB_SIGNALS: &[(&[&str], &[Signal])] = &[
    (
        &["cpu.max", "cpu.cfs_quota_us", "cpu.cfs_period_us"],
        &[Signal::CpuThrottledRatio],
    ),
    (
        &[
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.ipv4.tcp_syncookies",
        ],
        &[Signal::ListenOverflowRatio],
    ),
    (
        &[
            "net.core.netdev_max_backlog",
            "net.core.rmem_max",
            "net.core.rmem_default",
            "net.bridge.bridge-nf-call-iptables",
            "net.ipv4.ip_forward",
        ],
        &[Signal::Drops],
    ),
    (
        &[
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_wmem",
            "net.core.wmem_max",
            "net.ipv4.tcp_congestion_control",
        ],
        &[Signal::RetransmitRatio],
    ),
    (
        &[
            "blkio.throttle.read_iops_device",
            "blkio.throttle.write_iops_device",
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_bps_device",
            "io.max",
            "queue/scheduler",
        ],
        &[Signal::BlockServiceMs, Signal::BlockServiceP99Ms],
    ),
    (
        &["queue/nr_requests", "queue/read_ahead_kb"],
        &[Signal::BlockQueueMs, Signal::BlockServiceMs],
    ),
];

/// The signals a knob should move; empty for a knob tuneprobe cannot judge.
pub fn signals_for(knob: &str) -> &'static [Signal] {
    KNOB_SIGNALS
        .iter()
        .find(|(knobs, _)| knobs.contains(&knob))
        .map_or(&[], |(_, signals)| signals)
}

/// Every knob with the signals it should move, for documentation and `--help`.
pub fn knob_table() -> impl Iterator<Item = (&'static str, &'static [Signal])> {
    KNOB_SIGNALS
        .iter()
        .flat_map(|(knobs, signals)| knobs.iter().map(move |k| (*k, *signals)))
}

/// Knobs the kernel applies only when a socket listens: existing listeners keep the
/// value they had until the application calls `listen()` again.
const APPLIED_AT_LISTEN: &[&str] = &["net.core.somaxconn"];

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

    fn in_namespace<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        match &self.target {
            Target::Netns(ns) => crate::workloads::netns::run_in(ns, f),
            _ => f(),
        }
    }

    pub fn read(&self) -> io::Result<String> {
        let path = self.path();
        self.in_namespace(move || {
            let raw = fs::read_to_string(&path)?;
            // `queue/scheduler` lists every scheduler with the active one in brackets.
            Ok(crate::kernel::devices::active_scheduler(&raw).unwrap_or_else(|| raw.trim().to_string()))
        })
    }

    pub fn write(&self, value: &str) -> io::Result<()> {
        let path = self.path();
        let value = value.to_string();
        self.in_namespace(move || fs::write(&path, value))
    }
}

/// The workloads a change can affect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Affected {
    /// Every workload on the node.
    Node,
    /// Workloads at or below a cgroup path.
    Cgroup(String),
    /// Workloads living in a network namespace (or below the cgroup that owns it).
    Netns { inode: u32, owner: Option<String> },
    /// Every workload's block requests on one device.
    Device(String),
}

impl Affected {
    /// From an inventory change's scope (`node`, `netns:<inode>`, `cgroup:<path>`, ...).
    pub fn of_change(change: &tuning::Change) -> Self {
        let (kind, rest) = change.scope.split_once(':').unwrap_or((&change.scope, ""));
        match kind {
            "netns" => match rest.parse() {
                Ok(inode) => Self::Netns {
                    inode,
                    owner: change.owner.clone().filter(|o| o != "/"),
                },
                Err(_) => Self::Node,
            },
            "cgroup" => Self::Cgroup(rest.to_string()),
            "device" => Self::Device(rest.to_string()),
            _ => Self::Node,
        }
    }

    /// The workloads of `snapshot` the change can affect, by cgroup path.
    pub fn workloads_in(&self, snapshot: &Snapshot) -> Vec<String> {
        snapshot
            .workloads
            .iter()
            .filter_map(|w| {
                let path = w.cgroup_path.as_deref()?;
                let included = match self {
                    Self::Device(device) => w.signals.block.iter().any(|b| &b.device == device),
                    Self::Node => true,
                    Self::Cgroup(prefix) => is_within(path, prefix),
                    Self::Netns { inode, owner } => {
                        w.netns == Some(*inode)
                            || owner.as_ref().is_some_and(|o| is_within(path, o))
                    }
                };
                included.then(|| path.to_string())
            })
            .collect()
    }

    fn includes(&self, key: &SeriesKey, workload: Option<&Workload>) -> bool {
        match self {
            Self::Device(device) => key.device.as_deref() == Some(device.as_str()),
            _ if key.device.is_some() => false,
            Self::Node => true,
            Self::Cgroup(prefix) => is_within(&key.path, prefix),
            Self::Netns { inode, owner } => {
                workload.and_then(|w| w.netns) == Some(*inode)
                    || owner.as_ref().is_some_and(|o| is_within(&key.path, o))
            }
        }
    }
}

/// One series: a signal of one workload (per device for block signals).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub path: String,
    pub signal: Signal,
    pub device: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// End of the interval, seconds since the Unix epoch.
    pub at: f64,
    pub value: f64,
    pub load: Option<f64>,
}

/// Per-interval samples of every signal of every workload.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    series: BTreeMap<SeriesKey, Vec<Sample>>,
}

impl Samples {
    /// Adds the interval between two consecutive cumulative snapshots, ending at `at`.
    pub fn add(&mut self, previous: &Snapshot, current: &Snapshot, at: f64) {
        for (key, sample) in interval_samples(previous, current, at) {
            self.series.entry(key).or_default().push(sample);
        }
    }

    pub fn push(&mut self, key: SeriesKey, sample: Sample) {
        self.series.entry(key).or_default().push(sample);
    }

    /// Forgets samples that ended before `at`.
    pub fn forget_before(&mut self, at: f64) {
        self.series.retain(|_, samples| {
            samples.retain(|s| s.at >= at);
            !samples.is_empty()
        });
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The longest series' length.
    pub fn intervals(&self) -> usize {
        self.series.values().map(Vec::len).max().unwrap_or(0)
    }
}

/// The samples of one interval for every workload present in both snapshots.
pub fn interval_samples(
    previous: &Snapshot,
    current: &Snapshot,
    at: f64,
) -> Vec<(SeriesKey, Sample)> {
    let earlier: BTreeMap<&str, &Workload> = previous
        .workloads
        .iter()
        .filter_map(|w| Some((w.cgroup_path.as_deref()?, w)))
        .collect();
    let mut out = Vec::new();
    for now in &current.workloads {
        let Some(path) = now.cgroup_path.as_deref() else {
            continue;
        };
        // A workload first seen now had nothing before: compare with an empty one.
        let empty = Workload::default();
        let before = earlier.get(path).copied().unwrap_or(&empty);
        let devices: BTreeSet<&str> = now.signals.block.iter().map(|b| b.device.as_str()).collect();
        for signal in Signal::ALL {
            let mut put = |device: Option<&str>| {
                if let Some((value, load)) = signal.sample(before, now, device) {
                    let key = SeriesKey {
                        path: path.to_string(),
                        signal,
                        device: device.map(str::to_string),
                    };
                    out.push((key, Sample { at, value, load }));
                }
            };
            put(None);
            if signal.per_device() {
                for device in &devices {
                    put(Some(device));
                }
            }
        }
    }
    out
}

/// The judgement for one signal of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadVerdict {
    pub cgroup_path: Option<String>,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub netns: Option<u32>,
    pub signal: Signal,
    /// The block device, for block signals of a device-scoped change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// What the signal is normalised by.
    pub load: Option<&'static str>,
    /// Median of the per-interval samples.
    pub before: Option<f64>,
    pub after: Option<f64>,
    #[serde(flatten)]
    pub comparison: Comparison,
    /// After's mean load over before's (periods, attempts, segments, requests per
    /// interval); far from 1 means the load itself changed, the main confounder.
    pub load_change: Option<f64>,
    /// The load changed by more than half or a third between the windows.
    pub load_changed: bool,
    /// Why the verdict may not mean what it says (a load shift, a knob that applies
    /// only after a restart).
    pub notes: Vec<String>,
    /// The namespace's listening sockets, for knobs applied at `listen()`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    /// The per-interval values behind the verdict.
    pub samples: SampleValues,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SampleValues {
    pub before: Vec<f64>,
    pub after: Vec<f64>,
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// A load ratio outside these bounds is reported as a load change.
const LOAD_CHANGE_BOUNDS: (f64, f64) = (2.0 / 3.0, 1.5);

/// Compares the windows for every affected workload that has samples on both sides,
/// for the given signals.
pub fn judge(
    before: &Samples,
    after: &Samples,
    signals: &[Signal],
    affected: &Affected,
    last: &Snapshot,
) -> Vec<WorkloadVerdict> {
    let workloads: BTreeMap<&str, &Workload> = last
        .workloads
        .iter()
        .filter_map(|w| Some((w.cgroup_path.as_deref()?, w)))
        .collect();
    let mut verdicts = Vec::new();
    for (key, samples_before) in &before.series {
        let workload = workloads.get(key.path.as_str()).copied();
        if !signals.contains(&key.signal) || !affected.includes(key, workload) {
            continue;
        }
        let Some(samples_after) = after.series.get(key) else {
            continue;
        };
        let values = |s: &[Sample]| s.iter().map(|s| s.value).collect::<Vec<f64>>();
        let loads = |s: &[Sample]| s.iter().filter_map(|s| s.load).collect::<Vec<f64>>();
        let (values_before, values_after) = (values(samples_before), values(samples_after));
        let comparison =
            stats::compare(&values_before, &values_after, key.signal.lower_is_better());
        let load_change = mean(&loads(samples_after))
            .zip(mean(&loads(samples_before)))
            .filter(|(_, b)| *b > 0.0)
            .map(|(a, b)| a / b);
        let load_changed = load_change
            .is_some_and(|r| !(LOAD_CHANGE_BOUNDS.0..=LOAD_CHANGE_BOUNDS.1).contains(&r));
        let mut notes = Vec::new();
        if let (true, Some(ratio)) = (load_changed, load_change) {
            notes.push(format!(
                "the load ({}) changed x{ratio:.2} between the windows: the verdict may \
                 reflect the load, not the knob",
                key.signal.load().unwrap_or("load")
            ));
        }
        let median = |v: &[f64]| (!v.is_empty()).then(|| stats::median(v));
        verdicts.push(WorkloadVerdict {
            cgroup_path: Some(key.path.clone()),
            pod_uid: workload.and_then(|w| w.pod_uid.clone()),
            container_id: workload.and_then(|w| w.container_id.clone()),
            namespace: workload.and_then(|w| w.namespace.clone()),
            pod: workload.and_then(|w| w.pod.clone()),
            container: workload.and_then(|w| w.container.clone()),
            netns: workload.and_then(|w| w.netns),
            signal: key.signal,
            device: key.device.clone(),
            load: key.signal.load(),
            before: median(&values_before),
            after: median(&values_after),
            comparison,
            load_change,
            load_changed,
            notes,
            listeners: Vec::new(),
            samples: SampleValues {
                before: values_before,
                after: values_after,
            },
        });
    }
    verdicts
}

/// For knobs applied at `listen()`: shows each verdict's listeners and says "restart
/// needed" where a listener still has a backlog the new value would not give it.
/// `listeners_of` reads the listeners of a network namespace (by inode).
pub fn explain_listen_backlogs(
    knob: &str,
    old: &str,
    new: &str,
    verdicts: &mut [WorkloadVerdict],
    mut listeners_of: impl FnMut(u32) -> Option<Vec<Listener>>,
) {
    if !APPLIED_AT_LISTEN.contains(&knob) {
        return;
    }
    let (Ok(old), Ok(new)) = (old.trim().parse::<u32>(), new.trim().parse::<u32>()) else {
        return;
    };
    for verdict in verdicts {
        let Some(listeners) = verdict.netns.and_then(&mut listeners_of) else {
            continue;
        };
        // Capped by the old value: exactly the old cap while the new one is higher, or
        // above the new cap while it is lower. Either way `listen()` has not run since.
        let stale: Vec<&Listener> = listeners
            .iter()
            .filter(|l| (new > old && l.backlog == old) || (new < old && l.backlog > new))
            .collect();
        if !stale.is_empty() {
            let addresses: Vec<String> = stale
                .iter()
                .map(|l| format!("{} (backlog {})", l.address, l.backlog))
                .collect();
            verdict.notes.push(format!(
                "restart needed: {} of {} listeners still have the backlog of the old \
                 {knob}={old}: {}. The kernel applies {knob} when the application calls \
                 listen()",
                stale.len(),
                listeners.len(),
                addresses.join(", ")
            ));
        }
        verdict.listeners = listeners;
    }
}

/// Reads listeners of a namespace through any live process in it.
pub fn listeners_by_netns(proc_root: &Path) -> impl FnMut(u32) -> Option<Vec<Listener>> + '_ {
    let processes = crate::workloads::procfs::processes(proc_root);
    move |inode| {
        let process = processes.iter().find(|p| p.netns == inode)?;
        sockdiag::tcp_listeners_in(&sockdiag::netns_of_pid(proc_root, process.pid)).ok()
    }
}

/// A change as it is reported: what, where, when.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeRecord {
    pub knob: String,
    /// `node`, `netns:<inode>`, `device:<name>`, `mount:<path>`, `cgroup:<path>`.
    pub scope: String,
    /// The scope's owner (the pod cgroup of a namespace), when it has one.
    pub owner: Option<String>,
    pub old: Option<String>,
    pub new: Option<String>,
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// The workloads (cgroup paths) the change can affect, as seen when it happened.
    pub affected: Vec<String>,
}

/// A change with its verdicts so far.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeReport {
    pub change: ChangeRecord,
    /// `false` while the after window is still filling.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Intervals of the after window seen so far.
    pub after_intervals: usize,
    pub signals: Vec<Signal>,
    pub verdicts: Vec<WorkloadVerdict>,
    pub notes: Vec<String>,
}

/// Window lengths for watching.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub before: Duration,
    pub after: Duration,
    pub interval: Duration,
}

impl Windows {
    fn intervals(length: Duration, interval: Duration) -> usize {
        (length.as_secs_f64() / interval.as_secs_f64())
            .round()
            .max(1.0) as usize
    }

    pub fn after_intervals(&self) -> usize {
        Self::intervals(self.after, self.interval)
    }
}

#[derive(Debug)]
struct Pending {
    change: ChangeRecord,
    signals: Vec<Signal>,
    affected: Affected,
    before: Samples,
    after: Samples,
    intervals: usize,
}

/// Judges every change anyone makes, as it happens: keeps a rolling before window of
/// samples, notices changes between consecutive inventories, and fills an after window
/// for each, with interim verdicts on the way.
#[derive(Debug)]
pub struct Watcher {
    windows: Windows,
    history: Samples,
    previous: Option<(Snapshot, tuning::Inventory)>,
    pending: Vec<Pending>,
    /// Judge every change on these instead of its knob's own signals.
    signals: Option<Vec<Signal>>,
    /// Changes seen, by (knob, scope kind).
    pub changes_total: BTreeMap<(String, String), u64>,
    /// The latest report of each recent change (interim or final), newest last.
    pub recent: Vec<ChangeReport>,
}

/// How many changes `recent` keeps.
const RECENT_CHANGES: usize = 100;

impl Watcher {
    pub fn new(windows: Windows) -> Self {
        Self {
            windows,
            history: Samples::default(),
            previous: None,
            pending: Vec::new(),
            signals: None,
            changes_total: BTreeMap::new(),
            recent: Vec::new(),
        }
    }

    /// Judges every change on `signals` instead of each knob's own (for knobs whose
    /// effect shows in a signal the table does not name, or a controlled experiment).
    pub fn judging(mut self, signals: Vec<Signal>) -> Self {
        self.signals = (!signals.is_empty()).then_some(signals);
        self
    }

    /// The inventory of the latest interval observed.
    pub fn inventory(&self) -> Option<&tuning::Inventory> {
        self.previous.as_ref().map(|(_, inventory)| inventory)
    }

    /// Takes one interval's snapshot and inventory; returns the reports that are new:
    /// interim ones every few intervals while an after window fills, and final ones.
    pub fn observe(
        &mut self,
        snapshot: Snapshot,
        inventory: tuning::Inventory,
        at: f64,
    ) -> Vec<ChangeReport> {
        let Some((previous, previous_inventory)) = self.previous.take() else {
            self.previous = Some((snapshot, inventory));
            return Vec::new();
        };
        let samples = interval_samples(&previous, &snapshot, at);
        // Changes first: the interval in which a knob changed belongs to neither window.
        let mut reports = Vec::new();
        for change in inventory.changes_since(&previous_inventory) {
            let scope_kind = change.scope.split(':').next().unwrap_or("").to_string();
            *self
                .changes_total
                .entry((change.knob.clone(), scope_kind))
                .or_default() += 1;
            let signals = self
                .signals
                .clone()
                .unwrap_or_else(|| signals_for(&change.knob).to_vec());
            let affected = Affected::of_change(&change);
            let record = ChangeRecord {
                knob: change.knob,
                scope: change.scope,
                owner: change.owner,
                old: change.old,
                new: change.new,
                at,
                affected: affected.workloads_in(&snapshot),
            };
            if signals.is_empty() {
                let report = ChangeReport {
                    change: record,
                    is_final: true,
                    after_intervals: 0,
                    signals: Vec::new(),
                    verdicts: Vec::new(),
                    notes: vec!["no signal of tuneprobe's is known for this knob".into()],
                };
                self.remember(&report);
                reports.push(report);
                continue;
            }
            self.pending.push(Pending {
                change: record,
                signals,
                affected,
                before: self.history.clone(),
                after: Samples::default(),
                intervals: 0,
            });
        }
        for pending in &mut self.pending {
            if pending.change.at < at {
                for (key, sample) in &samples {
                    pending.after.push(key.clone(), *sample);
                }
                pending.intervals += 1;
            }
        }
        for (key, sample) in samples {
            self.history.push(key, sample);
        }
        self.history
            .forget_before(at - self.windows.before.as_secs_f64() - 1e-3);

        let needed = self.windows.after_intervals();
        // Interim verdicts about four times per window, once there is enough to test.
        let every = (needed / 4).max(1);
        let mut still = Vec::new();
        for pending in std::mem::take(&mut self.pending) {
            let done = pending.intervals >= needed;
            let interim = pending.intervals >= stats::MIN_SAMPLES && pending.intervals % every == 0;
            if done || interim {
                let report = judge_pending(&pending, &snapshot, done);
                self.remember(&report);
                reports.push(report);
            }
            if !done {
                still.push(pending);
            }
        }
        self.pending = still;
        self.previous = Some((snapshot, inventory));
        reports
    }

    fn remember(&mut self, report: &ChangeReport) {
        self.recent.retain(|r| {
            !(r.change.knob == report.change.knob
                && r.change.scope == report.change.scope
                && r.change.at == report.change.at)
        });
        self.recent.push(report.clone());
        if self.recent.len() > RECENT_CHANGES {
            self.recent.remove(0);
        }
    }
}

fn judge_pending(pending: &Pending, last: &Snapshot, is_final: bool) -> ChangeReport {
    let mut verdicts = judge(
        &pending.before,
        &pending.after,
        &pending.signals,
        &pending.affected,
        last,
    );
    let change = &pending.change;
    if let (Some(old), Some(new)) = (&change.old, &change.new) {
        explain_listen_backlogs(
            &change.knob,
            old,
            new,
            &mut verdicts,
            listeners_by_netns(Path::new("/proc")),
        );
    }
    let mut notes = Vec::new();
    if verdicts.is_empty() {
        notes.push("no affected workload had load on both sides of the change".into());
    }
    ChangeReport {
        change: change.clone(),
        is_final,
        after_intervals: pending.intervals,
        signals: pending.signals.clone(),
        verdicts,
        notes,
    }
}

/// The verdicts that say something happened.
pub fn is_effect(verdict: &WorkloadVerdict) -> bool {
    matches!(
        verdict.comparison.verdict,
        Verdict::Improved | Verdict::Regressed
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::{Sections, cpu_throttle::CpuReport};

    fn snapshot(periods: u64, throttled: u64) -> Snapshot {
        Snapshot {
            duration_s: 1.0,
            probes: vec![],
            map_overflows: Default::default(),
            gc_deleted_entries: Default::default(),
            program_stats: vec![],
            workloads: vec![Workload {
                cgroup_path: Some("/pod/c".into()),
                signals: Sections {
                    cpu: Some(CpuReport {
                        periods,
                        throttled_periods: throttled,
                        ..CpuReport::default()
                    }),
                    ..Sections::default()
                },
                ..Workload::default()
            }],
        }
    }

    /// 10 intervals throttled in 9 of 10 periods, then 10 without throttling.
    fn throttling_then_none() -> (Samples, Samples, Snapshot) {
        let (mut before, mut after) = (Samples::default(), Samples::default());
        let mut previous = snapshot(0, 0);
        for i in 1..=20u64 {
            let throttled = if i <= 10 { 9 * i } else { 90 };
            let current = snapshot(10 * i, throttled);
            let samples = if i <= 10 { &mut before } else { &mut after };
            samples.add(&previous, &current, i as f64);
            previous = current;
        }
        (before, after, previous)
    }

    #[test]
    fn throttling_that_stops_is_an_improvement() {
        let signals = signals_for("cpu.max");
        let (before, after, last) = throttling_then_none();
        let verdicts = judge(
            &before,
            &after,
            signals,
            &Affected::Cgroup("/pod".into()),
            &last,
        );
        assert_eq!(verdicts.len(), 1);
        let v = &verdicts[0];
        assert_eq!(v.comparison.verdict, Verdict::Improved, "{v:?}");
        assert_eq!((v.before, v.after), (Some(0.9), Some(0.0)));
        assert_eq!(v.load_change, Some(1.0));
        assert!(!v.load_changed && v.notes.is_empty());
        assert_eq!(v.samples.before.len(), 10);
        let elsewhere = Affected::Cgroup("/elsewhere".into());
        assert!(judge(&before, &after, signals, &elsewhere, &last).is_empty());
        // Only the knob's own signals are judged.
        assert!(
            judge(
                &before,
                &after,
                signals_for("net.core.somaxconn"),
                &Affected::Node,
                &last
            )
            .is_empty()
        );
    }

    #[test]
    fn knobs_map_to_the_signals_the_guides_name() {
        assert_eq!(
            signals_for("cpu.cfs_quota_us"),
            &[Signal::CpuThrottledRatio]
        );
        assert_eq!(
            signals_for("net.core.somaxconn"),
            &[Signal::ListenOverflowRatio]
        );
        assert_eq!(signals_for("net.ipv4.tcp_wmem"), &[Signal::RetransmitRatio]);
        assert!(signals_for("queue/scheduler").contains(&Signal::BlockServiceMs));
        assert!(signals_for("no.such.knob").is_empty());
        // Every knob in the table is one the inventory knows, or a cgroup file.
        for (knob, _) in knob_table() {
            assert!(
                tuning::KNOBS.iter().any(|k| k.name == knob)
                    || knob.starts_with("blkio.")
                    || knob.starts_with("cpu.")
                    || knob == "io.max",
                "{knob}"
            );
        }
        for signal in Signal::ALL {
            assert_eq!(Signal::parse(&signal.name()), Some(signal));
        }
    }

    fn listener(port: u16, backlog: u32) -> Listener {
        Listener {
            address: std::net::SocketAddr::from(([10, 0, 0, 1], port)),
            backlog,
            queued: 0,
        }
    }

    #[test]
    fn a_listener_with_the_old_backlog_needs_a_restart() {
        let (before, after, mut last) = throttling_then_none();
        last.workloads[0].netns = Some(7);
        let mut verdicts = judge(
            &before,
            &after,
            &[Signal::CpuThrottledRatio],
            &Affected::Node,
            &last,
        );
        // Raised from 4 to 1024: a listener still at 4 is stale, one that asked for 2 is not.
        explain_listen_backlogs("net.core.somaxconn", "4", "1024", &mut verdicts, |inode| {
            (inode == 7).then(|| vec![listener(80, 4), listener(81, 2)])
        });
        let notes = &verdicts[0].notes;
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("restart needed: 1 of 2 listeners"),
            "{notes:?}"
        );
        assert!(notes[0].contains("10.0.0.1:80 (backlog 4)"), "{notes:?}");
        assert_eq!(verdicts[0].listeners.len(), 2);

        // After listen() again, the backlog follows the new value: no note.
        let mut verdicts = judge(
            &before,
            &after,
            &[Signal::CpuThrottledRatio],
            &Affected::Node,
            &last,
        );
        explain_listen_backlogs("net.core.somaxconn", "4", "1024", &mut verdicts, |_| {
            Some(vec![listener(80, 1024)])
        });
        assert!(verdicts[0].notes.is_empty());
        // Other knobs are applied at once: nothing to explain.
        explain_listen_backlogs("net.ipv4.tcp_wmem", "4", "1024", &mut verdicts, |_| {
            Some(vec![listener(80, 4)])
        });
        assert!(verdicts[0].listeners.len() == 1 && verdicts[0].notes.is_empty());
    }

    #[test]
    fn a_load_shift_is_reported() {
        let (mut before, mut after) = (Samples::default(), Samples::default());
        let mut previous = snapshot(0, 0);
        let mut periods = 0;
        for i in 1..=20u64 {
            // 10 periods per interval, then 5: the same ratio under half the load.
            periods += if i <= 10 { 10 } else { 5 };
            let current = snapshot(periods, periods / 2);
            let samples = if i <= 10 { &mut before } else { &mut after };
            samples.add(&previous, &current, i as f64);
            previous = current;
        }
        let verdicts = judge(
            &before,
            &after,
            &[Signal::CpuThrottledRatio],
            &Affected::Node,
            &previous,
        );
        let v = &verdicts[0];
        assert_eq!(v.load_change, Some(0.5));
        assert!(v.load_changed, "{v:?}");
        assert!(v.notes[0].contains("x0.50"), "{:?}", v.notes);
    }

    #[test]
    fn watcher_judges_a_change_between_inventories() {
        let windows = Windows {
            before: Duration::from_secs(10),
            after: Duration::from_secs(10),
            interval: Duration::from_secs(1),
        };
        let mut watcher = Watcher::new(windows);
        let inventory = |quota: &str| tuning::Inventory {
            cgroups: vec![tuning::CgroupSettings {
                cgroup_path: "/pod/c".into(),
                settings: vec![tuning::Setting {
                    knob: "cpu.max".into(),
                    value: format!("{quota} 100000"),
                    recommended: None,
                    deviates: None,
                    signal: String::new(),
                }],
            }],
            ..tuning::Inventory::default()
        };
        let mut reports = Vec::new();
        for i in 0..=21u64 {
            // Throttled 9 of 10 periods until the quota changes at i = 11.
            let throttled = if i <= 10 { 9 * i } else { 90 };
            let quota = if i <= 10 { "20000" } else { "100000" };
            reports.extend(watcher.observe(
                snapshot(10 * i, throttled),
                inventory(quota),
                i as f64,
            ));
        }
        assert_eq!(
            watcher.changes_total[&("cpu.max".to_string(), "cgroup".to_string())],
            1
        );
        let last = reports.last().expect("a report");
        assert!(last.is_final, "{reports:?}");
        assert!(reports[..reports.len() - 1].iter().all(|r| !r.is_final));
        assert!(reports.len() > 1, "interim reports come first");
        assert_eq!(last.change.old.as_deref(), Some("20000 100000"));
        assert_eq!(last.after_intervals, 10);
        let v = &last.verdicts[0];
        assert_eq!(v.comparison.verdict, Verdict::Improved, "{v:?}");
        // The interval in which the knob changed belongs to neither window.
        assert_eq!((v.samples.before.len(), v.samples.after.len()), (10, 10));
        assert_eq!(watcher.recent.len(), 1);
        assert_eq!(last.change.affected, ["/pod/c"]);
    }
}
