//! Watching: every change anyone makes is noticed between two inventories and judged
//! with a rolling before window and an after window of its own.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::Serialize;

use crate::{
    output::families::Families, output::serde_name, report::Snapshot, signals::measure::Measure,
    tuning, verify::stats,
};

use super::{
    judge::{Affected, Samples, WorkloadVerdict, interval_samples, judge, report_notes},
    listen::{explain_listen_backlogs, explain_new_sockets, listeners_by_netns},
    predict::{Expectation, register_predictions},
};

/// A change as it is reported: what, where, when.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChangeRecord {
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
pub(crate) struct ChangeReport {
    pub change: ChangeRecord,
    /// `false` while the after window is still filling.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Intervals of the after window seen so far.
    pub after_intervals: usize,
    pub signals: Vec<Measure>,
    pub verdicts: Vec<WorkloadVerdict>,
    pub notes: Vec<String>,
}

/// Window lengths for watching.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Windows {
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

    pub(crate) fn after_intervals(&self) -> usize {
        Self::intervals(self.after, self.interval)
    }
}

#[derive(Debug)]
struct Pending {
    change: ChangeRecord,
    signals: Vec<Measure>,
    /// The predictions that apply to this change.
    expected: Vec<Expectation>,
    affected: Affected,
    before: Samples,
    after: Samples,
    intervals: usize,
}

/// Judges every change anyone makes, as it happens: keeps a rolling before window of
/// samples, notices changes between consecutive inventories, and fills an after window
/// for each, with interim verdicts on the way.
#[derive(Debug)]
pub(crate) struct Watcher {
    windows: Windows,
    history: Samples,
    previous: Option<(Snapshot, tuning::Inventory)>,
    pending: Vec<Pending>,
    /// Judge every change on these instead of its knob's own signals.
    signals: Option<Vec<Measure>>,
    /// Predictions, judged on each change whose measures include theirs (with
    /// `signals`: on every change).
    expected: Vec<Expectation>,
    /// Changes seen, by (knob, scope kind).
    pub changes_total: BTreeMap<(String, String), u64>,
    /// The latest report of each recent change (interim or final), newest last.
    pub recent: Vec<ChangeReport>,
}

/// How many changes `recent` keeps.
const RECENT_CHANGES: usize = 100;

impl Watcher {
    pub(crate) fn new(windows: Windows) -> Self {
        Self {
            windows,
            history: Samples::default(),
            previous: None,
            pending: Vec::new(),
            signals: None,
            expected: Vec::new(),
            changes_total: BTreeMap::new(),
            recent: Vec::new(),
        }
    }

    /// Judges every change on `signals` instead of each knob's own (for knobs whose
    /// effect shows in a signal the table does not name, or a controlled experiment).
    pub(crate) fn judging(mut self, signals: Vec<Measure>) -> Self {
        self.signals = (!signals.is_empty()).then_some(signals);
        self
    }

    /// Judges `expected` as predictions: on every change of a knob whose own measures
    /// include the predicted one, and with [`Self::judging`] on every change (the
    /// predicted measures are then judged beside those signals). A prediction is about
    /// the changes it was made for: a watcher sees changes of every knob, and one that
    /// cannot move a measure is not tested on it.
    pub(crate) fn expecting(mut self, expected: Vec<Expectation>) -> Self {
        self.expected = expected;
        self
    }

    /// The inventory of the latest interval observed.
    pub(crate) fn inventory(&self) -> Option<&tuning::Inventory> {
        self.previous.as_ref().map(|(_, inventory)| inventory)
    }

