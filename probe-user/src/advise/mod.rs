//! From a symptom to the knob to change: the advice rules of the knob table
//! ([`crate::tuning::Rule`]) evaluated on a window of snapshots and on the settings where
//! each workload lives. Conservative by design: a rule fires only over its threshold,
//! with enough load to call it a pattern, and only where the knob does not already have
//! the value it would recommend; a healthy node gets no advice.
//!
//! - [`symptoms`]: each workload's measures over the window, and the rules' conditions;
//! - [`place`]: where a knob lives for a workload, its value there and how `verify`
//!   reaches it;
//! - [`recommend`]: the value to recommend and the command that proves it.

#[cfg(test)]
pub(crate) mod docs;
mod live;
mod place;
mod recommend;
mod symptoms;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;

use serde::Serialize;

pub(crate) use self::{
    live::{AdviceReport, Adviser},
    place::{Locator, NodeLocator, TargetArg},
};
use self::{
    place::Place,
    symptoms::{Window, WindowValues},
};
use crate::{
    report::Snapshot,
    signals::measure::Measure,
    tuning::{self, Inventory, KNOBS, Knob, Rule, Scope},
    workloads::identity::Identity,
};

/// One piece of advice: a symptom, the knob, its value where the workloads live, the
/// value to set, and the prediction a change is judged on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Advice {
    /// As `verify --apply` takes it (`cpu.cfs_quota_us` on a cgroup v1 node).
    pub knob: String,
    pub scope: Scope,
    /// `verify`'s option that reaches where the knob lives; `null` for a node knob.
    pub target: Option<TargetArg>,
    pub workloads: Vec<Identity>,
    pub evidence: Evidence,
    pub current: String,
    pub recommended: String,
    pub takes_effect: String,
    /// Why this knob moves this symptom.
    pub why: String,
    pub prediction: Prediction,
    pub verify_command: String,
    pub notes: Vec<String>,
}

/// The symptom: a measure over the window, at or above its threshold.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Evidence {
    pub measure: Measure,
    /// The worst of the workloads' values.
    pub value: f64,
    pub threshold: f64,
    pub threshold_why: String,
    pub window_s: f64,
    /// The measure's load over the window (attempts, datagrams, periods, requests).
    pub load: f64,
    /// Its device, for block measures.
    pub device: Option<String>,
    /// What else the rule required, with its figures.
    pub detail: Option<String>,
}

/// What the change must do, stated before it is made: `measure` lower by at least
/// `min_effect` of its value before the change.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Prediction {
    pub measure: Measure,
    pub direction: &'static str,
    pub min_effect: f64,
}

/// The thresholds in force: the table's, or the user's for some symptoms.
#[derive(Debug, Clone, Default)]
pub(crate) struct Thresholds(pub BTreeMap<Measure, f64>);

impl Thresholds {
    fn of(&self, rule: &Rule) -> f64 {
        self.0.get(&rule.symptom).copied().unwrap_or(rule.threshold)
    }
}

/// Every piece of advice for the window `snapshots` (consecutive cumulative snapshots,
/// oldest first), sorted by how far over its threshold each symptom is.
pub(crate) fn advise(
    snapshots: &[Snapshot],
    inventory: &Inventory,
    thresholds: &Thresholds,
    locator: &dyn Locator,
) -> Vec<Advice> {
    advise_window(
        &Window::of_snapshots(snapshots),
        inventory,
        thresholds,
        locator,
    )
}

/// [`advise`] over a window of the snapshots' sections.
pub(crate) fn advise_window(
    window: &Window<'_>,
    inventory: &Inventory,
    thresholds: &Thresholds,
    locator: &dyn Locator,
) -> Vec<Advice> {
    let Some(window_s) = window.length_s() else {
        return Vec::new();
    };
    let mut grouped: BTreeMap<(String, String), Advice> = BTreeMap::new();
    for values in symptoms::window_values(window) {
        for knob in KNOBS.iter().filter(|k| k.advice.is_some()) {
            for device in values.devices_for(knob) {
                let Some(advice) = advice_for(
                    knob, &values, device, window_s, inventory, thresholds, locator,
                ) else {
                    continue;
                };
                merge(&mut grouped, advice);
            }
        }
    }
    let mut all: Vec<Advice> = grouped.into_values().collect();
    all.sort_by(|a, b| impact(b).total_cmp(&impact(a)).then(a.knob.cmp(&b.knob)));
    all
}

/// How far over its threshold a symptom is.
fn impact(advice: &Advice) -> f64 {
    advice.evidence.value / advice.evidence.threshold.max(f64::MIN_POSITIVE)
}

/// Advice for the same knob at the same place is one, with every workload it serves and
/// the worst evidence.
fn merge(grouped: &mut BTreeMap<(String, String), Advice>, advice: Advice) {
    let key = (advice.knob.clone(), advice.verify_command.clone());
    match grouped.get_mut(&key) {
        Some(existing) => {
            existing.workloads.extend(advice.workloads);
            if advice.evidence.value > existing.evidence.value {
                existing.evidence = advice.evidence;
            }
        }
        None => {
            grouped.insert(key, advice);
        }
    }
}

/// The advice of `knob`'s rule for one workload (on one device), if its symptom is there.
fn advice_for(
    knob: &Knob,
    values: &WindowValues<'_>,
    device: Option<&str>,
    window_s: f64,
    inventory: &Inventory,
    thresholds: &Thresholds,
    locator: &dyn Locator,
) -> Option<Advice> {
    let rule = knob.advice?;
    let threshold = thresholds.of(&rule);
    let (value, load) = values.window(rule.symptom, device)?;
    if value < threshold || load < rule.min_load {
        return None;
    }
    let place = Place::find(knob, values.workload, device, inventory, locator)?;
    let detail = symptoms::condition(&rule, values, device, &place)?;
    let recommended = recommend::value(knob, &rule, &place, values)?;
    let evidence = Evidence {
        measure: rule.symptom,
        value,
        threshold,
        threshold_why: squeeze(rule.threshold_why),
        window_s,
        load,
        device: device.map(str::to_string),
        detail,
    };
    Some(recommend::advice(
        knob,
        &rule,
        place,
        recommended,
        evidence,
        values.workload,
    ))
}

/// Table strings are wrapped in the source: one space between words.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The knobs of the table that have an advice rule, for `--help` and the docs.
pub(crate) fn advised_knobs() -> impl Iterator<Item = (&'static Knob, Rule)> {
    tuning::KNOBS
        .iter()
        .filter_map(|k| k.advice.map(|rule| (k, rule)))
}
