//! deploy/prometheus/alerts.yaml, run by `promtool test rules` on series made from each
//! alert's own declaration: every alert fires on a container over its threshold (with
//! its annotations as Alertmanager gets them) and stays silent on a healthy container
//! next to it, on one over the threshold under its load floor, and on one where the
//! advice rule's further condition does not hold. The drop spike fires on a reason far
//! above its own baseline (or new) and not on a steady or small one; a regressed final
//! verdict alerts for an hour, an interim or improved one never.
//!
//! Counters rise by a fixed step every 30 s, so the increase over the alerts' 5-minute
//! window is ten steps exactly.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use tuneprobe::{
    fleet::alerts::{self, Alert, Also, Level, SEVERITY, Watched},
    signals::{
        declaration::{Counter, Exported},
        measure::Measure,
    },
};
use tuneprobe_tests::TempDir;

/// Steps of 30 s in a series: 20 minutes.
const STEPS: usize = 40;
/// Steps in the alerts' window (5 minutes).
const WINDOW_STEPS: f64 = 10.0;

fn alerts_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yaml")
}

type Labels = Vec<(String, String)>;

fn labels_of(pod: &str, per: Option<&str>) -> Labels {
    let mut labels: Labels = [("node", "n1"), ("namespace", "shop"), ("pod", pod)]
        .iter()
        .chain(&[("container", "c")])
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match per {
        Some("device") => labels.push(("device".into(), "nvme0n1".into())),
        Some("resolver") => labels.push(("resolver".into(), "10.96.0.10".into())),
        Some(other) => panic!("no value for the label {other}"),
        None => {}
    }
    labels
}

fn selector(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect::<Vec<_>>()
        .join(",")
}

/// A series rising by `per_step` every step, with `extra` labels (`op="write"`).
fn series(name: &str, labels: &Labels, extra: &[(&str, &str)], per_step: f64) -> String {
    let mut all = selector(labels);
    for (k, v) in extra {
        let _ = write!(all, ",{k}=\"{v}\"");
    }
    format!("      - series: '{name}{{{all}}}'\n        values: '0+{per_step}x{STEPS}'\n")
}

/// A counter's series (`name`, or the counter's own), with the label value the
/// declaration narrows it to, adding `total` over the window.
fn counter(
    c: Counter,
    name: Option<&str>,
    labels: &Labels,
    extra: &[(&str, &str)],
    total: f64,
) -> String {
    let mut extra = extra.to_vec();
    if let Some((label, values)) = c.only {
        extra.push((label, values[0]));
    }
    series(name.unwrap_or(c.name), labels, &extra, total / WINDOW_STEPS)
}

/// One container's series for a level at `value` under `load` over the window, its
/// further condition holding or not; returns the inputs and the value the alert sees.
fn level_input(
    level: &Level,
    labels: &Labels,
    value: f64,
    load: f64,
    holds: bool,
) -> (String, f64) {
    match level.exported {
        Exported::Ratio {
            part,
            whole,
            whole_adds_part,
            scale,
        } => {
            let counted = value * load / scale;
            let rest = if whole_adds_part {
                load - counted
            } else {
                load
            };
            // Connects failing for lack of a port, or refused.
            let cause = [("cause", if holds { "port_exhaustion" } else { "refused" })];
            let extra: &[(&str, &str)] = if level.also == Also::LackOfPort {
                &cause
            } else {
                &[]
            };
            let input = counter(part, None, labels, extra, counted)
                + &counter(whole, None, labels, &[], rest);
            (input, value)
        }
        Exported::Histogram { of, quantile: None } => {
            let mut input = histogram(of, labels, load, value, None);
            if level.also == Also::QueueDominates {
                // Service time half the queue's, or twice it.
                let service = if holds { value / 2.0 } else { value * 2.0 };
                let of = match Measure::BlockServiceMs.declared().exported {
                    Exported::Histogram { of, .. } => of,
                    other => panic!("{other:?}"),
                };
                input += &histogram(of, labels, load, service, None);
            }
            (input, value)
        }
        Exported::Histogram {
            of,
            quantile: Some(q),
        } => {
            // Bursts: 2% of the requests slow, around `value`; without them (the write
            // bursts' condition failing) every request is slow and the mean is the p99's.
            let slow_share = if holds { 0.02 } else { 1.0 };
            let p99 = quantile_of(q, value, slow_share);
            (histogram(of, labels, load, value, Some(slow_share)), p99)
        }
        Exported::Count(_) => panic!("a level on a plain count"),
    }
}