    /// Takes one interval's snapshot and inventory; returns the reports that are new:
    /// interim ones every few intervals while an after window fills, and final ones.
    pub(crate) fn observe(
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
        let mut reports = self.start_judging(&inventory, &previous_inventory, &snapshot, at);
        for pending in &mut self.pending {
            if pending.change.at < at {
                // Only what it is judged on (see `Samples::of_signals`).
                for (key, sample) in samples
                    .iter()
                    .filter(|(k, _)| pending.signals.contains(&k.signal))
                {
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

    /// The changes between two inventories: each starts waiting for its after window,
    /// with the history so far as its before window; a knob without a signal of
    /// tuneprobe's gets its final report at once (returned).
    fn start_judging(
        &mut self,
        inventory: &tuning::Inventory,
        previous_inventory: &tuning::Inventory,
        snapshot: &Snapshot,
        at: f64,
    ) -> Vec<ChangeReport> {
        let mut reports = Vec::new();
        for change in inventory.changes_since(previous_inventory) {
            let scope_kind = change.scope.split(':').next().unwrap_or("").to_string();
            *self
                .changes_total
                .entry((change.knob.clone(), scope_kind))
                .or_default() += 1;
            let (signals, expected) = self.judged_for(&change.knob);
            let affected = Affected::of_change(&change);
            let record = ChangeRecord {
                knob: change.knob,
                scope: change.scope,
                owner: change.owner,
                old: change.old,
                new: change.new,
                at,
                affected: affected.workloads_in(snapshot),
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
                before: self.history.of_signals(&signals),
                signals,
                expected,
                affected,
                after: Samples::default(),
                intervals: 0,
            });
        }
        reports
    }

    /// The measures a change of `knob` is judged on, and the predictions among them.
    fn judged_for(&self, knob: &str) -> (Vec<Measure>, Vec<Expectation>) {
        let Some(signals) = &self.signals else {
            let own = tuning::measures_for(knob);
            let expected = self.expected.iter().filter(|e| own.contains(&e.measure));
            return (own.to_vec(), expected.copied().collect());
        };
        let mut signals = signals.clone();
        for e in &self.expected {
            if !signals.contains(&e.measure) {
                signals.push(e.measure);
            }
        }
        (signals, self.expected.clone())
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
    explain_new_sockets(&change.knob, &mut verdicts);
    register_predictions(&mut verdicts, &pending.expected);
    let notes = report_notes(&verdicts);
    ChangeReport {
        change: change.clone(),
        is_final,
        after_intervals: pending.intervals,
        signals: pending.signals.clone(),
        verdicts,
        notes,
    }
}

/// The family of the verdicts on recent changes (the alerts read it: `fleet/alerts.rs`).
pub(crate) const VERDICT_FAMILY: &str = "tuneprobe_tuning_verdict";

/// At most this many `tuneprobe_tuning_verdict` series.
const MAX_VERDICT_SERIES: usize = 1000;

impl Watcher {
    /// `tuneprobe_tuning_changes_total` per knob and scope kind, and the latest verdict of
    /// each recent change as `tuneprobe_tuning_verdict` (1 on the verdict's label).
    pub(crate) fn metrics(&self, f: &mut Families) {
        for ((knob, scope), &count) in &self.changes_total {
            f.counter(
                "tuneprobe_tuning_changes_total",
                "Changes of tuning knobs seen, by knob and scope kind (node, netns, device, mount, cgroup).",
                vec![("knob", knob.clone()), ("scope", scope.clone())],
                count as f64,
            );
        }
        // Newest changes first, bounded: a node-wide change judged on every workload must
        // not flood Prometheus with series.
        let verdicts = self
            .recent
            .iter()
            .rev()
            .flat_map(|report| report.verdicts.iter().map(move |v| (report, v)))
            .take(MAX_VERDICT_SERIES);
        for (report, v) in verdicts {
            // The same workload labels as the workload's own series.
            let mut labels = v.workload.labels();
            labels.extend([
                ("knob", report.change.knob.clone()),
                ("scope", report.change.scope.clone()),
                ("signal", v.signal.name()),
                ("verdict", serde_name(&v.comparison.verdict)),
                ("final", report.is_final.to_string()),
            ]);
            if let Some(p) = &v.prediction {
                let mut labels = labels.clone();
                labels.retain(|(name, _)| *name != "verdict");
                labels.extend([
                    ("direction", serde_name(&p.direction)),
                    ("outcome", serde_name(&p.outcome)),
                ]);
                f.gauge(
                    "tuneprobe_tuning_prediction",
                    "1 for the outcome of a prediction (serve --expect) on a recent tuning change, per affected workload and signal.",
                    labels,
                    1.0,
                );
            }
            f.gauge(
                VERDICT_FAMILY,
                "1 for the latest verdict on a recent tuning change, per affected workload and signal.",
                labels,
                1.0,
            );
        }
    }
}
