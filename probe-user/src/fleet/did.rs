//! Difference in differences: the canary's after-minus-before shift against the
//! control's over the same intervals.
//!
//! For each canary interval the control's sample of the same interval (the median over
//! the control's matching pods) is subtracted: `d = canary - control`. Whatever moved
//! both groups at once (load that changed everywhere, a daily cycle, a noisy neighbour
//! on the whole cluster) cancels in `d`; what the knob did to the canary stays. The
//! before window's `d` against the after window's `d` is then judged exactly as `verify`
//! judges one workload's samples: the Mann-Whitney U test and the Hodges-Lehmann shift
//! with its 95% interval, on the same thresholds.

use serde::Serialize;

use crate::verify::stats::{self, Comparison, Verdict};
pub use crate::workloads::identity::workload_name;

/// One interval of one canary pod, with its control: the canary's sample, the control's
/// (median over its matching pods), and their loads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    pub canary: f64,
    pub control: f64,
    pub canary_load: Option<f64>,
    pub control_load: Option<f64>,
}

impl Paired {
    pub fn difference(&self) -> f64 {
        self.canary - self.control
    }
}

/// Both windows of a group, interval by interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Windows {
    pub before: Vec<Paired>,
    pub after: Vec<Paired>,
}

/// One group's before/after medians, its own shift, and its load change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    pub before: Option<f64>,
    pub after: Option<f64>,
    /// The group's own before-against-after comparison: what a node verdict would say.
    pub shift: Comparison,
    /// Mean load per interval after over before.
    pub load_change: Option<f64>,
}

/// The fleet verdict of one group and signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    /// The difference in differences: Hodges-Lehmann estimate of the shift of
    /// `canary - control`, its 95% interval, the rank test's p and the verdict.
    #[serde(flatten)]
    pub did: Comparison,
    pub canary: Side,
    pub control: Side,
    /// The canary's load change over the control's.
    pub relative_load_change: Option<f64>,
    pub load_changed: bool,
    /// The control group's own shift is significant and large enough for a verdict.
    pub control_moved: bool,
    pub notes: Vec<String>,
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn median(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| stats::median(values))
}

fn load_change(
    before: &[Paired],
    after: &[Paired],
    pick: fn(&Paired) -> Option<f64>,
) -> Option<f64> {
    let loads = |w: &[Paired]| w.iter().filter_map(pick).collect::<Vec<_>>();
    let (b, a) = (mean(&loads(before))?, mean(&loads(after))?);
    (b > 0.0).then(|| a / b)
}

/// The verdict on the differences: `verify`'s rule (p < `ALPHA` and a shift of at
/// least `MIN_RELATIVE_EFFECT`), with the floor taken from the canary's own before
/// median, because the differences' median is near zero whenever the groups started
/// alike and would make any significant wobble a verdict.
pub fn difference_in_differences(
    before: &[f64],
    after: &[f64],
    canary_before_median: f64,
    lower_is_better: bool,
) -> Comparison {
    stats::compare_against(before, after, canary_before_median, lower_is_better)
}

