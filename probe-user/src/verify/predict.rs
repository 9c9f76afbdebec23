//! Pre-registered predictions (`verify --expect`, `--plan`): a measure said before
//! measuring to move one way by at least a share of its before median, judged by a
//! one-sided test in that direction. A two-sided verdict on every measure a knob might
//! move is a search among several; a prediction stated first is one claim, tested as
//! such, and the knob's other verdicts are marked exploratory beside it.

use serde::{Deserialize, Serialize};

use super::{
    judge::WorkloadVerdict,
    stats::{self, ALPHA, MIN_SAMPLES},
};
use crate::signals::measure::Measure;

/// Which way a measure is predicted to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Direction {
    Lower,
    Higher,
}

impl Direction {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "lower" => Some(Self::Lower),
            "higher" => Some(Self::Higher),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Lower => "lower",
            Self::Higher => "higher",
        }
    }

    fn opposite(self) -> Self {
        match self {
            Self::Lower => Self::Higher,
            Self::Higher => Self::Lower,
        }
    }

    /// Whether an effect (after minus before) goes this way.
    fn holds(self, effect: f64) -> bool {
        match self {
            Self::Lower => effect < 0.0,
            Self::Higher => effect > 0.0,
        }
    }
}

/// Why `--expect` (or an advice's prediction) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ExpectationError {
    #[error("expected MEASURE:lower|higher[:MIN_EFFECT], such as listen_overflow_ratio:lower:50%")]
    Form,
    #[error("unknown measure {name:?}; one of {known}")]
    Measure { name: String, known: String },
    #[error("unknown direction {0:?}: lower or higher")]
    Direction(String),
    #[error(
        "minimum effect {0:?} is not a percentage of the before median, such as 50% (at most \
         100% for lower)"
    )]
    Percentage(String),
}

/// A prediction stated before measuring: `measure` moves `direction` by at least
/// `min_effect` (a fraction) of its before median.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Expectation {
    pub measure: Measure,
    pub direction: Direction,
    pub min_effect: f64,
}

impl Expectation {
    /// A measure by name, with a minimum effect that can be met: at least 0, and for a
    /// fall at most the whole before median.
    pub(crate) fn new(
        measure: &str,
        direction: Direction,
        min_effect: f64,
    ) -> Result<Self, ExpectationError> {
        let measure = Measure::parse(measure).ok_or_else(|| ExpectationError::Measure {
            name: measure.to_string(),
            known: Measure::judged()
                .map(Measure::name)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let most = match direction {
            Direction::Lower => 1.0,
            Direction::Higher => f64::INFINITY,
        };
        if !(min_effect.is_finite() && (0.0..=most).contains(&min_effect)) {
            return Err(ExpectationError::Percentage(percent(min_effect)));
        }
        Ok(Self {
            measure,
            direction,
            min_effect,
        })
    }

    /// `MEASURE:lower|higher[:MIN_EFFECT]`, MIN_EFFECT a percentage such as `50%`
    /// (default [`stats::MIN_RELATIVE_EFFECT`], the floor of every verdict).
    pub(crate) fn parse(text: &str) -> Result<Self, ExpectationError> {
        let mut parts = text.split(':');
        let (Some(measure), Some(direction)) = (parts.next(), parts.next()) else {
            return Err(ExpectationError::Form);
        };
        let direction = Direction::parse(direction)
            .ok_or_else(|| ExpectationError::Direction(direction.to_string()))?;
        let min_effect = match parts.next() {
            None => stats::MIN_RELATIVE_EFFECT,
            Some(share) => share
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
                .map(|n| n / 100.0)
                .ok_or_else(|| ExpectationError::Percentage(share.to_string()))?,
        };
        if parts.next().is_some() {
            return Err(ExpectationError::Form);
        }
        Self::new(measure, direction, min_effect)
    }
}

impl std::fmt::Display for Expectation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&claim(self.measure, self.direction, self.min_effect))
    }
}

/// `listen_overflow_ratio lower by >= 50%`.
fn claim(measure: Measure, direction: Direction, min_effect: f64) -> String {
    format!(
        "{} {} by >= {}",
        measure.name(),
        direction.name(),
        percent(min_effect)
    )
}

