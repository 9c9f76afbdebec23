//! Per-interval samples of every measure of every workload, and the before/after
//! judgement of the affected ones.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::{
    kernel::sockdiag::Listener,
    report::{Snapshot, Workload},
    signals::measure::Measure,
    tuning,
    verify::{
        predict::Prediction,
        stats::{self, Comparison, Verdict},
    },
    workloads::{attribution::is_within, identity::Identity},
};

/// The workloads a change can affect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Affected {
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
    pub(crate) fn of_change(change: &tuning::Change) -> Self {
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
    pub(crate) fn workloads_in(&self, snapshot: &Snapshot) -> Vec<String> {
        snapshot
            .workloads
            .iter()
            .filter_map(|w| {
                let path = w.identity.cgroup_path.as_deref()?;
                let included = match self {
                    Self::Device(device) => w.signals.block.iter().any(|b| &b.device == device),
                    Self::Node => true,
                    Self::Cgroup(prefix) => is_within(path, prefix),
                    Self::Netns { inode, owner } => {
                        w.identity.netns == Some(*inode)
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
            // Block measures are judged per device, whatever the scope: a workload's
            // requests on several devices would mix their latencies, and IO moving
            // from one device to another would look like an effect.
            _ if key.signal.per_device() != key.device.is_some() => false,
            Self::Node => true,
            Self::Cgroup(prefix) => is_within(&key.path, prefix),
            Self::Netns { inode, owner } => {
                workload.and_then(|w| w.identity.netns) == Some(*inode)
                    || owner.as_ref().is_some_and(|o| is_within(&key.path, o))
            }
        }
    }
}

/// One series: a signal of one workload (per device for block signals).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SeriesKey {
    pub path: String,
    pub signal: Measure,
    pub device: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    /// End of the interval, seconds since the Unix epoch.
    pub at: f64,
    pub value: f64,
    pub load: Option<f64>,
}

/// Per-interval samples of every signal of every workload.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples {
    series: BTreeMap<SeriesKey, Vec<Sample>>,
}

impl Samples {
    /// Adds the interval between two consecutive cumulative snapshots, ending at `at`.
    pub(crate) fn add(&mut self, previous: &Snapshot, current: &Snapshot, at: f64) {
        for (key, sample) in interval_samples(previous, current, at) {
            self.series.entry(key).or_default().push(sample);
        }
    }

    pub(crate) fn push(&mut self, key: SeriesKey, sample: Sample) {
        self.series.entry(key).or_default().push(sample);
    }

    /// A copy of the series of `signals` alone: a change is judged on its own measures,
    /// and the rest of a node's history (every workload's, at 10,000 workloads 20 MiB)
    /// need not be copied into its before window.
    pub(crate) fn of_signals(&self, signals: &[Measure]) -> Self {
        Self {
            series: self
                .series
                .iter()
                .filter(|(key, _)| signals.contains(&key.signal))
                .map(|(key, samples)| (key.clone(), samples.clone()))
                .collect(),
        }
    }

    /// Forgets samples that ended before `at`.
    pub(crate) fn forget_before(&mut self, at: f64) {
        self.series.retain(|_, samples| {
            samples.retain(|s| s.at >= at);
            !samples.is_empty()
        });
    }
}

/// The samples of one interval for every workload present in both snapshots.
pub(crate) fn interval_samples(
    previous: &Snapshot,
    current: &Snapshot,
    at: f64,
) -> Vec<(SeriesKey, Sample)> {
    let earlier: BTreeMap<&str, &Workload> = previous
        .workloads
        .iter()
        .filter_map(|w| Some((w.identity.cgroup_path.as_deref()?, w)))
        .collect();
    let mut out = Vec::new();
    for now in &current.workloads {
        let Some(path) = now.identity.cgroup_path.as_deref() else {
            continue;
        };
        // A workload first seen now had nothing before: compare with an empty one.
        let empty = Workload::default();
        let before = earlier.get(path).copied().unwrap_or(&empty);
        let devices: BTreeSet<&str> = now
            .signals
            .block
            .iter()
            .map(|b| b.device.as_str())
            .collect();
        for signal in Measure::ALL {
            let mut put = |device: Option<&str>| {
                if let Some((value, load)) = signal.sample(&before.signals, &now.signals, device) {
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
pub(crate) struct WorkloadVerdict {
    #[serde(flatten)]
    pub workload: Identity,
    pub signal: Measure,
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
    /// The prediction made for this measure (`--expect`) and how it came out, or `None`.
    pub prediction: Option<Prediction>,
    /// Predictions were made for the change and this verdict is none of them: secondary,
    /// exploratory.
    pub exploratory: bool,
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
pub(crate) struct SampleValues {
    pub before: Vec<f64>,
    pub after: Vec<f64>,
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Compares the windows for every affected workload that has samples on both sides,
/// for the given signals.
pub(crate) fn judge(
    before: &Samples,
    after: &Samples,
    signals: &[Measure],
    affected: &Affected,
    last: &Snapshot,
) -> Vec<WorkloadVerdict> {
    let workloads: BTreeMap<&str, &Workload> = last
        .workloads
        .iter()
        .filter_map(|w| Some((w.identity.cgroup_path.as_deref()?, w)))
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
        let load_change = mean(&loads(samples_after))
            .zip(mean(&loads(samples_before)))
            .filter(|(_, b)| *b > 0.0)
            .map(|(a, b)| a / b);
        let load_changed = load_change.is_some_and(stats::load_changed);
        let min_relative = if load_changed {
            stats::MIN_RELATIVE_EFFECT_UNDER_LOAD_CHANGE
        } else {
            stats::MIN_RELATIVE_EFFECT
        };
        let comparison = stats::compare_with_floor(
            &values_before,
            &values_after,
            stats::median(&values_before),
            min_relative,
            key.signal.lower_is_better(),
        );
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
            workload: Identity {
                cgroup_path: Some(key.path.clone()),
                ..workload.map(|w| w.identity.clone()).unwrap_or_default()
            },
            signal: key.signal,
            device: key.device.clone(),
            load: key.signal.load(),
            before: median(&values_before),
            after: median(&values_after),
            comparison,
            prediction: None,
            exploratory: false,
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
    explain_cpu_demand(&mut verdicts, after, &workloads);
    verdicts
}

/// Throttled in at least this share of periods after a change: the limit is still
/// below what the container asks for.
const STILL_THROTTLED: f64 = 0.5;

/// A CPU limit raised but still below demand: every period may still be throttled
/// while each stalls for less. Its verdicts say so, with the usage per period measured
/// after the change next to the quota.
fn explain_cpu_demand(
    verdicts: &mut [WorkloadVerdict],
    after: &Samples,
    workloads: &BTreeMap<&str, &Workload>,
) {
    const CPU: [Measure; 3] = [
        Measure::CpuThrottledRatio,
        Measure::CpuThrottledMsPerPeriod,
        Measure::CpuStallP99Ms,
    ];
    let median_after = |path: &str, signal| {
        let key = SeriesKey {
            path: path.to_string(),
            signal,
            device: None,
        };
        let values: Vec<f64> = after.series.get(&key)?.iter().map(|s| s.value).collect();
        (!values.is_empty()).then(|| stats::median(&values))
    };
    for v in verdicts.iter_mut().filter(|v| CPU.contains(&v.signal)) {
        let Some(path) = v.workload.cgroup_path.clone() else {
            continue;
        };
        let Some(share) = median_after(&path, Measure::CpuThrottledRatio)
            .filter(|share| *share >= STILL_THROTTLED)
        else {
            continue;
        };
        let cpu = workloads
            .get(path.as_str())
            .and_then(|w| w.signals.cpu.as_ref());
        let limit = match cpu.and_then(|c| c.quota_ms.zip(c.period_ms)) {
            Some((quota, period)) => format!("a quota of {quota} ms per {period} ms period"),
            None => "its limit".to_string(),
        };
        let usage = median_after(&path, Measure::CpuUsageMsPerPeriod).map_or_else(
            || "used all of".to_string(),
            |ms| format!("used {ms:.1} ms of CPU per period against"),
        );
        v.notes.push(format!(
            "the limit is still below demand: after the change the container was \
             throttled in {:.0}% of periods and {usage} {limit}",
            share * 100.0
        ));
    }
}

/// The notes of a change's report: no verdict at all, or a workload whose signals moved
/// in opposite directions (a congestion control that retransmits more while it cuts
/// round-trip time): "retransmit_ratio regressed, srtt_ms improved".
pub(crate) fn report_notes(verdicts: &[WorkloadVerdict]) -> Vec<String> {
    if verdicts.is_empty() {
        return vec!["no affected workload had load on both sides of the change".into()];
    }
    let mut by_workload: BTreeMap<(String, Option<&str>), Vec<&WorkloadVerdict>> = BTreeMap::new();
    for v in verdicts {
        by_workload
            .entry((v.workload.display_name(), v.device.as_deref()))
            .or_default()
            .push(v);
    }
    let mut notes = Vec::new();
    for ((name, _), group) in by_workload {
        let with = |verdict: Verdict| -> Vec<String> {
            group
                .iter()
                .filter(|v| v.comparison.verdict == verdict)
                .map(|v| {
                    format!(
                        "{} {}",
                        v.signal.name(),
                        crate::output::serde_name(&verdict)
                    )
                })
                .collect()
        };
        let (regressed, improved) = (with(Verdict::Regressed), with(Verdict::Improved));
        if !regressed.is_empty() && !improved.is_empty() {
            notes.push(format!(
                "{name}: the signals disagree: {}, {}",
                regressed.join(", "),
                improved.join(", ")
            ));
        }
    }
    notes
}
