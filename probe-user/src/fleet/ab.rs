//! `fleet ab`: two groups of pods across nodes, run side by side with different values of
//! a knob, compared over the same intervals (`verify --ab` on one node, here through
//! Prometheus). No before and after: load that changes at some moment changes for both
//! groups, and cancels in their difference.
//!
//! Per interval, each group's value is the median over its pods' containers (as the
//! control's is in the difference in differences, [`super::did`]), and the treated
//! group's minus the control's is tested against zero: the Wilcoxon signed-rank test and
//! the one-sample Hodges-Lehmann shift with its 95% interval
//! (`stats::compare_paired`), on the same thresholds as every verdict.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{
    FleetError,
    prom::{Matchers, Prometheus},
    series::{self, Instance, Samples},
};
use crate::{
    signals::measure::Measure,
    verify::stats::{self, Comparison},
};

/// What to compare.
#[derive(Debug, Clone)]
pub struct AbOptions {
    /// Label matchers of the treated pods' series (`namespace="shop",pod=~"api-b-.*"`).
    pub treated: Matchers,
    pub control: Matchers,
    /// The window, ending at `end` (unix seconds).
    pub window: f64,
    pub end: f64,
    pub interval: f64,
    pub signals: Vec<Measure>,
}

/// The comparison of one signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbVerdict {
    pub signal: Measure,
    /// Containers seen in each group.
    pub treated_containers: usize,
    pub control_containers: usize,
    /// Medians over the intervals of each group's per-interval value.
    pub treated: Option<f64>,
    pub control: Option<f64>,
    /// Intervals where both groups had a value.
    pub intervals: usize,
    /// Of `treated - control`, per interval.
    #[serde(flatten)]
    pub comparison: Comparison,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbReport {
    pub prometheus: String,
    pub treated: String,
    pub control: String,
    pub window_s: f64,
    pub interval_s: f64,
    pub end: f64,
    pub notes: Vec<String>,
    /// The store's warnings (a store that failed, a partial answer), as in `fleet
    /// verify`'s report.
    pub partial: Vec<String>,
    pub verdicts: Vec<AbVerdict>,
}

/// Queries each signal for both groups and compares them interval by interval.
pub fn verify_ab(prometheus: &Prometheus, options: &AbOptions) -> Result<AbReport, FleetError> {
    let step = options.interval;
    let end = (options.end / step).floor() * step;
    // A longer range is split into requests by `query_range`.
    let start = end - options.window - step;
    let mut notes = Vec::new();
    let mut verdicts = Vec::new();
    for &signal in &options.signals {
        let group = |selector: &Matchers| -> Result<Samples, FleetError> {
            let source = signal.declared().exported;
            let mut answers = BTreeMap::new();
            for (role, query) in series::queries(source, &selector.to_string()) {
                answers.insert(role, prometheus.query_range(&query, start, end, step)?);
            }
            Ok(series::samples(source, &answers, step))
        };
        let (treated, control) = (group(&options.treated)?, group(&options.control)?);
        check_groups(signal, &treated, &control, &mut notes)?;
        verdicts.push(compare(signal, &treated, &control));
    }
    Ok(AbReport {
        prometheus: prometheus.base_url().to_string(),
        treated: options.treated.to_string(),
        control: options.control.to_string(),
        window_s: options.window,
        interval_s: step,
        end,
        notes,
        partial: prometheus.warnings(),
        verdicts,
    })
}

/// Both groups have series, and none is in both.
fn check_groups(
    signal: Measure,
    treated: &Samples,
    control: &Samples,
    notes: &mut Vec<String>,
) -> Result<(), FleetError> {
    let both: BTreeSet<&Instance> = treated.keys().filter(|i| control.contains_key(i)).collect();
    if let Some(one) = both.first() {
        return Err(FleetError::NoControl(format!(
            "{}/{} ({}) on {} matches both --treated and --control",
            one.namespace, one.pod, one.container, one.node
        )));
    }
    for (name, group) in [("--treated", treated), ("--control", control)] {
        if group.is_empty() {
            notes.push(format!("{}: no series matches {name}", signal.name()));
        }
    }
    Ok(())
}