/// A fraction as a percentage, without the float noise of `0.1 * 100`.
fn percent(fraction: f64) -> String {
    format!("{}%", (fraction * 100.0 * 1e6).round() / 1e6)
}

/// How a prediction came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Outcome {
    /// Significant in the predicted direction (one-sided p < [`ALPHA`]), by at least the
    /// predicted share of the before median.
    #[serde(rename = "as predicted")]
    AsPredicted,
    /// Anything else short of the opposite: no significant move, or a smaller one.
    #[serde(rename = "not as predicted")]
    NotAsPredicted,
    /// Significant the other way (the other side's one-sided p < [`ALPHA`]), by at
    /// least the floor a verdict needs.
    #[serde(rename = "opposite")]
    Opposite,
    /// Fewer than [`MIN_SAMPLES`] samples on either side.
    #[serde(rename = "insufficient data")]
    InsufficientData,
}

/// A prediction with its outcome, as a verdict carries it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Prediction {
    pub direction: Direction,
    /// The smallest predicted move, as a fraction of the before median.
    pub min_effect: f64,
    pub outcome: Outcome,
    /// One-sided p-value of the Mann-Whitney U test in the predicted direction.
    pub p_value: f64,
}

impl Prediction {
    /// `listen_overflow_ratio lower by >= 50%`.
    pub(crate) fn claim(&self, measure: Measure) -> String {
        claim(measure, self.direction, self.min_effect)
    }
}

/// Judges `after` against `before` as `direction` by at least `min_effect` of before's
/// median predicted; `opposite_floor` is the share of that median a move the other way
/// needs to count as `opposite` (the floor of a verdict).
pub(crate) fn predict(
    before: &[f64],
    after: &[f64],
    direction: Direction,
    min_effect: f64,
    opposite_floor: f64,
) -> Prediction {
    let judged = |outcome, p_value| Prediction {
        direction,
        min_effect,
        outcome,
        p_value,
    };
    if before.len() < MIN_SAMPLES || after.len() < MIN_SAMPLES {
        return judged(Outcome::InsufficientData, f64::NAN);
    }
    let reference = stats::median(before).abs();
    let (effect, _) = stats::hodges_lehmann(before, after);
    let p_value = stats::mann_whitney_one_sided_p(before, after, direction == Direction::Lower);
    let other = direction.opposite();
    let outcome =
        if p_value < ALPHA && direction.holds(effect) && effect.abs() >= min_effect * reference {
            Outcome::AsPredicted
        } else if stats::mann_whitney_one_sided_p(before, after, other == Direction::Lower) < ALPHA
            && other.holds(effect)
            && effect.abs() >= opposite_floor * reference
        {
            Outcome::Opposite
        } else {
            Outcome::NotAsPredicted
        };
    judged(outcome, p_value)
}

