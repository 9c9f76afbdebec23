//! The per-interval samples `verify` judges, rebuilt from the series every agent exports:
//! raw counters and histogram buckets are fetched at each step and differenced here, so
//! an interval's sample is the exact count between two scrapes, as `verify`'s is between
//! two snapshots (no `rate()` extrapolation, which would distort small counts).

use std::collections::{BTreeMap, BTreeSet};

use crate::signals::declaration::{Counter, Exported};

use super::prom::Series;

/// The label the scrape configuration puts the agent's node name in (the
/// ServiceMonitor's relabeling and the shipped plain-Prometheus job both name it so).
pub const NODE_LABEL: &str = "node";

/// The workload labels every per-workload series carries, and the node.
const BY: &str = "node, namespace, pod, container";

/// The PromQL of each raw input of a source, by role: the counters summed per pod and
/// container (over reasons, devices, resolvers and codes, as `verify` sums them), for
/// pods only (non-pod workloads have no names to match across nodes).
pub fn queries(source: Exported, selector: &str) -> Vec<(&'static str, String)> {
    let sum = |metric: &str, matchers: &str, extra: &str| {
        format!("sum by ({BY}{extra}) ({metric}{{pod!=\"\",{matchers}{selector}}})")
    };
    let counter = |c: Counter| sum(c.name, &c.matchers(), "");
    match source {
        Exported::Ratio { part, whole, .. } => {
            vec![("part", counter(part)), ("whole", counter(whole))]
        }
        Exported::Count(c) => vec![("count", counter(c))],
        Exported::Histogram { of, quantile } => {
            let (name, matchers) = (of.name, &of.matchers());
            let mut out = vec![
                ("count", sum(&format!("{name}_count"), matchers, "")),
                ("sum", sum(&format!("{name}_sum"), matchers, "")),
            ];
            if quantile.is_some() {
                out.push(("bucket", sum(&format!("{name}_bucket"), matchers, ", le")));
            }
            out
        }
    }
}

/// A pod's container on a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instance {
    pub node: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl Instance {
    fn of(series: &Series) -> Self {
        Self {
            node: series.label(NODE_LABEL).to_string(),
            namespace: series.label("namespace").to_string(),
            pod: series.label("pod").to_string(),
            container: series.label("container").to_string(),
        }
    }
}

/// One interval's sample: the value and the load it was measured under.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub value: f64,
    pub load: Option<f64>,
}

/// Samples of every instance, by the interval's end (milliseconds since the epoch, the
/// step's grid point).
pub type Samples = BTreeMap<Instance, BTreeMap<i64, Sample>>;

fn millis(t: f64) -> i64 {
    (t * 1000.0).round() as i64
}

/// Increases of a counter between consecutive grid points `step` apart; a decrease is a
/// restart of the agent, after which the counter counts from zero again.
fn increases(points: &[(f64, f64)], step: f64) -> BTreeMap<i64, f64> {
    let points: Vec<(i64, f64)> = points.iter().map(|&(t, v)| (millis(t), v)).collect();
    increases_ms(&points, millis(step))
}

/// [`increases`] on points in milliseconds.
fn increases_ms(points: &[(i64, f64)], step_ms: i64) -> BTreeMap<i64, f64> {
    let mut out = BTreeMap::new();
    for pair in points.windows(2) {
        let ((t0, v0), (t1, v1)) = (pair[0], pair[1]);
        // A gap (the series was absent for a step) spans more than one interval.
        if (t1 - t0 - step_ms).abs() > step_ms / 10 || !v0.is_finite() || !v1.is_finite() {
            continue;
        }
        out.insert(t1, if v1 >= v0 { v1 - v0 } else { v1 });
    }
    out
}

/// The increases of `part + whole` per instance, each counter absent at a point counting
/// as 0 there (per-workload counters are exported from their first non-zero value on);
/// a point where both are absent is a gap.
fn sum_increases(
    part: &BTreeMap<Instance, BTreeMap<i64, f64>>,
    whole: &BTreeMap<Instance, BTreeMap<i64, f64>>,
    step_ms: i64,
) -> BTreeMap<Instance, BTreeMap<i64, f64>> {
    let instances: BTreeSet<&Instance> = part.keys().chain(whole.keys()).collect();
    instances
        .into_iter()
        .map(|instance| {
            let mut sums: BTreeMap<i64, f64> = BTreeMap::new();
            for points in [part.get(instance), whole.get(instance)]
                .into_iter()
                .flatten()
            {
                for (&at, &v) in points {
                    *sums.entry(at).or_default() += v;
                }
            }
            let points: Vec<(i64, f64)> = sums.into_iter().collect();
            (instance.clone(), increases_ms(&points, step_ms))
        })
        .collect()
}

