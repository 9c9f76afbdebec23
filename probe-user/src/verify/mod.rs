//! Judging a tuning change: per-interval samples of the signal a knob should move, for
//! each affected workload, normalised by the load it was measured under, before against
//! after, with a rank test.
//!
//! Which measures each knob should move is data, in the one knob table
//! ([`crate::tuning::KNOBS`]); each measure knows its own load denominator
//! ([`crate::signals::measure`]).
//!
//! - [`knob`]: reading and writing a knob where it lives;
//! - [`judge`]: per-interval samples, and before against after;
//! - [`listen`]: knobs applied at `listen()`, and listeners that still need a restart;
//! - [`watch`]: every change noticed as it happens, each judged in turn;
//! - [`predict`]: pre-registered predictions, judged one-sided;
//! - [`plan`]: one advice of `tuneprobe advise` as a change and its prediction;
//! - [`stats`]: the rank tests and the effect's interval;
//! - [`ab`]: two groups of pods side by side with different values (`verify --ab`).

mod ab;
mod judge;
mod knob;
mod listen;
#[cfg(test)]
mod matrix;
mod plan;
mod predict;
pub(crate) mod stats;
mod watch;

#[cfg(test)]
pub(crate) use self::judge::SampleValues;
pub(crate) use self::{
    ab::{AbError, AbReport, AbVerdict, GroupReport, Groups, Selector},
    judge::{Affected, Samples, WorkloadVerdict, judge, report_notes},
    knob::{KnobAt, Target},
    listen::{explain_listen_backlogs, explain_new_sockets, listeners_by_netns},
    plan::{Plan, PlanTarget},
    predict::{Expectation, register_predictions},
    watch::{ChangeRecord, ChangeReport, VERDICT_FAMILY, Watcher, Windows},
};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use serde_json::Value;

    use crate::{
        kernel::sockdiag::Listener, report::Snapshot, signals::measure::Measure, tuning,
        verify::predict::Outcome, verify::stats::Verdict,
    };

    fn snapshot(periods: u64, throttled: u64) -> Snapshot {
        let identity = crate::workloads::identity::Identity {
            cgroup_path: Some("/pod/c".into()),
            ..Default::default()
        };
        crate::report::tests::throttled(identity, periods, throttled)
    }

    /// 10 intervals throttled in 9 of 10 periods, then 10 without throttling.
    fn throttling_then_none() -> (Samples, Samples, Snapshot) {
        let (mut before, mut after) = (Samples::default(), Samples::default());
        let mut previous = snapshot(0, 0);
        for i in 1..=20u64 {
            let throttled = if i <= 10 { 9 * i } else { 90 };
            let current = snapshot(10 * i, throttled);
            let samples = if i <= 10 { &mut before } else { &mut after };
            samples.add(&previous, &current, i as f64);
            previous = current;
        }
        (before, after, previous)
    }

    #[test]
    fn signals_that_move_in_opposite_directions_are_said_to_disagree() {
        let verdict = |signal: Measure, before: &[f64], after: &[f64]| WorkloadVerdict {
            workload: crate::workloads::identity::Identity {
                namespace: Some("shop".into()),
                pod: Some("api".into()),
                ..Default::default()
            },
            signal,
            device: None,
            load: signal.load(),
            before: None,
            after: None,
            comparison: stats::compare(before, after, true),
            prediction: None,
            exploratory: false,
            load_change: None,
            load_changed: false,
            notes: vec![],
            listeners: vec![],
            samples: SampleValues {
                before: before.to_vec(),
                after: after.to_vec(),
            },
        };
        let low = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.02, 0.98, 1.0];
        let high = low.map(|v| v * 3.0);
        let more_retransmits = verdict(Measure::RetransmitRatio, &low, &high);
        let lower_rtt = verdict(Measure::SrttMs, &high, &low);
        assert_eq!(more_retransmits.comparison.verdict, Verdict::Regressed);
        assert_eq!(lower_rtt.comparison.verdict, Verdict::Improved);
        assert_eq!(
            report_notes(&[more_retransmits.clone(), lower_rtt]),
            ["shop/api: the signals disagree: retransmit_ratio regressed, srtt_ms improved"]
        );
        // Alone, or agreeing: nothing to say.
        assert!(report_notes(std::slice::from_ref(&more_retransmits)).is_empty());
        assert_eq!(
            report_notes(&[]),
            ["no affected workload had load on both sides of the change"]
        );
    }

    #[test]
    fn throttling_that_stops_is_an_improvement() {
        let signals = tuning::measures_for("cpu.max");
        let (before, after, last) = throttling_then_none();
        let verdicts = judge(
            &before,
            &after,
            signals,
            &Affected::Cgroup("/pod".into()),
            &last,
        );
        // The share of throttled periods, and the throttled time per period (none in
        // this fixture: no stall histogram, no time).
        assert_eq!(verdicts.len(), 2, "{verdicts:?}");
        let v = verdicts
            .iter()
            .find(|v| v.signal == Measure::CpuThrottledRatio)
            .unwrap();
        assert_eq!(v.comparison.verdict, Verdict::Improved, "{v:?}");
        assert_eq!((v.before, v.after), (Some(0.9), Some(0.0)));
        assert_eq!(v.load_change, Some(1.0));
        assert!(!v.load_changed && v.notes.is_empty());
        assert_eq!(v.samples.before.len(), 10);
        let elsewhere = Affected::Cgroup("/elsewhere".into());
        assert!(judge(&before, &after, signals, &elsewhere, &last).is_empty());
        // Only the knob's own signals are judged.
        assert!(
            judge(
                &before,
                &after,
                tuning::measures_for("net.core.somaxconn"),
                &Affected::Node,
                &last
            )
            .is_empty()
        );
    }

    #[test]
    fn knobs_map_to_the_signals_the_guides_name() {
        assert_eq!(
            tuning::measures_for("cpu.cfs_quota_us"),
            &[
                Measure::CpuThrottledRatio,
                Measure::CpuThrottledMsPerPeriod,
                Measure::CpuStallP99Ms
            ]
        );
        assert_eq!(
            tuning::measures_for("net.core.somaxconn"),
            &[Measure::ListenOverflowRatio]
        );
        // A send buffer moves nothing tuneprobe measures: judged on nothing.
        assert!(tuning::measures_for("net.ipv4.tcp_wmem").is_empty());
        assert_eq!(
            tuning::measures_for("net.core.rmem_default"),
            &[Measure::RcvbufDropRatio]
        );
        assert!(tuning::measures_for("queue/scheduler").contains(&Measure::BlockServiceMs));
        assert!(tuning::measures_for("no.such.knob").is_empty());
        assert_eq!(
            tuning::measures_for("blkio.throttle.read_iops_device"),
            tuning::measures_for("io.max")
        );
        for signal in Measure::judged() {
            assert_eq!(Measure::parse(&signal.name()), Some(signal));
        }
        // Context for notes, never a verdict.
        assert_eq!(Measure::parse("cpu_usage_ms_per_period"), None);
    }

    fn listener(port: u16, backlog: u32) -> Listener {
        Listener {
            address: std::net::SocketAddr::from(([10, 0, 0, 1], port)),
            backlog,
            queued: 0,
        }
    }

    /// A knob applied to new sockets only explains a verdict of no change, and only that.
    #[test]
    fn a_knob_for_new_sockets_explains_no_change() {
        let (before, after, last) = throttling_then_none();
        let verdicts = || {
            judge(
                &before,
                &after,
                &[Measure::CpuThrottledRatio],
                &Affected::Node,
                &last,
            )
        };
        let mut unchanged = verdicts();
        unchanged[0].comparison.verdict = stats::Verdict::NoSignificantChange;
        explain_new_sockets("net.core.rmem_default", &mut unchanged);
        let notes = &unchanged[0].notes;
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("net.core.rmem_default applies to sockets created after"),
            "{notes:?}"
        );
        // An improvement needs no excuse; a knob applied at once has none to give.
        let mut improved = verdicts();
        assert_eq!(improved[0].comparison.verdict, stats::Verdict::Improved);
        explain_new_sockets("net.core.rmem_default", &mut improved);
        assert!(improved[0].notes.is_empty());
        let mut at_once = verdicts();
        at_once[0].comparison.verdict = stats::Verdict::NoSignificantChange;
        explain_new_sockets("net.core.netdev_max_backlog", &mut at_once);
        assert!(at_once[0].notes.is_empty());
    }

    #[test]
    fn a_listener_with_the_old_backlog_needs_a_restart() {
        let (before, after, mut last) = throttling_then_none();
        last.workloads[0].identity.netns = Some(7);
        let mut verdicts = judge(
            &before,
            &after,
            &[Measure::CpuThrottledRatio],
            &Affected::Node,
            &last,
        );
        // Raised from 4 to 1024: a listener still at 4 is stale, one that asked for 2 is not.
        explain_listen_backlogs("net.core.somaxconn", "4", "1024", &mut verdicts, |inode| {
            (inode == 7).then(|| vec![listener(80, 4), listener(81, 2)])
        });
        let notes = &verdicts[0].notes;
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("restart needed: 1 of 2 listeners"),
            "{notes:?}"
        );
        assert!(notes[0].contains("10.0.0.1:80 (backlog 4)"), "{notes:?}");
        assert_eq!(verdicts[0].listeners.len(), 2);

        // After listen() again, the backlog follows the new value: no note.
        let mut verdicts = judge(
            &before,
            &after,
            &[Measure::CpuThrottledRatio],
            &Affected::Node,
            &last,
        );
        explain_listen_backlogs("net.core.somaxconn", "4", "1024", &mut verdicts, |_| {
            Some(vec![listener(80, 1024)])
        });
        assert!(verdicts[0].notes.is_empty());
        // Other knobs are applied at once: nothing to explain.
        explain_listen_backlogs("net.ipv4.tcp_wmem", "4", "1024", &mut verdicts, |_| {
            Some(vec![listener(80, 4)])
        });
        assert!(verdicts[0].listeners.len() == 1 && verdicts[0].notes.is_empty());
    }

    #[test]
    fn a_load_shift_is_reported() {
        let (mut before, mut after) = (Samples::default(), Samples::default());
        let mut previous = snapshot(0, 0);
        let mut periods = 0;
        for i in 1..=20u64 {
            // 10 periods per interval, then 5: the same ratio under half the load.
            periods += if i <= 10 { 10 } else { 5 };
            let current = snapshot(periods, periods / 2);
            let samples = if i <= 10 { &mut before } else { &mut after };
            samples.add(&previous, &current, i as f64);
            previous = current;
        }
        let verdicts = judge(
            &before,
            &after,
            &[Measure::CpuThrottledRatio],
            &Affected::Node,
            &previous,
        );
        let v = &verdicts[0];
        assert_eq!(v.load_change, Some(0.5));
        assert!(v.load_changed, "{v:?}");
        assert!(v.notes[0].contains("x0.50"), "{:?}", v.notes);
    }

    #[test]
    fn a_prediction_is_judged_one_sided_and_the_other_verdicts_are_exploratory() {
        let (before, after, last) = throttling_then_none();
        let verdicts = || {
            judge(
                &before,
                &after,
                tuning::measures_for("cpu.max"),
                &Affected::Node,
                &last,
            )
        };
        let expect = |text| vec![Expectation::parse(text).unwrap()];
        let mut predicted = verdicts();
        register_predictions(&mut predicted, &expect("cpu_throttled_ratio:lower:50%"));
        let [ratio, time] = &predicted[..] else {
            panic!("{predicted:?}")
        };
        assert_eq!(ratio.signal, Measure::CpuThrottledRatio);
        let p = ratio.prediction.expect("a prediction");
        assert_eq!(p.outcome, Outcome::AsPredicted, "{p:?}");
        // 0.9 to 0 in 10 samples each: the one-sided p is half the two-sided one.
        assert!((p.p_value - ratio.comparison.p_value / 2.0).abs() < 1e-12);
        assert!(!ratio.exploratory);
        assert!(time.prediction.is_none() && time.exploratory, "{time:?}");
        // The wrong way round: the opposite.
        let mut wrong = verdicts();
        register_predictions(&mut wrong, &expect("cpu_throttled_ratio:higher"));
        assert_eq!(wrong[0].prediction.unwrap().outcome, Outcome::Opposite);
        // Nothing predicted: nothing secondary.
        let mut plain = verdicts();
        register_predictions(&mut plain, &[]);
        assert!(
            plain
                .iter()
                .all(|v| v.prediction.is_none() && !v.exploratory)
        );
        let json = serde_json::to_value(&predicted[0]).unwrap();
        assert_eq!(json["prediction"]["outcome"], "as predicted");
        assert_eq!(json["prediction"]["min_effect"], 0.5);
        assert_eq!(json["exploratory"], false);
        assert_eq!(json["verdict"], "improved", "the verdict stays");
        assert_eq!(
            serde_json::to_value(&plain[0]).unwrap()["prediction"],
            Value::Null
        );
    }

    /// A watcher's reports for a quota raised at i = 11, throttled 9 of 10 periods before.
    fn watch_quota_raise(watcher: &mut Watcher) -> Vec<ChangeReport> {
        let inventory = |quota: &str| tuning::Inventory {
            cgroups: vec![tuning::CgroupSettings {
                cgroup_path: "/pod/c".into(),
                settings: vec![tuning::Setting {
                    knob: "cpu.max".into(),
                    value: format!("{quota} 100000"),
                    recommended: None,
                    deviates: None,
                    signal: String::new(),
                }],
            }],
            ..tuning::Inventory::default()
        };
        let mut reports = Vec::new();
        for i in 0..=21u64 {
            let throttled = if i <= 10 { 9 * i } else { 90 };
            let quota = if i <= 10 { "20000" } else { "100000" };
            reports.extend(watcher.observe(
                snapshot(10 * i, throttled),
                inventory(quota),
                i as f64,
            ));
        }
        reports
    }

    #[test]
    fn a_watcher_judges_predictions_on_the_changes_they_belong_to() {
        let windows = Windows {
            before: Duration::from_secs(10),
            after: Duration::from_secs(10),
            interval: Duration::from_secs(1),
        };
        let expected = vec![
            Expectation::parse("cpu_throttled_ratio:lower:50%").unwrap(),
            Expectation::parse("listen_overflow_ratio:lower").unwrap(),
        ];
        let mut watcher = Watcher::new(windows).expecting(expected.clone());
        let reports = watch_quota_raise(&mut watcher);
        let last = reports.last().expect("a report");
        assert!(last.is_final);
        // A quota cannot move listen overflows: not judged, not predicted here.
        assert_eq!(last.signals, tuning::measures_for("cpu.max"));
        let outcomes: Vec<(Measure, Option<Outcome>, bool)> = last
            .verdicts
            .iter()
            .map(|v| (v.signal, v.prediction.map(|p| p.outcome), v.exploratory))
            .collect();
        assert_eq!(
            outcomes,
            [
                (
                    Measure::CpuThrottledRatio,
                    Some(Outcome::AsPredicted),
                    false
                ),
                (Measure::CpuThrottledMsPerPeriod, None, true)
            ]
        );
        let mut f = crate::output::families::Families::default();
        watcher.metrics(&mut f);
        let families = f.encode();
        let prediction = families
            .iter()
            .find(|f| f.name() == "tuneprobe_tuning_prediction")
            .expect("the prediction's gauge");
        let [series] = prediction.get_metric() else {
            panic!("one predicted verdict: {prediction:?}")
        };
        let label = |name: &str| {
            series
                .get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value().to_string())
        };
        assert_eq!(label("outcome").as_deref(), Some("as predicted"));
        assert_eq!(label("direction").as_deref(), Some("lower"));
        assert_eq!(label("signal").as_deref(), Some("cpu_throttled_ratio"));
        assert_eq!(label("verdict"), None);

        // With --signal, every change is judged on the predicted measures as well.
        let mut watcher = Watcher::new(windows)
            .judging(vec![Measure::CpuThrottledMsPerPeriod])
            .expecting(expected);
        let last = watch_quota_raise(&mut watcher).pop().expect("a report");
        assert_eq!(
            last.signals,
            [
                Measure::CpuThrottledMsPerPeriod,
                Measure::CpuThrottledRatio,
                Measure::ListenOverflowRatio
            ]
        );
        let ratio = last
            .verdicts
            .iter()
            .find(|v| v.signal == Measure::CpuThrottledRatio)
            .expect("the predicted measure is judged");
        assert_eq!(
            ratio.prediction.map(|p| p.outcome),
            Some(Outcome::AsPredicted)
        );
    }

    #[test]
    fn watcher_judges_a_change_between_inventories() {
        let windows = Windows {
            before: Duration::from_secs(10),
            after: Duration::from_secs(10),
            interval: Duration::from_secs(1),
        };
        let mut watcher = Watcher::new(windows);
        let inventory = |quota: &str| tuning::Inventory {
            cgroups: vec![tuning::CgroupSettings {
                cgroup_path: "/pod/c".into(),
                settings: vec![tuning::Setting {
                    knob: "cpu.max".into(),
                    value: format!("{quota} 100000"),
                    recommended: None,
                    deviates: None,
                    signal: String::new(),
                }],
            }],
            ..tuning::Inventory::default()
        };
        let mut reports = Vec::new();
        for i in 0..=21u64 {
            // Throttled 9 of 10 periods until the quota changes at i = 11.
            let throttled = if i <= 10 { 9 * i } else { 90 };
            let quota = if i <= 10 { "20000" } else { "100000" };
            reports.extend(watcher.observe(
                snapshot(10 * i, throttled),
                inventory(quota),
                i as f64,
            ));
        }
        assert_eq!(
            watcher.changes_total[&("cpu.max".to_string(), "cgroup".to_string())],
            1
        );
        let last = reports.last().expect("a report");
        assert!(last.is_final, "{reports:?}");
        assert!(reports[..reports.len() - 1].iter().all(|r| !r.is_final));
        assert!(reports.len() > 1, "interim reports come first");
        assert_eq!(last.change.old.as_deref(), Some("20000 100000"));
        assert_eq!(last.after_intervals, 10);
        let v = &last.verdicts[0];
        assert_eq!(v.comparison.verdict, Verdict::Improved, "{v:?}");
        // The interval in which the knob changed belongs to neither window.
        assert_eq!((v.samples.before.len(), v.samples.after.len()), (10, 10));
        assert_eq!(watcher.recent.len(), 1);
        assert_eq!(last.change.affected, ["/pod/c"]);
    }
}