/// The bucket bounds, s, around `value` ms: fast requests at or below the first, slow
/// ones between the second and third.
fn bounds(value: f64) -> [f64; 3] {
    let slow = value / 1000.0;
    [slow / 100.0, slow * 0.8, slow * 1.2]
}

/// The quantile `q` `histogram_quantile` interpolates for a share `slow` of the
/// requests between the slow bounds, ms.
fn quantile_of(q: f64, value: f64, slow: f64) -> f64 {
    let [_, low, high] = bounds(value);
    1000.0 * (low + (high - low) * (q - (1.0 - slow)) / slow)
}

/// A histogram of `count` observations over the window: with `slow_share`, that share
/// between the slow bounds and the rest fast (buckets and a consistent sum); without, a
/// mean of `value` ms (sum and count only).
fn histogram(
    of: Counter,
    labels: &Labels,
    count: f64,
    value: f64,
    slow_share: Option<f64>,
) -> String {
    let part = |suffix: &str, extra: &[(&str, &str)], total: f64| {
        counter(
            of,
            Some(&format!("{}_{suffix}", of.name)),
            labels,
            extra,
            total,
        )
    };
    let Some(slow) = slow_share else {
        return part("count", &[], count) + &part("sum", &[], count * value / 1000.0);
    };
    let [fast, low, high] = bounds(value);
    let (n_slow, n_fast) = (count * slow, count * (1.0 - slow));
    let sum = n_fast * fast / 2.0 + n_slow * (low + high) / 2.0;
    let mut out = part("count", &[], count) + &part("sum", &[], sum);
    for (le, n) in [(fast, n_fast), (low, n_fast), (high, count)] {
        out += &part("bucket", &[("le", &le.to_string())], n);
    }
    out + &part("bucket", &[("le", "+Inf")], count)
}

/// Go's `humanizePercentage`: `%.4g%%` of the value times 100.
fn percentage(value: f64) -> String {
    let rounded: f64 = format!("{:.3e}", value * 100.0).parse().unwrap();
    format!("{rounded}%")
}

/// The alert's annotation templates as Prometheus renders them for `labels` and `value`
/// (the template forms the alerts use, and nothing else).
fn rendered(alert: &Alert, labels: &Labels, value: f64) -> Vec<(&'static str, String)> {
    alert
        .annotations()
        .into_iter()
        .map(|(key, template)| {
            let mut text = template
                .replace("{{ $value | humanizePercentage }}", &percentage(value))
                .replace("{{ $value | printf \"%.1f\" }}", &format!("{value:.1}"))
                .replace("{{ $value | printf \"%.2f\" }}", &format!("{value:.2}"))
                .replace("{{ $value | printf \"%.0f\" }}", &format!("{value:.0}"));
            for (k, v) in labels {
                text = text.replace(&format!("{{{{ $labels.{k} }}}}"), v);
            }
            assert!(!text.contains("{{"), "{}: unrendered {text}", alert.name);
            (key, text)
        })
        .collect()
}

/// One expected alert, as `exp_alerts` takes it.
fn expected(alert: &Alert, labels: &Labels, value: f64) -> String {
    let mut exp: Vec<(String, String)> = labels.clone();
    exp.push(("severity".into(), SEVERITY.into()));
    let map = |pairs: Vec<(String, String)>| {
        let items: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}: {}", serde_json::to_string(v).unwrap()))
            .collect();
        format!("{{{}}}", items.join(", "))
    };
    let annotations = rendered(alert, labels, value)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    format!(
        "          - exp_labels: {}\n            exp_annotations: {}\n",
        map(exp),
        map(annotations)
    )
}