/// Raw values per instance and grid point.
fn raw(series: &[Series]) -> BTreeMap<Instance, BTreeMap<i64, f64>> {
    series
        .iter()
        .map(|s| {
            (
                Instance::of(s),
                s.points
                    .iter()
                    .filter(|(_, v)| v.is_finite())
                    .map(|&(t, v)| (millis(t), v))
                    .collect(),
            )
        })
        .collect()
}

fn by_instance(series: &[Series], step: f64) -> BTreeMap<Instance, BTreeMap<i64, f64>> {
    series
        .iter()
        .map(|s| (Instance::of(s), increases(&s.points, step)))
        .collect()
}

/// The answers of one role (`part`, `count`...), or none.
fn answer<'a>(answers: &'a BTreeMap<&str, Vec<Series>>, role: &str) -> &'a [Series] {
    answers.get(role).map_or(&[][..], Vec::as_slice)
}

/// Per-interval samples of a source from the answers to its queries (by role, as
/// [`queries`] names them).
pub fn samples(source: Exported, answers: &BTreeMap<&str, Vec<Series>>, step: f64) -> Samples {
    let mut out = match source {
        Exported::Ratio {
            whole_adds_part,
            scale,
            ..
        } => ratio_samples(answers, step, whole_adds_part, scale),
        Exported::Count(_) => by_instance(answer(answers, "count"), step)
            .into_iter()
            .map(|(instance, counts)| {
                let samples = counts
                    .into_iter()
                    .map(|(at, value)| (at, Sample { value, load: None }))
                    .collect();
                (instance, samples)
            })
            .collect(),
        Exported::Histogram { quantile, .. } => histogram_samples(answers, step, quantile),
    };
    out.retain(|_, s| !s.is_empty());
    out
}

/// A ratio's samples: the part's increase per the whole's (or per part and whole).
fn ratio_samples(
    answers: &BTreeMap<&str, Vec<Series>>,
    step: f64,
    whole_adds_part: bool,
    scale: f64,
) -> Samples {
    let mut out = Samples::new();
    let part = raw(answer(answers, "part"));
    let step_ms = millis(step);
    let whole = if whole_adds_part {
        sum_increases(&part, &raw(answer(answers, "whole")), step_ms)
    } else {
        by_instance(answer(answers, "whole"), step)
    };
    for (instance, wholes) in &whole {
        let parts = part.get(instance);
        let series = out.entry(instance.clone()).or_default();
        for (&at, &w) in wholes.iter().filter(|(_, w)| **w > 0.0) {
            // Per-workload counters are exported from their first non-zero value
            // on: a part absent while its whole counts is zero so far.
            let value = |t: i64| parts.and_then(|p| p.get(&t)).copied();
            let p = match (value(at - step_ms), value(at)) {
                (_, None) => 0.0,
                (None, Some(now)) => now,
                (Some(before), Some(now)) if now >= before => now - before,
                (Some(_), Some(now)) => now,
            };
            let sample = Sample {
                value: p / w * scale,
                load: Some(w),
            };
            series.insert(at, sample);
        }
    }
    out
}

/// A histogram's samples: the interval's mean, or `quantile` of its buckets, in ms.
fn histogram_samples(
    answers: &BTreeMap<&str, Vec<Series>>,
    step: f64,
    quantile: Option<f64>,
) -> Samples {
    let mut out = Samples::new();
    let (count, sum) = (
        by_instance(answer(answers, "count"), step),
        by_instance(answer(answers, "sum"), step),
    );
    let buckets = quantile.map(|_| buckets(answer(answers, "bucket"), step));
    for (instance, counts) in &count {
        let series = out.entry(instance.clone()).or_default();
        for (&at, &n) in counts.iter().filter(|(_, n)| **n > 0.0) {
            let value = match (quantile, &buckets) {
                (Some(q), Some(buckets)) => buckets
                    .get(instance)
                    .and_then(|b| b.get(&at))
                    .and_then(|b| bucket_quantile(q, b)),
                _ => sum.get(instance).and_then(|s| s.get(&at)).map(|s| s / n),
            };
            if let Some(seconds) = value {
                let sample = Sample {
                    value: seconds * 1000.0,
                    load: Some(n),
                };
                series.insert(at, sample);
            }
        }
    }
    out
}