/// Judges each verdict of an expected measure as its prediction, and marks the others
/// exploratory. Without expectations the verdicts stay as they are: nothing was
/// predicted, so nothing is secondary either.
pub(crate) fn register_predictions(verdicts: &mut [WorkloadVerdict], expected: &[Expectation]) {
    if expected.is_empty() {
        return;
    }
    for v in verdicts {
        let Some(e) = expected.iter().find(|e| e.measure == v.signal) else {
            v.exploratory = true;
            continue;
        };
        // A move the other way is claimed at the floor its verdict would use.
        let floor = if v.load_changed {
            stats::MIN_RELATIVE_EFFECT_UNDER_LOAD_CHANGE
        } else {
            stats::MIN_RELATIVE_EFFECT
        };
        v.prediction = Some(predict(
            &v.samples.before,
            &v.samples.after,
            e.direction,
            e.min_effect,
            floor,
        ));
        v.exploratory = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten samples around 1.0.
    const BEFORE: [f64; 10] = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 1.0, 1.03, 0.97];

    fn lower_by(min_effect: f64, after: &[f64]) -> Prediction {
        predict(
            &BEFORE,
            after,
            Direction::Lower,
            min_effect,
            stats::MIN_RELATIVE_EFFECT,
        )
    }

    #[test]
    fn one_sided_p_is_half_the_two_sided_one_in_the_predicted_direction() {
        // R: wilcox.test(6:10, 1:5, alternative = "greater", exact = FALSE) -> p = 0.006093
        // (before 6..10, after 1..5: after lower), half the two-sided 0.01219.
        let before = [6.0, 7.0, 8.0, 9.0, 10.0];
        let after = [1.0, 2.0, 3.0, 4.0, 5.0];
        let lower = stats::mann_whitney_one_sided_p(&before, &after, true);
        assert!((lower - 0.006_093).abs() < 1e-6, "{lower}");
        let two_sided = stats::mann_whitney_p(&before, &after);
        assert!(
            (lower - two_sided / 2.0).abs() < 1e-12,
            "{lower} {two_sided}"
        );
        // The other side: R's alternative = "less" gives 0.9967.
        let higher = stats::mann_whitney_one_sided_p(&before, &after, false);
        assert!((higher - 0.996_692).abs() < 1e-6, "{higher}");
        // Every value tied: no evidence either way.
        assert_eq!(
            stats::mann_whitney_one_sided_p(&[2.0; 6], &[2.0; 6], true),
            1.0
        );
    }

    #[test]
    fn the_four_outcomes() {
        // Fell by 80%: as predicted at a predicted 50%.
        let fell = BEFORE.map(|v| v * 0.2);
        let p = lower_by(0.5, &fell);
        assert_eq!(p.outcome, Outcome::AsPredicted, "{p:?}");
        assert!(p.p_value < 1e-3, "{p:?}");
        assert_eq!((p.direction, p.min_effect), (Direction::Lower, 0.5));
        // Fell by 20%, significant, but half was predicted: not as predicted.
        let fell_less = BEFORE.map(|v| v * 0.8);
        let p = lower_by(0.5, &fell_less);
        assert_eq!(p.outcome, Outcome::NotAsPredicted, "{p:?}");
        assert!(p.p_value < ALPHA, "a real but smaller move: {p:?}");
        // ... which a predicted 10% would have been.
        assert_eq!(lower_by(0.1, &fell_less).outcome, Outcome::AsPredicted);
        // Rose by half: the opposite.
        let rose = BEFORE.map(|v| v * 1.5);
        let p = lower_by(0.5, &rose);
        assert_eq!(p.outcome, Outcome::Opposite, "{p:?}");
        assert!(p.p_value > 0.99, "the predicted side's p: {p:?}");
        // Predicted higher, it rose: as predicted.
        let up = predict(&BEFORE, &rose, Direction::Higher, 0.25, 0.1);
        assert_eq!(up.outcome, Outcome::AsPredicted, "{up:?}");
        // Flat noise: not as predicted.
        let flat = [0.99, 1.04, 0.96, 1.01, 1.0, 0.97, 1.03, 0.98, 1.02, 1.0];
        let p = lower_by(0.1, &flat);
        assert_eq!(p.outcome, Outcome::NotAsPredicted, "{p:?}");
        assert!(p.p_value > 0.3, "{p:?}");
        // Three samples: insufficient data, no p.
        let p = lower_by(0.5, &fell[..3]);
        assert_eq!(p.outcome, Outcome::InsufficientData);
        assert!(p.p_value.is_nan());
        // A move the other way smaller than the floor is no claim either.
        let slightly_up = BEFORE.map(|v| v * 1.05);
        assert_eq!(lower_by(0.5, &slightly_up).outcome, Outcome::NotAsPredicted);
    }

    #[test]
    fn outcomes_and_directions_have_their_documented_names() {
        let json = serde_json::to_value(Prediction {
            direction: Direction::Lower,
            min_effect: 0.5,
            outcome: Outcome::NotAsPredicted,
            p_value: 0.25,
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"direction": "lower", "min_effect": 0.5,
                               "outcome": "not as predicted", "p_value": 0.25})
        );
        for (outcome, name) in [
            (Outcome::AsPredicted, "as predicted"),
            (Outcome::Opposite, "opposite"),
            (Outcome::InsufficientData, "insufficient data"),
        ] {
            assert_eq!(serde_json::to_value(outcome).unwrap(), name);
        }
    }

    #[test]
    fn identical_distributions_are_rarely_as_predicted() {
        // 200 predictions of a fall by the default 10% on two draws of 30 from the same
        // uniform distribution (a fixed LCG): the one-sided test at ALPHA = 0.05 passes
        // about 10. Seen: 8 of 200, with the floor and without it (a fall significant in
        // 30 samples is already more than 10% of this median), against a bound of
        // ALPHA x 200 + 5 = 15 (the binomial's standard deviation is 3.1).
        let mut state = 2024u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut at_floor, mut without_floor) = (0, 0);
        for _ in 0..200 {
            let a: Vec<f64> = (0..30).map(|_| next()).collect();
            let b: Vec<f64> = (0..30).map(|_| next()).collect();
            let as_predicted = |min_effect| {
                predict(&a, &b, Direction::Lower, min_effect, 0.1).outcome == Outcome::AsPredicted
            };
            at_floor += usize::from(as_predicted(stats::MIN_RELATIVE_EFFECT));
            without_floor += usize::from(as_predicted(0.0));
        }
        let bound = (ALPHA * 200.0) as usize + 5;
        assert!(at_floor <= without_floor && without_floor <= bound);
        assert_eq!((at_floor, without_floor), (8, 8));
    }

    #[test]
    fn expect_parses_measure_direction_and_percentage() {
        let e = Expectation::parse("listen_overflow_ratio:lower:50%").unwrap();
        assert_eq!(
            (e.measure, e.direction, e.min_effect),
            (Measure::ListenOverflowRatio, Direction::Lower, 0.5)
        );
        assert_eq!(e.to_string(), "listen_overflow_ratio lower by >= 50%");
        let e = Expectation::parse("srtt_ms:higher").unwrap();
        assert_eq!(
            (e.measure, e.direction, e.min_effect),
            (
                Measure::SrttMs,
                Direction::Higher,
                stats::MIN_RELATIVE_EFFECT
            )
        );
        assert_eq!(e.to_string(), "srtt_ms higher by >= 10%");
        assert_eq!(
            Expectation::parse("drops:higher:250%").unwrap().min_effect,
            2.5
        );
        assert_eq!(
            Expectation::parse("srtt_ms:lower:12.5%")
                .unwrap()
                .min_effect,
            0.125
        );
    }

    #[test]
    fn expect_refuses_what_it_cannot_test() {
        let err = |text| Expectation::parse(text).unwrap_err();
        assert_eq!(err("listen_overflow_ratio"), ExpectationError::Form);
        assert_eq!(
            err("listen_overflow_ratio:lower:50%:x"),
            ExpectationError::Form
        );
        let ExpectationError::Measure { name, known } = err("overflows:lower") else {
            panic!("{:?}", err("overflows:lower"));
        };
        assert_eq!(name, "overflows");
        assert!(known.contains("listen_overflow_ratio"), "{known}");
        // Context for notes, never judged.
        assert!(matches!(
            err("cpu_usage_ms_per_period:lower"),
            ExpectationError::Measure { .. }
        ));
        assert_eq!(
            err("srtt_ms:down"),
            ExpectationError::Direction("down".into())
        );
        for (text, shown) in [
            ("srtt_ms:lower:50", "50"),
            ("srtt_ms:lower:half%", "half%"),
            ("srtt_ms:lower:", ""),
            ("srtt_ms:lower:150%", "150%"),
            ("srtt_ms:lower:-5%", "-5%"),
            ("srtt_ms:higher:inf%", "inf%"),
        ] {
            assert_eq!(
                err(text),
                ExpectationError::Percentage(shown.into()),
                "{text}"
            );
        }
        assert_eq!(
            err("srtt_ms:lower:150%").to_string(),
            "minimum effect \"150%\" is not a percentage of the before median, such as 50% \
             (at most 100% for lower)"
        );
    }
}
