//! The recording rules of `deploy/prometheus/fleet-rules.yaml`, generated from the
//! measures' declarations: one per-container rule per judged measure (the same counts,
//! loads and matchers `fleet verify` queries), its median per node and workload, and
//! the knob-change rule. `reference.rs` keeps the file equal to this. The alerts
//! (`alerts.rs`) build their queries with the same functions, over their own window.

use std::fmt::Write as _;

use crate::signals::{
    declaration::{Counter, Exported},
    measure::Measure,
};

/// What every rule sums by: one series per container.
pub(crate) const BY: &str = "node, namespace, pod, container";

/// Which labels a query keeps and the range its counters' increases are taken over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span<'a> {
    pub by: &'a str,
    pub range: &'a str,
}

/// The recording rules' span: per container, per minute (`fleet verify`'s intervals).
const PER_MINUTE: Span<'static> = Span {
    by: BY,
    range: "1m",
};

/// The `workload` label `fleet verify` matches pods across nodes by (`did::workload_name`):
/// a Deployment's NAME-<hash>-<suffix>, a DaemonSet's or Job's NAME-<suffix>, a
/// StatefulSet's NAME-<ordinal>; otherwise the pod's name.
const WORKLOAD: &str = r#""workload", "$1$2", "pod", "(.+?)(?:-[bcdfghjklmnpqrstvwxz2456789]{6,10})?-[bcdfghjklmnpqrstvwxz2456789]{5}|(.+)-[0-9]+""#;

/// The rules, as YAML list items of the `tuneprobe-fleet` group.
pub fn recording_rules() -> String {
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
        let _ = writeln!(
            out,
            "              {},",
            expression(declared.exported, PER_MINUTE)
        );
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

/// One counter's increase over the span's range, summed by its labels (and `extra_by`).
fn increase(name: &str, matchers: &str, extra_by: &str, span: Span<'_>) -> String {
    let matchers = [r#"pod!="""#, matchers].join(",");
    let matchers = matchers.trim_end_matches(',');
    format!(
        "sum by ({}{extra_by}) (increase({name}{{{matchers}}}[{}]))",
        span.by, span.range
    )
}

/// A counter's increase over the span, narrowed as declared.
pub(crate) fn counter(c: Counter, span: Span<'_>) -> String {
    increase(c.name, c.matchers().trim_end_matches(','), "", span)
}

/// `a`, or 0 where only `b` has a series: a ratio's part is exported from its first
/// non-zero value on, its load from the load's.
fn or_zero(a: &str, b: &str) -> String {
    format!("({a}\n                or 0 * {b})")
}

/// The measure's load over the span (the ratio's whole, the histogram's count), as
/// PromQL; `None` for a plain count.
pub(crate) fn load(exported: Exported, span: Span<'_>) -> Option<String> {
    match exported {
        Exported::Ratio {
            part,
            whole,
            whole_adds_part,
            ..
        } => {
            let (p, w) = (counter(part, span), counter(whole, span));
            Some(if whole_adds_part {
                format!("({} + {})", or_zero(&p, &w), or_zero(&w, &p))
            } else {
                w
            })
        }
        Exported::Count(_) => None,
        Exported::Histogram { of, .. } => {
            let m = of.matchers();
            Some(increase(
                &format!("{}_count", of.name),
                m.trim_end_matches(','),
                "",
                span,
            ))
        }
    }
}

/// The measure's value over the span, as PromQL.
pub(crate) fn expression(exported: Exported, span: Span<'_>) -> String {
    match exported {
        Exported::Ratio {
            part, whole, scale, ..
        } => {
            let p = counter(part, span);
            let load = load(exported, span).unwrap_or_default();
            let unit = if scale == 1.0 {
                String::new()
            } else {
                format!("{scale} * ")
            };
            format!(
                "{unit}{}\n            / ({load} > 0)",
                or_zero(&p, &counter(whole, span))
            )
        }
        Exported::Count(c) => counter(c, span),
        Exported::Histogram { of, quantile } => {
            let m = of.matchers();
            let m = m.trim_end_matches(',');
            match quantile {
                None => format!(
                    "1000 * {}\n            / ({} > 0)",
                    increase(&format!("{}_sum", of.name), m, "", span),
                    load(exported, span).unwrap_or_default()
                ),
                Some(q) => format!(
                    "1000 * histogram_quantile({q}, {})",
                    increase(&format!("{}_bucket", of.name), m, ", le", span)
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
        let listen = expression(Measure::ListenOverflowRatio.declared().exported, PER_MINUTE);
        // Overflows per (overflows + accepted connections), 0 without overflows.
        assert!(
            listen.contains("reason=\"TCP_LISTEN_OVERFLOW\""),
            "{listen}"
        );
        assert_eq!(
            listen.matches("tuneprobe_tcp_passive_opens_total").count(),
            3
        );
        let forward = expression(Measure::ForwardDropRatio.declared().exported, PER_MINUTE);
        assert!(
            forward.contains("reason=~\"IP_INADDRERRORS|IP_INNOROUTES|NETFILTER_DROP\""),
            "{forward}"
        );
        let ms = expression(
            Measure::CpuThrottledMsPerPeriod.declared().exported,
            PER_MINUTE,
        );
        assert!(ms.starts_with("1000 * (sum by"), "{ms}");
        let writes = expression(Measure::BlockWriteP99Ms.declared().exported, PER_MINUTE);
        assert!(writes.contains("histogram_quantile(0.99"), "{writes}");
        assert!(writes.contains("op=\"write\"}"), "{writes}");
    }
}
