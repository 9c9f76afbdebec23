//! `fleet verify --fail-on`: the fleet report as a gate that stops a rollout. Each
//! measure's overall verdict is held against what the gate fails on, giving one typed
//! outcome (the command line maps it to its exit code) and one line saying why.

use std::fmt::Write as _;

use crate::{
    verify::stats::{MIN_SAMPLES, Verdict},
    views::plot::number,
};

use super::{By, FleetError, FleetReport, FleetVerdict, prom::PromError};

/// What the gate fails on. `not-improved` includes `regressed`: a regression is not an
/// improvement, so one value says it all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Fail when a measure's overall verdict is `regressed` (or cannot be given).
    Regressed,
    /// Fail unless every measure's overall verdict is `improved`.
    NotImproved,
}

impl FailOn {
    /// As the command line spells it (clap's name of the value).
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// The gate's outcome. Declared from the mildest to the worst: a run with several
/// measures ends with its worst one's (a regression is named before missing data, which
/// is named before a measure that merely did not improve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Every measure's verdict is one the gate lets through.
    Pass,
    /// With `not-improved`: a measure showed no significant change.
    NotImproved,
    /// A measure could not be judged (`insufficient data`), or there was nothing to
    /// judge with: Prometheus unreachable or refusing the queries, no canary or no
    /// control node. Never a pass: missing data must not let a rollout through.
    Unjudged,
    /// A measure regressed.
    Regressed,
}

impl Outcome {
    /// Every outcome, so that the command line's table of exit codes can be checked to
    /// give each one its own.
    pub const ALL: [Self; 4] = [
        Self::Pass,
        Self::NotImproved,
        Self::Unjudged,
        Self::Regressed,
    ];

    /// One measure's verdict against the gate.
    pub fn of(verdict: Verdict, fail_on: FailOn) -> Self {
        match (verdict, fail_on) {
            (Verdict::Improved, _) | (Verdict::NoSignificantChange, FailOn::Regressed) => {
                Self::Pass
            }
            (Verdict::NoSignificantChange, FailOn::NotImproved) => Self::NotImproved,
            (Verdict::InsufficientData, _) => Self::Unjudged,
            (Verdict::Regressed, _) => Self::Regressed,
        }
    }
}

/// The gate's result: its outcome and, in one line, the measures behind it with their
/// verdicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    pub outcome: Outcome,
    pub why: String,
}

/// Holds every measure's overall verdict (the difference in differences over all
/// matched canary pods) against `fail_on`. The groups of `--by` are counted in the
/// reason but do not decide: one pod among many crossing p < 0.05 is expected by chance.
pub fn judge(report: &FleetReport, fail_on: FailOn) -> Gate {
    let judged: Vec<(Outcome, &FleetVerdict)> = report
        .overall
        .iter()
        .map(|v| (Outcome::of(v.did.verdict, fail_on), v))
        .collect();
    let Some(worst) = judged.iter().map(|(o, _)| *o).max() else {
        return Gate {
            outcome: Outcome::Unjudged,
            why: "no measure was judged".into(),
        };
    };
    // A failed gate names the measures that failed it, worst first; a passed one every
    // measure.
    let mut named: Vec<&(Outcome, &FleetVerdict)> = judged
        .iter()
        .filter(|(o, _)| worst == Outcome::Pass || *o != Outcome::Pass)
        .collect();
    named.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
    let why: Vec<String> = named
        .iter()
        .map(|(_, v)| measure_line(v, &report.verdicts, report.by))
        .collect();
    if report.partial.is_empty() {
        return Gate {
            outcome: worst,
            why: why.join("; "),
        };
    }
    // Verdicts on part of the data: what is missing could turn a pass or a lack of
    // improvement around, so neither goes through; a regression seen stays one.
    Gate {
        outcome: worst.max(Outcome::Unjudged),
        why: format!(
            "partial data ({}); {}",
            report.partial.join("; "),
            why.join("; ")
        ),
    }
}

