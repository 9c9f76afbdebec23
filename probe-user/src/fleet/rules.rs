//! The recording rules of `deploy/prometheus/fleet-rules.yaml`, generated from the
//! measures' declarations: one per-container rule per judged measure (the same counts,
//! loads and matchers `fleet verify` queries), its median per node and workload, and
//! the knob-change rule. `reference.rs` keeps the file equal to this.

use std::fmt::Write as _;

use crate::signals::{
    declaration::{Counter, Exported},
    measure::Measure,
};

/// What every rule sums by.
const BY: &str = "node, namespace, pod, container";

/// The `workload` label `fleet verify` matches pods across nodes by (`did::workload_name`):
/// a Deployment's NAME-<hash>-<suffix>, a DaemonSet's or Job's NAME-<suffix>, a
/// StatefulSet's NAME-<ordinal>; otherwise the pod's name.
const WORKLOAD: &str = r#""workload", "$1$2", "pod", "(.+?)(?:-[bcdfghjklmnpqrstvwxz2456789]{6,10})?-[bcdfghjklmnpqrstvwxz2456789]{5}|(.+)-[0-9]+""#;

/// The rules, as YAML list items of the `tuneprobe-fleet` group.
pub(crate) fn recording_rules() -> String {
    let mut out = String::new();
    let mut medians = String::new();
    for measure in Measure::judged() {
        let declared = measure.declared();
        let record = record_name(measure);
        let load = declared
            .load
            .map_or(String::new(), |l| format!("; load: {l}"));
        let _ = writeln!(
            out,
            "      # {}{load}. From: {}.",
            declared.what, declared.source
        );
        let _ = writeln!(out, "      - record: tuneprobe:{record}");
        let _ = writeln!(out, "        expr: |");
        let _ = writeln!(out, "          label_replace(label_replace(");
        let _ = writeln!(out, "              {},", expression(declared.exported));
        let _ = writeln!(out, "            \"workload\", \"$1\", \"pod\", \"(.+)\"),");
        let _ = writeln!(out, "            {WORKLOAD})");
        let base = record.split(':').next().unwrap_or(&record);
        let _ = writeln!(
            medians,
            "      - record: node_workload:tuneprobe_{base}:median1m\n        expr: quantile by (node, namespace, workload, container) (0.5, tuneprobe:{record})"
        );
    }
    out.push_str(
        "      # The median over a workload's pods on each node: one line per node and workload.\n",
    );
    out.push_str(&medians);
    out
}

/// `retransmit_ratio:1m`, `dns_latency_ms:mean1m`; a plain count is named after its
/// family (`packet_drops:1m`).
fn record_name(measure: Measure) -> String {
    match measure.declared().exported {
        Exported::Count(c) => {
            let base = c.name.trim_start_matches("tuneprobe_");
            format!("{}:1m", base.trim_end_matches("_total"))
        }
        Exported::Histogram { quantile: None, .. } => format!("{}:mean1m", measure.name()),
        _ => format!("{}:1m", measure.name()),
    }
}

/// One counter's increase over a minute, per container.
fn increase(name: &str, matchers: &str, extra_by: &str) -> String {
    let matchers = [r#"pod!="""#, matchers].join(",");
    let matchers = matchers.trim_end_matches(',');
    format!("sum by ({BY}{extra_by}) (increase({name}{{{matchers}}}[1m]))")
}

fn counter(c: Counter) -> String {
    increase(c.name, c.matchers().trim_end_matches(','), "")
}

/// `a`, or 0 where only `b` has a series: a ratio's part is exported from its first
/// non-zero value on, its load from the load's.
fn or_zero(a: &str, b: &str) -> String {
    format!("({a}\n                or 0 * {b})")
}

/// The measure's per-minute value, as PromQL.
fn expression(exported: Exported) -> String {
    match exported {
        Exported::Ratio {
            part,
            whole,
            whole_adds_part,
            scale,
        } => {
            let (p, w) = (counter(part), counter(whole));
            let load = if whole_adds_part {
                format!("({} + {})", or_zero(&p, &w), or_zero(&w, &p))
            } else {
                w.clone()
            };
            let unit = if scale == 1.0 {
                String::new()
            } else {
                format!("{scale} * ")
            };
            format!("{unit}{}\n            / ({load} > 0)", or_zero(&p, &w))
        }
        Exported::Count(c) => counter(c),
        Exported::Histogram { of, quantile } => {
            let m = of.matchers();
            let m = m.trim_end_matches(',');
            match quantile {
                None => format!(
                    "1000 * {}\n            / ({} > 0)",
                    increase(&format!("{}_sum", of.name), m, ""),
                    increase(&format!("{}_count", of.name), m, "")
                ),
                Some(q) => format!(
                    "1000 * histogram_quantile({q}, {})",
                    increase(&format!("{}_bucket", of.name), m, ", le")
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_judged_measure_has_a_rule_and_a_median() {
        let rules = recording_rules();
        for m in Measure::judged() {
            let record = record_name(m);
            assert!(
                rules.contains(&format!("record: tuneprobe:{record}\n")),
                "{m:?}"
            );
            assert!(
                rules.contains(&format!("(0.5, tuneprobe:{record})")),
                "{m:?}"
            );
        }
        assert_eq!(record_name(Measure::Drops), "packet_drops:1m");
        assert_eq!(record_name(Measure::DnsLatencyMs), "dns_latency_ms:mean1m");
        assert_eq!(
            record_name(Measure::DnsLatencyP99Ms),
            "dns_latency_p99_ms:1m"
        );
    }

    #[test]
    fn ratios_divide_by_their_declared_load() {
        let listen = expression(Measure::ListenOverflowRatio.declared().exported);
        // Overflows per (overflows + accepted connections), 0 without overflows.
        assert!(
            listen.contains("reason=\"TCP_LISTEN_OVERFLOW\""),
            "{listen}"
        );
        assert_eq!(
            listen.matches("tuneprobe_tcp_passive_opens_total").count(),
            3
        );
        let forward = expression(Measure::ForwardDropRatio.declared().exported);
        assert!(
            forward.contains("reason=~\"IP_INADDRERRORS|IP_INNOROUTES|NETFILTER_DROP\""),
            "{forward}"
        );
        let ms = expression(Measure::CpuThrottledMsPerPeriod.declared().exported);
        assert!(ms.starts_with("1000 * (sum by"), "{ms}");
        let writes = expression(Measure::BlockWriteP99Ms.declared().exported);
        assert!(writes.contains("histogram_quantile(0.99"), "{writes}");
        assert!(writes.contains("op=\"write\"}"), "{writes}");
    }
}