/// Each group's value per interval: the median over its containers.
fn per_interval(samples: &Samples) -> BTreeMap<i64, f64> {
    let mut by_interval: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for intervals in samples.values() {
        for (&at, sample) in intervals {
            by_interval.entry(at).or_default().push(sample.value);
        }
    }
    by_interval
        .into_iter()
        .map(|(at, values)| (at, stats::median(&values)))
        .collect()
}

/// `treated - control` per interval, tested against zero.
pub fn compare(signal: Measure, treated: &Samples, control: &Samples) -> AbVerdict {
    let (t, c) = (per_interval(treated), per_interval(control));
    let paired: Vec<(f64, f64)> = t
        .iter()
        .filter_map(|(at, &tv)| Some((tv, *c.get(at)?)))
        .collect();
    let differences: Vec<f64> = paired.iter().map(|(tv, cv)| tv - cv).collect();
    let median = |values: Vec<f64>| (!values.is_empty()).then(|| stats::median(&values));
    let control_median = median(paired.iter().map(|p| p.1).collect());
    AbVerdict {
        signal,
        treated_containers: treated.len(),
        control_containers: control.len(),
        treated: median(paired.iter().map(|p| p.0).collect()),
        control: control_median,
        intervals: differences.len(),
        comparison: stats::compare_paired(
            &differences,
            control_median.unwrap_or(0.0),
            signal.lower_is_better(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fleet::series::Sample, verify::stats::Verdict};

    /// `pods` containers, each with `value(pod, interval)` in 30 intervals.
    fn group(prefix: &str, pods: usize, value: impl Fn(usize, i64) -> f64) -> Samples {
        (0..pods)
            .map(|p| {
                let instance = Instance {
                    node: format!("node-{p}"),
                    namespace: "shop".into(),
                    pod: format!("{prefix}-{p}"),
                    container: "app".into(),
                };
                let intervals = (0..30)
                    .map(|i| {
                        let sample = Sample {
                            value: value(p, i),
                            load: Some(100.0),
                        };
                        (i * 60_000, sample)
                    })
                    .collect();
                (instance, intervals)
            })
            .collect()
    }

    /// A load that swings for everyone at once: it cancels between the groups.
    fn swing(i: i64) -> f64 {
        if i % 10 < 5 { 0.2 } else { 0.6 }
    }

    #[test]
    fn a_lower_treated_group_is_an_improvement_whatever_the_shared_load_does() {
        let treated = group("api-b", 3, |p, i| swing(i) * 0.5 + 0.01 * p as f64);
        let control = group("api-a", 3, |p, i| swing(i) + 0.01 * p as f64);
        let v = compare(Measure::ConnectFailureRatio, &treated, &control);
        assert_eq!(v.comparison.verdict, Verdict::Improved, "{v:?}");
        assert_eq!((v.intervals, v.treated_containers), (30, 3));
        assert!(v.comparison.ci95[1] < 0.0, "{v:?}");
        // The other way round: a regression.
        let v = compare(Measure::ConnectFailureRatio, &control, &treated);
        assert_eq!(v.comparison.verdict, Verdict::Regressed, "{v:?}");
    }

    #[test]
    fn identical_groups_are_no_significant_change() {
        let a = group("api-a", 3, |p, i| {
            swing(i) + 0.001 * ((p as i64 * 7 + i * 13) % 5) as f64
        });
        let b = group("api-b", 3, |p, i| {
            swing(i) + 0.001 * ((p as i64 * 11 + i * 3) % 5) as f64
        });
        let v = compare(Measure::ConnectFailureRatio, &a, &b);
        assert_eq!(v.comparison.verdict, Verdict::NoSignificantChange, "{v:?}");
    }

    #[test]
    fn a_container_in_both_groups_is_refused_and_an_empty_group_noted() {
        let a = group("api", 2, |_, _| 0.1);
        let mut notes = Vec::new();
        let err = check_groups(Measure::ConnectFailureRatio, &a, &a, &mut notes).unwrap_err();
        assert!(err.to_string().contains("matches both"), "{err}");
        let none = Samples::new();
        check_groups(Measure::ConnectFailureRatio, &a, &none, &mut notes).unwrap();
        assert_eq!(
            notes,
            ["connect_failure_ratio: no series matches --control"]
        );
        let v = compare(Measure::ConnectFailureRatio, &a, &none);
        assert_eq!(v.comparison.verdict, Verdict::InsufficientData);
    }
}
