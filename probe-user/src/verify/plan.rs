//! `verify --plan`: one advice of `tuneprobe advise --json` read as the change to make
//! (its knob at its recommended value, where its target says) and the prediction to
//! judge it by. Only the fields used here are read; the others are ignored, so the
//! advice may grow.

use serde::Deserialize;
use serde_json::Value;

use super::predict::{Direction, Expectation, ExpectationError};
use crate::verify::stats;

/// Why a plan was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    #[error("not an advice of `tuneprobe advise --json`: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "the plan holds {0} pieces of advice; --plan takes exactly one (one element of \
         `advice`, or that object alone)"
    )]
    Count(usize),
    #[error("the advice for {0} predicts nothing: use --apply, with --expect if you predict")]
    NoPrediction(String),
    #[error("the advice's recommended value for {0} is neither a string nor a number")]
    Recommended(String),
    #[error(
        "the advice's target option {0:?} is not one of --pod, --netns, --cgroup, --device, \
         --mount"
    )]
    Target(String),
    #[error("the advice's prediction: {0}")]
    Expectation(#[from] ExpectationError),
}

/// Where the change is made: one of `verify`'s target options and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PlanTarget {
    Pod(String),
    Netns(String),
    Cgroup(String),
    Device(String),
    /// A mount option's mountpoint: the change is a remount.
    Mount(String),
}

/// One advice as `verify` uses it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub knob: String,
    pub value: String,
    /// `None` for a node-wide knob.
    pub target: Option<PlanTarget>,
    pub expectation: Expectation,
}

#[derive(Deserialize)]
struct Advice {
    knob: String,
    target: Option<AdviceTarget>,
    recommended: Value,
    prediction: Option<AdvicePrediction>,
}

#[derive(Deserialize)]
struct AdviceTarget {
    option: String,
    value: String,
}

#[derive(Deserialize)]
struct AdvicePrediction {
    measure: String,
    direction: Direction,
    /// A fraction of the before median (0.5: half).
    min_effect: Option<f64>,
}

impl Plan {
    /// One advice object, or a whole `advise --json` output (or a bare array) holding
    /// exactly one.
    pub(crate) fn parse(text: &str) -> Result<Self, PlanError> {
        let advice = match serde_json::from_str::<Value>(text)? {
            Value::Object(mut whole) if whole.contains_key("advice") => {
                match whole.remove("advice") {
                    Some(Value::Array(items)) => items,
                    Some(other) => vec![other],
                    None => Vec::new(),
                }
            }
            Value::Array(items) => items,
            one => vec![one],
        };
        let [advice] = <[Value; 1]>::try_from(advice).map_err(|all| PlanError::Count(all.len()))?;
        let advice: Advice = serde_json::from_value(advice)?;
        let value = match &advice.recommended {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            _ => return Err(PlanError::Recommended(advice.knob)),
        };
        let target = advice
            .target
            .map(|t| match t.option.as_str() {
                "--pod" => Ok(PlanTarget::Pod(t.value)),
                "--netns" => Ok(PlanTarget::Netns(t.value)),
                "--cgroup" => Ok(PlanTarget::Cgroup(t.value)),
                "--device" => Ok(PlanTarget::Device(t.value)),
                "--mount" => Ok(PlanTarget::Mount(t.value)),
                _ => Err(PlanError::Target(t.option)),
            })
            .transpose()?;
        let prediction = advice
            .prediction
            .ok_or_else(|| PlanError::NoPrediction(advice.knob.clone()))?;
        let expectation = Expectation::new(
            &prediction.measure,
            prediction.direction,
            prediction.min_effect.unwrap_or(stats::MIN_RELATIVE_EFFECT),
        )?;
        Ok(Self {
            knob: advice.knob,
            value,
            target,
            expectation,
        })
    }
}

impl Plan {
    /// For a mount option: the remount that makes the change and the one that undoes
    /// it (advice is only given on `strictatime` mounts, which the undo restores).
    pub(crate) fn remounts(&self) -> Option<(String, String)> {
        let Some(PlanTarget::Mount(mountpoint)) = &self.target else {
            return None;
        };
        Some((
            format!("mount -o remount,{} {mountpoint}", self.knob),
            format!("mount -o remount,strictatime {mountpoint}"),
        ))
    }
}