/// Runs `promtool test rules` over alerts.yaml with these `tests`; fails with its
/// report and the test.
fn promtool_test_rules(tests: &str) {
    let dir = TempDir::new("tuneprobe-alerts-");
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 30s\ntests:\n{tests}",
        alerts_file().display()
    );
    let file = dir.0.join("alerts-test.yaml");
    fs::write(&file, &test).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool test rules: {}{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A level alert's test: the hot container fires; the calm one (half the threshold),
/// the quiet one (over it, under half the floor) and, with a condition, the other one
/// (over both, condition failing) do not.
fn level_test(alert: &Alert, level: &Level) -> String {
    let (over, under) = (2.0 * level.threshold, level.threshold / 2.0);
    let load = 2.0 * level.min_load;
    let mut pods = vec![
        ("hot", over, load, true),
        ("calm", under, load, true),
        ("quiet", over, level.min_load / 2.0, true),
    ];
    if level.also != Also::Nothing {
        pods.push(("other", over, load, false));
    }
    let mut input = String::new();
    let mut hot = String::new();
    for (pod, value, load, holds) in pods {
        let labels = labels_of(pod, level.per);
        let (series, seen) = level_input(level, &labels, value, load, holds);
        input += &series;
        if pod == "hot" {
            hot = expected(alert, &labels, seen);
            eprintln!(
                "{}: fires at {seen:.4} (threshold {}) with {load} {} over 5m; silent at {under}, \
                 under {} {}{}",
                alert.name,
                alert.threshold,
                level.load,
                level.min_load / 2.0,
                level.load,
                if level.also == Also::Nothing {
                    ""
                } else {
                    ", and without its condition"
                }
            );
        }
    }
    format!(
        "  - interval: 30s\n    input_series:\n{input}    alert_rule_test:\n      - eval_time: 15m\n        alertname: {}\n        exp_alerts:\n{hot}",
        alert.name
    )
}

#[test]
fn every_level_alert_fires_over_its_threshold_and_is_silent_below_it_under_its_floor_or_its_condition()
 {
    let mut tests = String::new();
    let mut levels = 0;
    for alert in alerts::alerts() {
        if let Watched::Level(level) = &alert.watched {
            tests += &level_test(&alert, level);
            levels += 1;
        }
    }
    // The eleven advice symptoms and the two DNS alerts.
    assert_eq!(levels, 13);
    promtool_test_rules(&tests);
}

fn alert_named(name: &str) -> Alert {
    alerts::alerts()
        .into_iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no alert {name}"))
}

/// Drops of NO_SOCKET at 1 per 30 s for an hour, then 100 (the spike); a reason new at
/// the spike; a reason steady at 100; a small one from 0 to 5. At 69 minutes the spike
/// and the new reason fire, the steady and the small do not.
#[test]
fn a_drop_spike_fires_far_above_its_own_baseline_and_not_on_a_steady_or_small_reason() {
    let alert = alert_named("TuneprobeDropSpike");
    let drops = tuneprobe::signals::drops::PACKET_DROPS;
    let mut input = String::new();
    let mut exp = String::new();
    for (pod, values, fires) in [
        ("spike", "0+1x120 220+100x40", true),
        ("fresh", "_x120 100+100x40", true),
        ("steady", "0+100x160", false),
        ("small", "0+0x120 5+5x40", false),
    ] {
        let mut labels = labels_of(pod, None);
        labels.push(("reason".into(), "NO_SOCKET".into()));
        let _ = write!(
            input,
            "      - series: '{drops}{{{}}}'\n        values: '{values}'\n",
            selector(&labels)
        );
        if fires {
            exp += &expected(&alert, &labels, 100.0 / 30.0);
        }
    }
    let test = format!(
        "  - interval: 30s\n    input_series:\n{input}    alert_rule_test:\n      - eval_time: 69m\n        alertname: {}\n        exp_alerts:\n{exp}",
        alert.name
    );
    promtool_test_rules(&test);
}

/// A final `regressed` verdict appearing at 20 minutes alerts at 25 and no longer 65
/// minutes after it appeared; an interim `regressed` and a final `improved` never do.
#[test]
fn a_final_regressed_verdict_alerts_for_an_hour_and_no_other_verdict_does() {
    let alert = alert_named("TuneprobeTuningRegressed");
    let mut input = String::new();
    let mut exp = String::new();
    for (pod, verdict, is_final) in [
        ("worse", "regressed", "true"),
        ("interim", "regressed", "false"),
        ("better", "improved", "true"),
    ] {
        let mut labels = labels_of(pod, None);
        labels.extend(
            [
                ("knob", "net.core.somaxconn"),
                ("scope", "netns"),
                ("signal", "listen_overflow_ratio"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let _ = write!(
            input,
            "      - series: 'tuneprobe_tuning_verdict{{{},cgroup=\"/kubepods/p\",verdict=\"{verdict}\",final=\"{is_final}\"}}'\n        values: '_x40 1x200'\n",
            selector(&labels)
        );
        if pod == "worse" {
            exp = expected(&alert, &labels, 1.0);
        }
    }
    let test = format!(
        "  - interval: 30s\n    input_series:\n{input}    alert_rule_test:\n      - eval_time: 25m\n        alertname: {name}\n        exp_alerts:\n{exp}      - eval_time: 85m\n        alertname: {name}\n        exp_alerts: []\n",
        name = alert.name
    );
    promtool_test_rules(&test);
}

/// The agent's own trouble: a stage failing every step on `n1` alerts (10 failures in
/// 5m); a single failure 20 minutes ago on `n3`, and a healthy `n2`, do not. 3 workloads
/// folded on `n1` for the whole run alert; folded on `n3` for 5 minutes only, not yet.
#[test]
fn a_failing_agent_and_folded_workloads_alert_and_brief_or_no_trouble_does_not() {
    let labels = |pairs: &[(&str, &str)]| -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (errors, folded) = (
        alert_named("TuneprobeAgentErrors"),
        alert_named("TuneprobeWorkloadsFolded"),
    );
    let mut input = String::new();
    for (node, values) in [("n1", "0+1x60"), ("n2", "0x60"), ("n3", "0x10 1x50")] {
        let _ = write!(
            input,
            "      - series: 'tuneprobe_agent_errors_total{{node=\"{node}\",stage=\"tuning_inventory\"}}'\n        values: '{values}'\n"
        );
    }
    for (node, values) in [("n1", "3x60"), ("n2", "0x60"), ("n3", "0x40 3x20")] {
        let _ = write!(
            input,
            "      - series: 'tuneprobe_folded_workloads{{node=\"{node}\"}}'\n        values: '{values}'\n"
        );
    }
    let failing = expected(
        &errors,
        &labels(&[("node", "n1"), ("stage", "tuning_inventory")]),
        10.0,
    );
    let folding = expected(&folded, &labels(&[("node", "n1")]), 3.0);
    let test = format!(
        "  - interval: 30s\n    input_series:\n{input}    alert_rule_test:\n      - eval_time: 25m\n        alertname: {}\n        exp_alerts:\n{failing}      - eval_time: 25m\n        alertname: {}\n        exp_alerts:\n{folding}",
        errors.name, folded.name
    );
    promtool_test_rules(&test);
}

/// Block requests failing on a pod's device alert within minutes (an error every step:
/// 10 over 5m, reads and writes summed); a pod whose requests all complete, and one
/// whose single error was 20 minutes ago, do not.
#[test]
fn failing_block_requests_alert_and_a_healthy_or_long_past_error_does_not() {
    let alert = alert_named("TuneprobeBlockErrors");
    let mut input = String::new();
    for (pod, values) in [
        ("failing", "0+1x60"),
        ("healthy", "0x60"),
        ("once", "0x10 1x50"),
    ] {
        let labels = labels_of(pod, Some("device"));
        for op in ["read", "write"] {
            // The failing pod's errors are all writes; its reads complete.
            let values = if pod == "failing" && op == "read" {
                "0x60"
            } else {
                values
            };
            let _ = write!(
                input,
                "      - series: 'tuneprobe_block_errors_total{{{},op=\"{op}\"}}'\n        values: '{values}'\n",
                selector(&labels)
            );
        }
    }
    let firing = expected(&alert, &labels_of("failing", Some("device")), 10.0);
    let test = format!(
        "  - interval: 30s\n    input_series:\n{input}    alert_rule_test:\n      - eval_time: 25m\n        alertname: {}\n        exp_alerts:\n{firing}",
        alert.name
    );
    promtool_test_rules(&test);
}

/// The value formats the annotations use render as Go renders them, for the values the
/// tests give.
#[test]
fn percentages_render_as_humanize_percentage_does() {
    assert_eq!(percentage(0.02), "2%");
    assert_eq!(percentage(0.002), "0.2%");
    assert_eq!(percentage(0.5), "50%");
    // The p99 of the bursts is the value asked for; without bursts, above it.
    assert!((quantile_of(0.99, 200.0, 0.02) - 200.0).abs() < 1e-9);
    assert!((quantile_of(0.99, 200.0, 1.0) - 239.2).abs() < 1e-9);
}
