//! Metric families being built for one scrape: every signal adds its own, the
//! exporter encodes them with the `prometheus` crate (which escapes label values).

use std::collections::BTreeMap;

use probe_common::LatencyHistogram;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

/// `le` bounds, seconds, for block IO and throttle stalls.
pub(crate) const IO_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// `le` bounds, seconds, for DNS.
pub(crate) const DNS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub(crate) type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
pub enum Value {
    Counter(f64),
    Gauge(f64),
    /// Sample count, sum in seconds, cumulative counts per bound.
    Histogram {
        count: u64,
        sum: f64,
        buckets: Vec<(f64, u64)>,
    },
}

impl Value {
    fn merge(&mut self, other: Value) {
        match (self, other) {
            (Value::Counter(a), Value::Counter(b)) | (Value::Gauge(a), Value::Gauge(b)) => *a += b,
            (
                Value::Histogram {
                    count,
                    sum,
                    buckets,
                },
                Value::Histogram {
                    count: c,
                    sum: s,
                    buckets: b,
                },
            ) => {
                *count += c;
                *sum += s;
                for ((_, total), (_, more)) in buckets.iter_mut().zip(b) {
                    *total += more;
                }
            }
            _ => {}
        }
    }
}

/// Metric families being built: name -> (help, series by labels).
#[derive(Default)]
pub struct Families {
    families: BTreeMap<&'static str, (&'static str, BTreeMap<Labels, Value>)>,
}

impl Families {
    pub fn add(&mut self, name: &'static str, help: &'static str, labels: Labels, value: Value) {
        let (_, series) = self
            .families
            .entry(name)
            .or_insert_with(|| (help, BTreeMap::new()));
        match series.get_mut(&labels) {
            Some(existing) => existing.merge(value),
            None => {
                series.insert(labels, value);
            }
        }
    }

    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: Labels, value: f64) {
        self.add(name, help, labels, Value::Counter(value));
    }

    /// Counters of one workload that exist from their first non-zero value on (a
    /// namespace's loads: a ratio's denominator is there when its numerator is 0).
    pub fn nonzero_counters(
        &mut self,
        labels: &Labels,
        counters: &[(&'static str, &'static str, u64)],
    ) {
        for &(name, help, value) in counters {
            if value > 0 {
                self.counter(name, help, labels.clone(), value as f64);
            }
        }
    }

    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, value: f64) {
        self.add(name, help, labels, Value::Gauge(value));
    }

    pub fn encode(self) -> Vec<MetricFamily> {
        self.families
            .into_iter()
            .map(|(name, (help, series))| {
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                let mut kind = MetricType::GAUGE;
                let metrics = series
                    .into_iter()
                    .map(|(labels, value)| {
                        let mut metric = Metric::default();
                        metric.set_label(
                            labels
                                .into_iter()
                                .map(|(k, v)| {
                                    let mut pair = LabelPair::default();
                                    pair.set_name(k.to_string());
                                    pair.set_value(v);
                                    pair
                                })
                                .collect(),
                        );
                        match value {
                            Value::Counter(v) => {
                                kind = MetricType::COUNTER;
                                let mut counter = Counter::default();
                                counter.set_value(v);
                                metric.set_counter(counter);
                            }
                            Value::Gauge(v) => {
                                let mut gauge = Gauge::default();
                                gauge.set_value(v);
                                metric.set_gauge(gauge);
                            }
                            Value::Histogram {
                                count,
                                sum,
                                buckets,
                            } => {
                                kind = MetricType::HISTOGRAM;
                                let mut histogram = Histogram::default();
                                histogram.set_sample_count(count);
                                histogram.set_sample_sum(sum);
                                histogram.set_bucket(
                                    buckets
                                        .into_iter()
                                        .map(|(le, cumulative)| {
                                            let mut bucket = Bucket::default();
                                            bucket.set_upper_bound(le);
                                            bucket.set_cumulative_count(cumulative);
                                            bucket
                                        })
                                        .collect(),
                                );
                                metric.set_histogram(histogram);
                            }
                        }
                        metric
                    })
                    .collect();
                family.set_field_type(kind);
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

/// A Prometheus histogram from a kernel histogram. The `le` count of a bound counts the
/// kernel buckets that end at or below it, so it never includes a sample above the
/// bound (a sample in a kernel bucket that straddles the bound counts in the next one).
pub(crate) fn prometheus_histogram<const N: usize, const S: u32>(
    h: &LatencyHistogram<N, S>,
    bounds: &[f64],
) -> Value {
    let mut buckets: Vec<(f64, u64)> = bounds.iter().map(|&le| (le, 0)).collect();
    for (index, &count) in h.buckets.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let (_, upper_us) = LatencyHistogram::<N, S>::bounds_us(index);
        let upper = upper_us as f64 / 1e6;
        for (le, cumulative) in &mut buckets {
            if upper <= *le {
                *cumulative += count;
            }
        }
    }
    Value::Histogram {
        count: h.count,
        sum: h.sum_ns as f64 / 1e9,
        buckets,
    }
}

pub(crate) fn with(labels: &Labels, more: &[(&'static str, &str)]) -> Labels {
    let mut out = labels.clone();
    out.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
    out
}
