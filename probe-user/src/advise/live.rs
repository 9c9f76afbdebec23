//! Advice kept current from `serve`'s ticks: a few snapshots spread over a sliding
//! window (not one per tick: at thousands of workloads a snapshot is megabytes), and the
//! advice over them, for `/advice` and the `tuneprobe_advice` gauge.

use std::collections::VecDeque;

use serde::Serialize;

use super::{Advice, Locator, Thresholds, advise};
use crate::{
    output::families::Families,
    report::{Snapshot, Workload},
    tuning::Inventory,
};

/// Snapshots kept per window: the CPU limit is sized from the demand in each step
/// between them.
const STEPS: f64 = 6.0;

/// The advice over the last window, as `/advice` serves it (the shape of
/// `advise --json`).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct AdviceReport {
    pub window_s: f64,
    pub advice: Vec<Advice>,
}

/// What the rules read of a snapshot: DNS latency as one histogram (not one per
/// resolver and response code, most of a workload's size), no round-trip or stall histograms
/// (connection durations stay: the keepalive rule reads them), no program lists or pod labels.
fn compact(snapshot: &Snapshot) -> Snapshot {
    let workloads = snapshot
        .workloads
        .iter()
        .map(|w| {
            let mut signals = w.signals.clone();
            if let Some(dns) = &mut signals.dns {
                let total = dns.latency();
                dns.latency_series.truncate(1);
                if let Some(one) = dns.latency_series.first_mut() {
                    one.histogram = total;
                }
            }
            if let Some(c) = &mut signals.connections {
                c.srtt_histogram = Default::default();
                c.min_rtt_histogram = Default::default();
            }
            if let Some(cpu) = &mut signals.cpu {
                cpu.stall_histogram = Default::default();
            }
            Workload {
                identity: w.identity.clone(),
                pod_labels: Default::default(),
                signals,
            }
        })
        .collect();
    Snapshot {
        duration_s: snapshot.duration_s,
        probes: Vec::new(),
        map_overflows: Default::default(),
        gc_deleted_entries: Default::default(),
        program_stats: Vec::new(),
        workloads,
    }
}

/// The sliding window and the advice over it.
pub(crate) struct Adviser {
    window_s: f64,
    snapshots: VecDeque<Snapshot>,
    pub(crate) current: AdviceReport,
}

impl Adviser {
    pub(crate) fn new(window: std::time::Duration) -> Self {
        Self {
            window_s: window.as_secs_f64(),
            snapshots: VecDeque::new(),
            current: AdviceReport::default(),
        }
    }

    /// Keeps `snapshot` when a step has passed since the last one kept, drops those
    /// older than the window, and judges the advice again; `false` when nothing changed.
    pub(crate) fn observe(
        &mut self,
        snapshot: &Snapshot,
        inventory: &Inventory,
        locator: &dyn Locator,
    ) -> bool {
        let step = self.window_s / STEPS;
        let due = self
            .snapshots
            .back()
            .is_none_or(|last| snapshot.duration_s - last.duration_s >= step);
        if !due {
            return false;
        }
        self.snapshots.push_back(compact(snapshot));
        while self.snapshots.len() > 2
            && snapshot.duration_s - self.snapshots[1].duration_s >= self.window_s
        {
            self.snapshots.pop_front();
        }
        let snapshots = self.snapshots.make_contiguous();
        let first = snapshots.first().map_or(0.0, |s| s.duration_s);
        self.current = AdviceReport {
            window_s: snapshot.duration_s - first,
            advice: advise(snapshots, inventory, &Thresholds::default(), locator),
        };
        true
    }

    #[cfg(test)]
    pub(crate) fn snapshots_kept(&self) -> usize {
        self.snapshots.len()
    }

    /// `tuneprobe_advice`: one series per knob and workload with advice, its value how
    /// many times over its threshold the symptom is.
    pub(crate) fn metrics(&self, f: &mut Families) {
        for a in &self.current.advice {
            for w in &a.workloads {
                let mut labels = w.labels();
                labels.extend([
                    ("knob", a.knob.clone()),
                    ("scope", crate::output::serde_name(&a.scope)),
                    ("measure", a.evidence.measure.name()),
                    ("current", a.current.clone()),
                    ("recommended", a.recommended.clone()),
                ]);
                f.gauge(
                    "tuneprobe_advice",
                    "Advice of `tuneprobe advise`: a knob to change for a workload, with its \
                     current and recommended value; the value is how many times over its \
                     threshold the symptom (measure) is over the advice window.",
                    labels,
                    super::impact(a),
                );
            }
        }
    }
}