/// `retransmit_ratio: regressed overall, DiD +0.0120 (95% CI [0.0080, 0.0150], p =
/// 0.0003); by node: 3 of 5 regressed`.
fn measure_line(overall: &FleetVerdict, groups: &[FleetVerdict], by: By) -> String {
    let c = &overall.did;
    let verdict = crate::output::serde_name(&c.verdict);
    let mut out = format!("{}: {verdict} overall", overall.signal.name());
    if c.verdict == Verdict::InsufficientData {
        let _ = write!(
            out,
            ", {} paired interval(s) before the change and {} after ({MIN_SAMPLES} needed on \
             each side) from {} canary pod(s)",
            overall.samples.difference.before.len(),
            overall.samples.difference.after.len(),
            overall.canary_pods
        );
    } else {
        let sign = if c.effect > 0.0 { "+" } else { "" };
        let p = if c.p_value < 0.0001 {
            "p < 0.0001".to_string()
        } else {
            format!("p = {:.4}", c.p_value)
        };
        let _ = write!(
            out,
            ", DiD {sign}{} (95% CI [{}, {}], {p})",
            number(c.effect),
            number(c.ci95[0]),
            number(c.ci95[1])
        );
    }
    let own: Vec<&FleetVerdict> = groups
        .iter()
        .filter(|g| g.signal == overall.signal)
        .collect();
    let alike = own.iter().filter(|g| g.did.verdict == c.verdict).count();
    let _ = write!(
        out,
        "; by {}: {alike} of {} {verdict}",
        crate::output::serde_name(&by),
        own.len()
    );
    out
}