/// Bucket increases per instance and interval: `(le, cumulative count)` in `le` order.
fn buckets(series: &[Series], step: f64) -> BTreeMap<Instance, BTreeMap<i64, Vec<(f64, f64)>>> {
    let mut out: BTreeMap<Instance, BTreeMap<i64, Vec<(f64, f64)>>> = BTreeMap::new();
    for s in series {
        let Some(le) = s.labels.get("le").and_then(|le| match le.as_str() {
            "+Inf" => Some(f64::INFINITY),
            le => le.parse().ok(),
        }) else {
            continue;
        };
        let per_interval = out.entry(Instance::of(s)).or_default();
        for (at, increase) in increases(&s.points, step) {
            per_interval.entry(at).or_default().push((le, increase));
        }
    }
    for per_interval in out.values_mut() {
        for b in per_interval.values_mut() {
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
        }
    }
    out
}

/// `histogram_quantile`'s estimate from cumulative buckets: linear inside the bucket
/// holding the rank, from 0 for the first; in the `+Inf` bucket, the highest finite
/// bound (a quantile above every bound is only known to exceed it).
pub fn bucket_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let &(last_le, total) = buckets.last()?;
    if !last_le.is_infinite() || total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(previous.0);
            }
            let (lo, below) = previous;
            let inside = count - below;
            return Some(if inside > 0.0 {
                lo + (le - lo) * (rank - below) / inside
            } else {
                le
            });
        }
        previous = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::{drops, measure::Measure};

    fn series(labels: &[(&str, &str)], points: &[(f64, f64)]) -> Series {
        Series {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            points: points.to_vec(),
        }
    }

    /// The fleet view judges a drop-reason ratio on exactly the reasons `verify` does,
    /// and a CPU time per period in milliseconds as `verify` does.
    #[test]
    fn drop_ratios_name_the_declared_reasons_and_cpu_time_is_in_ms() {
        for (measure, reasons) in [
            (Measure::RcvbufDropRatio, drops::RCVBUF_REASONS),
            (Measure::BacklogDropRatio, drops::BACKLOG_REASONS),
            (Measure::ForwardDropRatio, drops::FORWARDING_REASONS),
        ] {
            let Exported::Ratio { part, .. } = measure.declared().exported else {
                panic!("{measure:?} is a ratio");
            };
            let expected = match reasons {
                [one] => format!("reason=\"{one}\","),
                many => format!("reason=~\"{}\",", many.join("|")),
            };
            assert_eq!(part.matchers(), expected, "{measure:?}");
            assert_eq!(part.name, drops::PACKET_DROPS);
        }
        let Exported::Ratio { scale, .. } = Measure::CpuThrottledMsPerPeriod.declared().exported
        else {
            panic!("a ratio");
        };
        assert_eq!(scale, 1000.0);
        // 0.4 s throttled over 5 periods in a 10 s step: 80 ms per period.
        let answers = BTreeMap::from([
            ("part", vec![series(&POD, &[(0.0, 1.0), (10.0, 1.4)])]),
            ("whole", vec![series(&POD, &[(0.0, 10.0), (10.0, 15.0)])]),
        ]);
        let got = samples(
            Measure::CpuThrottledMsPerPeriod.declared().exported,
            &answers,
            10.0,
        );
        let sample = got.values().next().unwrap()[&10_000];
        assert!((sample.value - 80.0).abs() < 1e-9, "{sample:?}");
        assert_eq!(sample.load, Some(5.0));
    }

    const POD: [(&str, &str); 4] = [
        ("node", "n1"),
        ("namespace", "shop"),
        ("pod", "api-1"),
        ("container", "server"),
    ];

    #[test]
    fn ratios_from_counter_increases_with_gaps_and_restarts() {
        let whole = series(
            &POD,
            &[
                (0.0, 100.0),
                (10.0, 200.0),
                (20.0, 300.0),
                (40.0, 500.0),
                (50.0, 20.0),
            ],
        );
        // The part appears late (its first non-zero value), after the first interval.
        let part = series(
            &POD,
            &[(10.0, 50.0), (20.0, 60.0), (40.0, 60.0), (50.0, 5.0)],
        );
        let answers = BTreeMap::from([("part", vec![part]), ("whole", vec![whole])]);
        let source = Measure::CpuThrottledRatio.declared().exported;
        let got = samples(source, &answers, 10.0);
        let s = &got.values().next().unwrap();
        // 10 s: the part's first point, absent before while the whole counted: 50 of
        // 100; 20 s: 10 of 100; 30 s missing, 40 s spans a gap -> nothing;
        // 50 s: restart, 5 of 20.
        let values: Vec<(i64, f64, Option<f64>)> =
            s.iter().map(|(t, s)| (*t, s.value, s.load)).collect();
        assert_eq!(
            values,
            vec![
                (10_000, 0.5, Some(100.0)),
                (20_000, 0.1, Some(100.0)),
                (50_000, 0.25, Some(20.0))
            ]
        );
        assert_eq!(got.keys().next().unwrap().pod, "api-1");
    }

    #[test]
    fn histogram_means_and_quantiles() {
        let count = series(&POD, &[(0.0, 0.0), (1.0, 10.0), (2.0, 10.0)]);
        let sum = series(&POD, &[(0.0, 0.0), (1.0, 0.25), (2.0, 0.25)]);
        let bucket = |le: &str, points: &[(f64, f64)]| {
            let mut labels = POD.to_vec();
            labels.push(("le", le));
            series(&labels, points)
        };
        let buckets = vec![
            bucket("0.01", &[(0.0, 0.0), (1.0, 2.0), (2.0, 2.0)]),
            bucket("0.05", &[(0.0, 0.0), (1.0, 10.0), (2.0, 10.0)]),
            bucket("+Inf", &[(0.0, 0.0), (1.0, 10.0), (2.0, 10.0)]),
        ];
        let mean = samples(
            Measure::DnsLatencyMs.declared().exported,
            &BTreeMap::from([("count", vec![count.clone()]), ("sum", vec![sum.clone()])]),
            1.0,
        );
        let s = mean.values().next().unwrap();
        // The second interval has no responses: no sample, as in `verify`.
        assert_eq!(s.len(), 1);
        assert!((s[&1000].value - 25.0).abs() < 1e-9);
        assert_eq!(s[&1000].load, Some(10.0));

        let p99 = samples(
            Measure::DnsLatencyP99Ms.declared().exported,
            &BTreeMap::from([
                ("count", vec![count]),
                ("sum", vec![sum]),
                ("bucket", buckets),
            ]),
            1.0,
        );
        // Rank 9.9 of 10 lies in (0.01, 0.05]: 0.01 + 0.04 * 7.9 / 8.
        let expected = (0.01 + 0.04 * 7.9 / 8.0) * 1000.0;
        let got = p99.values().next().unwrap()[&1000].value;
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
    }

    #[test]
    fn quantiles_as_prometheus_computes_them() {
        let b = [(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(bucket_quantile(0.5, &b), Some(0.1));
        assert!((bucket_quantile(0.75, &b).unwrap() - 0.15).abs() < 1e-12);
        // Above every finite bound: the highest finite bound.
        let b = [(0.1, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(bucket_quantile(0.99, &b), Some(0.1));
        assert_eq!(
            bucket_quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        assert_eq!(bucket_quantile(0.5, &[(0.1, 3.0)]), None);
    }

    #[test]
    fn queries_sum_per_pod_and_container() {
        let q = queries(
            Measure::BlockServiceP99Ms.declared().exported,
            "node=~\"a|b\"",
        );
        let roles: Vec<&str> = q.iter().map(|(r, _)| *r).collect();
        assert_eq!(roles, ["count", "sum", "bucket"]);
        assert_eq!(
            q[2].1,
            "sum by (node, namespace, pod, container, le) \
             (tuneprobe_block_service_seconds_bucket{pod!=\"\",node=~\"a|b\"})"
        );
        let q = queries(
            Measure::ListenOverflowRatio.declared().exported,
            "node=\"a\"",
        );
        assert_eq!(
            q,
            [
                (
                    "part",
                    "sum by (node, namespace, pod, container) (tuneprobe_packet_drops_total\
                     {pod!=\"\",reason=\"TCP_LISTEN_OVERFLOW\",node=\"a\"})"
                        .to_string()
                ),
                (
                    "whole",
                    "sum by (node, namespace, pod, container) \
                     (tuneprobe_tcp_passive_opens_total{pod!=\"\",node=\"a\"})"
                        .to_string()
                ),
            ]
        );
        let q = queries(Measure::RetransmitRatio.declared().exported, "node=\"a\"");
        assert_eq!(
            q[1].1,
            "sum by (node, namespace, pod, container) \
             (tuneprobe_tcp_sent_segments_total{pod!=\"\",node=\"a\"})"
        );
    }

    fn values(got: &Samples) -> Vec<(i64, f64, Option<f64>)> {
        got.values()
            .next()
            .unwrap()
            .iter()
            .map(|(t, s)| (*t, s.value, s.load))
            .collect()
    }

    #[test]
    fn retransmit_ratios_per_sent_segment_zero_without_retransmits() {
        // The namespace's sent segments, exported whether or not anything retransmitted.
        let sent = series(
            &POD,
            &[
                (0.0, 1000.0),
                (10.0, 2000.0),
                (20.0, 2500.0),
                (30.0, 2500.0),
                (40.0, 4500.0),
            ],
        );
        // The first retransmits at 20 s; none in the interval to 40 s.
        let retransmitted = series(&POD, &[(20.0, 25.0), (30.0, 25.0), (40.0, 25.0)]);
        let answers = BTreeMap::from([("part", vec![retransmitted]), ("whole", vec![sent])]);
        let got = samples(Measure::RetransmitRatio.declared().exported, &answers, 10.0);
        // 10 s: none of 1000; 20 s: 25 of 500; 30 s: nothing sent, no sample; 40 s: 0 of
        // 2000.
        assert_eq!(
            values(&got),
            [
                (10_000, 0.0, Some(1000.0)),
                (20_000, 0.05, Some(500.0)),
                (40_000, 0.0, Some(2000.0)),
            ]
        );
    }

    #[test]
    fn listen_overflows_per_connection_attempt() {
        // Passive opens of the namespace, and the listen overflows exported as a drop
        // reason from the first overflow on.
        let opens = series(
            &POD,
            &[
                (0.0, 10.0),
                (10.0, 40.0),
                (20.0, 60.0),
                (30.0, 60.0),
                (40.0, 60.0),
                (50.0, 5.0),
            ],
        );
        let overflows = series(
            &POD,
            &[(20.0, 20.0), (30.0, 20.0), (40.0, 30.0), (50.0, 1.0)],
        );
        let answers = BTreeMap::from([("part", vec![overflows]), ("whole", vec![opens])]);
        let got = samples(
            Measure::ListenOverflowRatio.declared().exported,
            &answers,
            10.0,
        );
        // 10 s: 0 of 30 attempts; 20 s: 20 overflows, 20 opens: 20 of 40; 30 s: no
        // attempts, no sample; 40 s: every one of 10 attempts overflowed (no opens);
        // 50 s: the agent restarted, 1 of 6.
        assert_eq!(
            values(&got),
            [
                (10_000, 0.0, Some(30.0)),
                (20_000, 0.5, Some(40.0)),
                (40_000, 1.0, Some(10.0)),
                (50_000, 1.0 / 6.0, Some(6.0)),
            ]
        );
        // A namespace whose listener never accepted: overflows alone are attempts.
        let overflows = series(&POD, &[(0.0, 3.0), (10.0, 7.0)]);
        let answers = BTreeMap::from([("part", vec![overflows]), ("whole", vec![])]);
        let got = samples(
            Measure::ListenOverflowRatio.declared().exported,
            &answers,
            10.0,
        );
        assert_eq!(values(&got), [(10_000, 1.0, Some(4.0))]);
    }
}