/// Judges one group's windows. `load` names the signal's load for the notes (`None`:
/// the signal is a count with no load).
pub fn judge(windows: &Windows, lower_is_better: bool, load: Option<&str>) -> Judgement {
    let column = |w: &[Paired], f: fn(&Paired) -> f64| w.iter().map(f).collect::<Vec<f64>>();
    let (canary_before, canary_after) = (
        column(&windows.before, |p| p.canary),
        column(&windows.after, |p| p.canary),
    );
    let (control_before, control_after) = (
        column(&windows.before, |p| p.control),
        column(&windows.after, |p| p.control),
    );
    let did = difference_in_differences(
        &column(&windows.before, Paired::difference),
        &column(&windows.after, Paired::difference),
        median(&canary_before).unwrap_or(0.0),
        lower_is_better,
    );
    let side = |before: &[f64], after: &[f64], pick: fn(&Paired) -> Option<f64>| Side {
        before: median(before),
        after: median(after),
        shift: stats::compare(before, after, lower_is_better),
        load_change: load_change(&windows.before, &windows.after, pick),
    };
    let canary = side(&canary_before, &canary_after, |p| p.canary_load);
    let control = side(&control_before, &control_after, |p| p.control_load);
    let relative_load_change = canary
        .load_change
        .zip(control.load_change)
        .filter(|(_, control)| *control > 0.0)
        .map(|(canary, control)| canary / control);
    let load_changed = relative_load_change.is_some_and(stats::load_changed);
    let control_moved = matches!(
        control.shift.verdict,
        Verdict::Improved | Verdict::Regressed
    );
    let mut notes = Vec::new();
    let number = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.4}"));
    if control_moved {
        notes.push(format!(
            "the control moved too ({} -> {}, p = {:.4}): the load changed everywhere; the \
             fleet verdict subtracts that, a node verdict on a canary would not",
            number(control.before),
            number(control.after),
            control.shift.p_value
        ));
    }
    if let (true, Some(ratio)) = (load_changed, relative_load_change) {
        notes.push(format!(
            "the canary's load ({}) changed x{ratio:.2} against the control's: the verdict \
             may reflect the load, not the knob",
            load.unwrap_or("load")
        ));
    }
    Judgement {
        did,
        canary,
        control,
        relative_load_change,
        load_changed,
        control_moved,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed LCG in [0, 1): deterministic noise.
    fn noise(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn windows(
        seed: u64,
        canary_shift: f64,
        control_shift: f64,
        canary_load: (f64, f64),
    ) -> Windows {
        let mut next = noise(seed);
        let mut paired = |shift_canary: f64, shift_control: f64, load: f64| {
            (0..20)
                .map(|_| Paired {
                    canary: 0.8 + shift_canary + 0.1 * (next() - 0.5),
                    control: 0.8 + shift_control + 0.1 * (next() - 0.5),
                    canary_load: Some(load),
                    control_load: Some(100.0),
                })
                .collect()
        };
        Windows {
            before: paired(0.0, 0.0, canary_load.0),
            after: paired(canary_shift, control_shift, canary_load.1),
        }
    }

    #[test]
    fn a_canary_only_shift_is_a_verdict_with_its_size() {
        let j = judge(
            &windows(1, -0.5, 0.0, (100.0, 100.0)),
            true,
            Some("cfs_periods"),
        );
        assert_eq!(j.did.verdict, Verdict::Improved, "{j:?}");
        assert!((j.did.effect + 0.5).abs() < 0.05, "{j:?}");
        assert!(j.did.ci95[0] < -0.5 && -0.5 < j.did.ci95[1], "{j:?}");
        assert!(j.did.p_value < 0.001, "{j:?}");
        assert!(!j.control_moved && j.notes.is_empty(), "{j:?}");
        assert_eq!(j.control.shift.verdict, Verdict::NoSignificantChange);
        assert_eq!(j.canary.shift.verdict, Verdict::Improved);
        // Worse after: regressed.
        let j = judge(&windows(2, 0.3, 0.0, (100.0, 100.0)), true, None);
        assert_eq!(j.did.verdict, Verdict::Regressed, "{j:?}");
    }

    #[test]
    fn a_shift_everywhere_is_no_change_with_the_note() {
        let j = judge(
            &windows(3, -0.5, -0.5, (100.0, 100.0)),
            true,
            Some("cfs_periods"),
        );
        assert_eq!(j.did.verdict, Verdict::NoSignificantChange, "{j:?}");
        // A node verdict on the canary alone would have claimed it.
        assert_eq!(j.canary.shift.verdict, Verdict::Improved);
        assert!(j.control_moved);
        assert!(
            j.notes[0].contains("the load changed everywhere"),
            "{:?}",
            j.notes
        );
    }

    #[test]
    fn a_canary_load_change_is_noted() {
        let j = judge(
            &windows(4, 0.0, 0.0, (100.0, 200.0)),
            true,
            Some("cfs_periods"),
        );
        assert_eq!(j.relative_load_change, Some(2.0));
        assert!(j.load_changed);
        assert!(
            j.notes
                .iter()
                .any(|n| n.contains("cfs_periods) changed x2.00")),
            "{:?}",
            j.notes
        );
    }

    #[test]
    fn no_shift_rarely_claims_one() {
        let claims = (0..200)
            .filter(|seed| {
                judge(&windows(100 + seed, 0.0, 0.0, (100.0, 100.0)), true, None)
                    .did
                    .verdict
                    != Verdict::NoSignificantChange
            })
            .count();
        assert!(claims <= 10, "{claims} of 200");
    }

    #[test]
    fn too_few_intervals_is_insufficient_data() {
        let mut w = windows(5, -0.5, 0.0, (100.0, 100.0));
        w.after.truncate(4);
        let j = judge(&w, true, None);
        assert_eq!(j.did.verdict, Verdict::InsufficientData);
        assert!(j.did.effect.is_nan());
    }
}
