//! The rules table of `docs/advise.md`, generated from the knob table's advice rules
//! (`crate::reference` keeps the page equal to them).

use std::fmt::Write as _;

use super::{advised_knobs, squeeze};
use crate::tuning::{Condition, Recommend, Recommendation};

pub(crate) const BEGIN: &str = "<!-- advice-rules:begin (generated from tuning::KNOBS; TUNEPROBE_BLESS=1 cargo test -p probe-user reference rewrites it) -->";
pub(crate) const END: &str = "<!-- advice-rules:end -->";

/// One row per advised knob: symptom, threshold and why, further condition, the value
/// recommended, and the prediction.
pub(crate) fn rules_table() -> String {
    let mut out = String::from(
        "| knob | symptom (over the window) | threshold | also required | recommends | prediction | why this threshold |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (knob, rule) in advised_knobs() {
        let load = rule
            .symptom
            .load()
            .map_or_else(String::new, |l| format!(", at least {} {l}", rule.min_load));
        let _ = writeln!(
            out,
            "| `{}` | `{}`{load} | {} | {} | {} | `{}` lower by >= {:.0}% | {} |",
            knob.name,
            rule.symptom.name(),
            rule.threshold,
            condition(rule.also),
            recommends(rule.recommend, knob.recommendation),
            rule.symptom.name(),
            rule.min_effect * 100.0,
            squeeze(rule.threshold_why),
        );
    }
    out
}

fn condition(condition: Condition) -> String {
    match condition {
        Condition::None => "nothing else".into(),
        Condition::FailuresForLackOfPort => {
            "at least half the failed connects found no local port (EADDRNOTAVAIL)".into()
        }
        Condition::TimeWaitHoldsPorts => "as above, and TIME_WAIT sockets hold at least half \
            the namespace's local port range"
            .into(),
        Condition::SiblingIs(knob, value) => format!("`{knob}` is `{value}` there"),
        Condition::QueueDominatesOnSsd { scheduler_followed } => format!(
            "a non-rotational device whose requests wait as long in the queue as on the \
             device, with a scheduler that {} the guides",
            if scheduler_followed {
                "follows"
            } else {
                "does not follow"
            }
        ),
        Condition::WriteBursts(factor) => format!("write p99 >= {factor} x the write mean"),
        Condition::LongLived(seconds) => {
            format!("the connections that ended lasted >= {seconds} s (median)")
        }
    }
}

fn recommends(recommend: Recommend, guide: Recommendation) -> String {
    match recommend {
        Recommend::Guide => format!(
            "the guides' `{}`, where not already followed",
            guide.describe().unwrap_or_default()
        ),
        Recommend::AtMost(most) => format!("`{most}`, where higher"),
        Recommend::Times(factor) => format!("{factor} x the current value"),
        Recommend::CpuLimitFromDemand => format!(
            "a quota of the p95 per-interval demand (CPU used + throttled per period) x {}, \
             where above the current one",
            crate::tuning::CPU_HEADROOM
        ),
    }
}