impl std::fmt::Display for Plan {
    /// `net.core.somaxconn=65535 at --pod 5f1c-uid, predicting listen_overflow_ratio
    /// lower by >= 50%`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = match &self.target {
            None => "node-wide".to_string(),
            Some(PlanTarget::Pod(v)) => format!("at --pod {v}"),
            Some(PlanTarget::Netns(v)) => format!("at --netns {v}"),
            Some(PlanTarget::Cgroup(v)) => format!("at --cgroup {v}"),
            Some(PlanTarget::Device(v)) => format!("at --device {v}"),
            Some(PlanTarget::Mount(v)) => format!("remounting {v}"),
        };
        write!(
            f,
            "{}={} {at}, predicting {}",
            self.knob, self.value, self.expectation
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::measure::Measure;

    /// The advice of the schema `advise --json` writes, with a field this side ignores.
    const ADVICE: &str = r#"{"knob": "net.core.somaxconn", "scope": "netns",
        "target": {"option": "--pod", "value": "5f1c-uid"},
        "recommended": "65535", "why": "listen overflows",
        "prediction": {"measure": "listen_overflow_ratio", "direction": "lower", "min_effect": 0.5}}"#;

    #[test]
    fn one_advice_is_a_change_at_its_target_and_a_prediction() {
        let plan = Plan::parse(ADVICE).unwrap();
        assert_eq!(plan.knob, "net.core.somaxconn");
        assert_eq!(plan.value, "65535");
        assert_eq!(plan.target, Some(PlanTarget::Pod("5f1c-uid".into())));
        let e = plan.expectation;
        assert_eq!(
            (e.measure, e.direction, e.min_effect),
            (Measure::ListenOverflowRatio, Direction::Lower, 0.5)
        );
        assert_eq!(
            plan.to_string(),
            "net.core.somaxconn=65535 at --pod 5f1c-uid, predicting listen_overflow_ratio \
             lower by >= 50%"
        );
    }

    #[test]
    fn a_whole_advise_output_must_hold_exactly_one() {
        let wrapped = format!(r#"{{"node": "n1", "advice": [{ADVICE}]}}"#);
        assert_eq!(Plan::parse(&wrapped).unwrap(), Plan::parse(ADVICE).unwrap());
        let two = format!(r#"{{"advice": [{ADVICE}, {ADVICE}]}}"#);
        let err = Plan::parse(&two).unwrap_err();
        assert!(matches!(err, PlanError::Count(2)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the plan holds 2 pieces of advice; --plan takes exactly one (one element of \
             `advice`, or that object alone)"
        );
        assert!(matches!(
            Plan::parse(r#"{"advice": []}"#),
            Err(PlanError::Count(0))
        ));
        assert!(matches!(
            Plan::parse(&format!("[{ADVICE}, {ADVICE}, {ADVICE}]")),
            Err(PlanError::Count(3))
        ));
    }

    #[test]
    fn a_node_wide_knob_has_no_target() {
        let plan = Plan::parse(
            r#"{"knob": "vm.dirty_ratio", "scope": "node", "target": null, "recommended": 10,
                "prediction": {"measure": "block_write_p99_ms", "direction": "lower", "min_effect": 0.25}}"#,
        )
        .unwrap();
        assert_eq!(plan.target, None);
        assert_eq!(plan.value, "10", "a number is taken as written");
        assert_eq!(plan.expectation.min_effect, 0.25);
        assert!(
            plan.to_string()
                .starts_with("vm.dirty_ratio=10 node-wide, ")
        );
    }

    #[test]
    fn advice_that_cannot_be_planned_is_refused_with_its_reason() {
        let with = |from: &str, to: &str| Plan::parse(&ADVICE.replace(from, to)).unwrap_err();
        assert!(matches!(
            with(r#""--pod""#, r#""--node""#),
            PlanError::Target(option) if option == "--node"
        ));
        let none = with(
            r#""prediction": {"measure": "listen_overflow_ratio", "direction": "lower", "min_effect": 0.5}"#,
            r#""prediction": null"#,
        );
        assert!(matches!(&none, PlanError::NoPrediction(k) if k == "net.core.somaxconn"));
        assert!(matches!(
            with("listen_overflow_ratio", "overflows"),
            PlanError::Expectation(ExpectationError::Measure { .. })
        ));
        assert!(matches!(
            with(r#""min_effect": 0.5"#, r#""min_effect": 1.5"#),
            PlanError::Expectation(ExpectationError::Percentage(p)) if p == "150%"
        ));
        assert!(matches!(
            with(r#""lower""#, r#""down""#),
            PlanError::Json(_)
        ));
        assert!(matches!(
            with(r#""65535""#, "[1]"),
            PlanError::Recommended(_)
        ));
        assert!(matches!(Plan::parse("not json"), Err(PlanError::Json(_))));
    }

    #[test]
    fn a_mount_option_is_planned_as_a_remount_and_undone_to_strictatime() {
        let plan = Plan::parse(
            r#"{"knob": "noatime", "scope": "mount", "recommended": "on",
                "target": {"option": "--mount", "value": "/data"},
                "prediction": {"measure": "writes_per_read", "direction": "lower", "min_effect": 0.5}}"#,
        )
        .unwrap();
        assert_eq!(plan.target, Some(PlanTarget::Mount("/data".into())));
        assert_eq!(
            plan.remounts(),
            Some((
                "mount -o remount,noatime /data".to_string(),
                "mount -o remount,strictatime /data".to_string()
            ))
        );
        assert_eq!(
            plan.to_string(),
            "noatime=on remounting /data, predicting writes_per_read lower by >= 50%"
        );
        // Other targets are no remount.
        assert_eq!(Plan::parse(ADVICE).unwrap().remounts(), None);
    }
}
