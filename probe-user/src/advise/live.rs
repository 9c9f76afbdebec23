//! Advice kept current from `serve`'s ticks: a few snapshots spread over a sliding
//! window (not one per tick: at thousands of workloads a snapshot is megabytes), and the
//! advice over them, for `/advice` and the `tuneprobe_advice` gauge.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use serde::Serialize;

use super::{Advice, Locator, Thresholds, advise_window, symptoms::Window};
use crate::{
    output::families::Families,
    report::{Snapshot, Workload},
    signals::Sections,
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

/// What the rules read of a workload: DNS latency as one histogram (not one per
/// resolver and response code, most of a workload's size), no round-trip or stall
/// histograms (connection durations stay: the keepalive rule reads them), no pod labels.
fn compact(w: &Workload) -> Workload {
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
}

/// A snapshot kept before the latest: each workload's sections by cgroup path (sorted),
/// shared with the snapshot kept before it where they did not change. Most workloads of
/// a big node are idle most of the time: eight copies of every workload were most of the
/// agent's memory at 10,000 workloads.
struct Kept {
    duration_s: f64,
    sections: Vec<(Arc<str>, Arc<Sections>)>,
}

impl Kept {
    /// `workloads` (taken at `duration_s`), sharing what did not change since `before`.
    fn of(duration_s: f64, workloads: Vec<Workload>, before: Option<&Kept>) -> Self {
        let mut sections: Vec<(Arc<str>, Arc<Sections>)> = workloads
            .into_iter()
            .filter_map(|w| {
                let path = w.identity.cgroup_path?;
                let same = before
                    .and_then(|b| b.get(&path))
                    .filter(|(_, s)| **s == w.signals);
                Some(match same {
                    Some((path, signals)) => (Arc::clone(path), Arc::clone(signals)),
                    None => (Arc::from(path), Arc::new(w.signals)),
                })
            })
            .collect();
        sections.sort_by(|a, b| a.0.cmp(&b.0));
        // Collected in place, in the buffer of `workloads` (15 times the size): kept for
        // a whole window, it must not hold that buffer.
        sections.shrink_to_fit();
        Self {
            duration_s,
            sections,
        }
    }

    fn get(&self, path: &str) -> Option<&(Arc<str>, Arc<Sections>)> {
        let i = self
            .sections
            .binary_search_by(|(p, _)| (**p).cmp(path))
            .ok()?;
        self.sections.get(i)
    }

    fn by_path(&self) -> BTreeMap<&str, &Sections> {
        self.sections.iter().map(|(p, s)| (&**p, &**s)).collect()
    }
}

/// The sliding window and the advice over it.
#[derive(Debug)]
pub(crate) struct Adviser {
    window_s: f64,
    /// The snapshots kept before the latest, oldest first.
    kept: VecDeque<Kept>,
    /// The latest snapshot kept: its time and workloads (they are the ones advised).
    latest: Option<(f64, Vec<Workload>)>,
    pub(crate) current: AdviceReport,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Kept({} s, {} workloads)",
            self.duration_s,
            self.sections.len()
        )
    }
}

impl Adviser {
    pub(crate) fn new(window: std::time::Duration) -> Self {
        Self {
            window_s: window.as_secs_f64(),
            kept: VecDeque::new(),
            latest: None,
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
            .latest
            .as_ref()
            .is_none_or(|(at, _)| snapshot.duration_s - at >= step);
        if !due {
            return false;
        }
        let workloads = snapshot.workloads.iter().map(compact).collect();
        if let Some((at, before)) = self.latest.replace((snapshot.duration_s, workloads)) {
            let kept = Kept::of(at, before, self.kept.back());
            self.kept.push_back(kept);
        }
        while self.kept.len() >= 2 && snapshot.duration_s - self.kept[1].duration_s >= self.window_s
        {
            self.kept.pop_front();
        }
        let Some((at, latest)) = &self.latest else {
            return false;
        };
        let earlier = self.kept.iter().map(|k| (k.duration_s, k.by_path()));
        let window = Window::of_sections(earlier, (*at, latest));
        self.current = AdviceReport {
            window_s: window.length_s().unwrap_or(0.0),
            advice: advise_window(&window, inventory, &Thresholds::default(), locator),
        };
        true
    }

    #[cfg(test)]
    pub(crate) fn snapshots_kept(&self) -> usize {
        self.kept.len() + usize::from(self.latest.is_some())
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