/// Whether a failed run means the gate could not judge (no data to judge with) rather
/// than a mistake in the options: Prometheus unreachable, answering with an error or
/// with something else than its API, no canary or no control node reporting.
pub fn unjudged(error: &FleetError) -> bool {
    match error {
        FleetError::Prometheus(prom) => {
            !matches!(prom, PromError::Read { .. } | PromError::Certificate(_))
        }
        FleetError::NoCanary(_) | FleetError::NoControl(_) => true,
        FleetError::NoSignal(..) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fleet::{SideSamples, VerdictSamples, WindowLengths, did::Side},
        signals::measure::Measure,
        verify::stats::Comparison,
    };

    fn comparison(verdict: Verdict, effect: f64, p_value: f64) -> Comparison {
        Comparison {
            effect,
            ci95: [effect - 0.01, effect + 0.01],
            p_value,
            verdict,
        }
    }

    /// A verdict on `signal` with `intervals` paired intervals a side.
    fn verdict(group: &str, signal: Measure, did: Comparison, intervals: usize) -> FleetVerdict {
        let side = Side {
            before: Some(0.5),
            after: Some(0.5),
            shift: did,
            load_change: Some(1.0),
        };
        let samples = SideSamples {
            before: vec![0.0; intervals],
            after: vec![0.0; intervals],
        };
        FleetVerdict {
            group: group.into(),
            node: None,
            namespace: None,
            workload: None,
            pod: None,
            container: None,
            signal,
            load: signal.load(),
            canary_pods: 2,
            control_pods: 2,
            control_nodes: vec![],
            did,
            canary: side.clone(),
            control: side,
            relative_load_change: Some(1.0),
            load_changed: false,
            control_moved: false,
            notes: vec![],
            samples: VerdictSamples {
                canary: samples.clone(),
                control: samples.clone(),
                difference: samples,
            },
        }
    }

    /// A report judged by node: `overall` per measure, and `nodes` verdicts per measure.
    fn report(overall: Vec<FleetVerdict>, nodes: Vec<FleetVerdict>) -> FleetReport {
        FleetReport {
            prometheus: "http://prometheus:9090".into(),
            knob: Some("net.ipv4.tcp_congestion_control".into()),
            at: None,
            windows: WindowLengths {
                before_s: 600.0,
                after_s: 600.0,
                interval_s: 60.0,
            },
            by: By::Node,
            signals: overall.iter().map(|v| v.signal).collect(),
            canary: vec![],
            control: vec![],
            notes: vec![],
            partial: vec![],
            overall,
            verdicts: nodes,
        }
    }

    #[test]
    fn gates_are_named_as_the_command_line_spells_them() {
        assert_eq!(FailOn::Regressed.name(), "regressed");
        assert_eq!(FailOn::NotImproved.name(), "not-improved");
    }

    #[test]
    fn each_verdict_against_each_gate() {
        use FailOn::{NotImproved, Regressed};
        for (verdict, fail_on, outcome) in [
            (Verdict::Improved, Regressed, Outcome::Pass),
            (Verdict::Improved, NotImproved, Outcome::Pass),
            (Verdict::NoSignificantChange, Regressed, Outcome::Pass),
            (
                Verdict::NoSignificantChange,
                NotImproved,
                Outcome::NotImproved,
            ),
            (Verdict::Regressed, Regressed, Outcome::Regressed),
            (Verdict::Regressed, NotImproved, Outcome::Regressed),
            (Verdict::InsufficientData, Regressed, Outcome::Unjudged),
            (Verdict::InsufficientData, NotImproved, Outcome::Unjudged),
        ] {
            assert_eq!(
                Outcome::of(verdict, fail_on),
                outcome,
                "{verdict:?} {fail_on:?}"
            );
        }
    }

    #[test]
    fn a_regression_is_named_with_its_groups() {
        let regressed = comparison(Verdict::Regressed, 0.012, 0.0003);
        let unchanged = comparison(Verdict::NoSignificantChange, 0.0, 0.84);
        let report = report(
            vec![
                verdict("overall", Measure::RetransmitRatio, regressed, 10),
                verdict("overall", Measure::SrttMs, unchanged, 10),
            ],
            ["a", "b", "c", "d", "e"]
                .iter()
                .enumerate()
                .map(|(i, node)| {
                    let c = if i < 3 { regressed } else { unchanged };
                    verdict(node, Measure::RetransmitRatio, c, 10)
                })
                .chain(std::iter::once(verdict(
                    "a",
                    Measure::SrttMs,
                    unchanged,
                    10,
                )))
                .collect(),
        );
        let gate = judge(&report, FailOn::Regressed);
        assert_eq!(gate.outcome, Outcome::Regressed);
        // Only the measure that failed the gate.
        assert_eq!(
            gate.why,
            "retransmit_ratio: regressed overall, DiD +0.0120 (95% CI [0.0020, 0.0220], \
             p = 0.0003); by node: 3 of 5 regressed"
        );
        // Not improved either: the regression is the worse news, named first.
        let gate = judge(&report, FailOn::NotImproved);
        assert_eq!(gate.outcome, Outcome::Regressed);
        assert_eq!(
            gate.why,
            "retransmit_ratio: regressed overall, DiD +0.0120 (95% CI [0.0020, 0.0220], \
             p = 0.0003); by node: 3 of 5 regressed; srtt_ms: no significant change \
             overall, DiD 0 (95% CI [-0.0100, 0.0100], p = 0.8400); by node: 1 of 1 no \
             significant change"
        );
    }

    #[test]
    fn missing_data_fails_either_gate_and_outranks_no_change() {
        let unchanged = comparison(Verdict::NoSignificantChange, 0.0, 0.84);
        let missing = comparison(Verdict::InsufficientData, f64::NAN, f64::NAN);
        let report = report(
            vec![
                verdict("overall", Measure::SrttMs, unchanged, 10),
                verdict("overall", Measure::RetransmitRatio, missing, 3),
            ],
            vec![verdict("a", Measure::RetransmitRatio, missing, 3)],
        );
        for fail_on in [FailOn::Regressed, FailOn::NotImproved] {
            let gate = judge(&report, fail_on);
            assert_eq!(gate.outcome, Outcome::Unjudged, "{fail_on:?}");
            assert!(
                gate.why.starts_with(
                    "retransmit_ratio: insufficient data overall, 3 paired interval(s) \
                     before the change and 3 after (5 needed on each side) from 2 canary \
                     pod(s); by node: 1 of 1 insufficient data"
                ),
                "{}",
                gate.why
            );
        }
        // With `regressed`, the unchanged measure passes and is not named.
        assert!(!judge(&report, FailOn::Regressed).why.contains("srtt_ms"));
        assert!(
            judge(&report, FailOn::NotImproved)
                .why
                .contains("; srtt_ms")
        );
    }

    #[test]
    fn a_pass_names_every_measure() {
        let improved = comparison(Verdict::Improved, -0.4, 1e-8);
        let passed = report(
            vec![verdict("overall", Measure::CpuThrottledRatio, improved, 90)],
            vec![verdict("a", Measure::CpuThrottledRatio, improved, 90)],
        );
        for fail_on in [FailOn::Regressed, FailOn::NotImproved] {
            assert_eq!(
                judge(&passed, fail_on),
                Gate {
                    outcome: Outcome::Pass,
                    why: "cpu_throttled_ratio: improved overall, DiD -0.4000 (95% CI \
                          [-0.4100, -0.3900], p < 0.0001); by node: 1 of 1 improved"
                        .into()
                }
            );
        }
        assert_eq!(
            judge(&report(vec![], vec![]), FailOn::Regressed).outcome,
            Outcome::Unjudged
        );
    }

    /// The store answered in part (a warning, or not caught up): a pass or no change
    /// cannot be let through; a regression is still one.
    #[test]
    fn a_partial_answer_never_passes() {
        let improved = comparison(Verdict::Improved, -0.4, 1e-8);
        let regressed = comparison(Verdict::Regressed, 0.012, 0.0003);
        let mut passed = report(
            vec![verdict("overall", Measure::CpuThrottledRatio, improved, 90)],
            vec![],
        );
        passed.partial = vec!["store 10.0.0.7:10901 unavailable (answering `q`)".into()];
        for fail_on in [FailOn::Regressed, FailOn::NotImproved] {
            assert_eq!(
                judge(&passed, fail_on),
                Gate {
                    outcome: Outcome::Unjudged,
                    why: "partial data (store 10.0.0.7:10901 unavailable (answering `q`)); \
                          cpu_throttled_ratio: improved overall, DiD -0.4000 (95% CI \
                          [-0.4100, -0.3900], p < 0.0001); by node: 0 of 0 improved"
                        .into()
                }
            );
        }
        let mut worse = report(
            vec![verdict("overall", Measure::RetransmitRatio, regressed, 10)],
            vec![],
        );
        worse.partial = vec!["behind".into()];
        let gate = judge(&worse, FailOn::Regressed);
        assert_eq!(gate.outcome, Outcome::Regressed);
        assert!(
            gate.why
                .starts_with("partial data (behind); retransmit_ratio: regressed"),
            "{}",
            gate.why
        );
    }

    #[test]
    fn errors_without_data_are_unjudged_and_mistaken_options_are_not() {
        let http = PromError::Http {
            url: "http://127.0.0.1:1/api/v1/query".into(),
            message: "Connection refused".into(),
        };
        assert!(unjudged(&FleetError::Prometheus(http)));
        assert!(unjudged(&FleetError::Prometheus(PromError::Status {
            url: "u".into(),
            status: 503,
            body: String::new(),
        })));
        assert!(unjudged(&FleetError::NoCanary("none".into())));
        assert!(unjudged(&FleetError::NoControl("none".into())));
        assert!(!unjudged(&FleetError::Prometheus(PromError::Certificate(
            "ca.pem".into()
        ))));
        assert!(!unjudged(&FleetError::NoSignal(
            "vm.swappiness".into(),
            String::new()
        )));
    }
}
