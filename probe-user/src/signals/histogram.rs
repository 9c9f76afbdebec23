//! Percentiles from the kernel's log-linear histograms.

use probe_common::LatencyHistogram;
use serde::Serialize;

/// Bucket-wise difference of two cumulative histograms (`later - earlier`). The maximum
/// cannot be subtracted: it is the maximum since the programs were loaded.
pub fn since<const N: usize, const S: u32>(
    later: &LatencyHistogram<N, S>,
    earlier: &LatencyHistogram<N, S>,
) -> LatencyHistogram<N, S> {
    let mut out = *later;
    out.count = later.count.saturating_sub(earlier.count);
    out.sum_ns = later.sum_ns.saturating_sub(earlier.sum_ns);
    for (bucket, before) in out.buckets.iter_mut().zip(earlier.buckets.iter()) {
        *bucket = bucket.saturating_sub(*before);
    }
    out
}

/// Adds `other` into `total`.
pub fn add<const N: usize, const S: u32>(
    total: &mut LatencyHistogram<N, S>,
    other: &LatencyHistogram<N, S>,
) {
    if other.count > 0 && (total.count == 0 || other.min_ns < total.min_ns) {
        total.min_ns = other.min_ns;
    }
    total.count += other.count;
    total.sum_ns += other.sum_ns;
    total.max_ns = total.max_ns.max(other.max_ns);
    for (bucket, more) in total.buckets.iter_mut().zip(other.buckets.iter()) {
        *bucket += more;
    }
}

/// The `q` quantile (0..=1) in milliseconds; `None` without samples.
///
/// The bucket holding the quantile's rank is narrowed to what was observed (the first
/// and last buckets start at the minimum and end at the maximum), and the estimate is
/// interpolated linearly inside it. When samples crowd into one bucket, as a fixed delay
/// gives, the estimate then stays between the smallest and largest sample instead of
/// wandering to the middle of a bucket up to 25% wide.
pub fn quantile_ms<const N: usize, const S: u32>(
    h: &LatencyHistogram<N, S>,
    q: f64,
) -> Option<f64> {
    let total: u64 = h.buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let observed = h.count > 0 && h.max_ns >= h.min_ns;
    let mut seen = 0u64;
    for (index, &count) in h.buckets.iter().enumerate() {
        if count == 0 {
            continue;
        }
        if (seen + count) as f64 >= rank {
            let (lower, upper) = LatencyHistogram::<N, S>::bounds_us(index);
            let (mut lower, mut upper) = (lower as f64 * 1000.0, upper as f64 * 1000.0);
            if observed {
                lower = lower.max(h.min_ns as f64).min(h.max_ns as f64);
                upper = upper.min(h.max_ns as f64).max(lower);
            }
            let within = (rank - seen as f64) / count as f64;
            return Some((lower + within * (upper - lower)) / 1e6);
        }
        seen += count;
    }
    None
}

pub fn mean_ms<const N: usize, const S: u32>(h: &LatencyHistogram<N, S>) -> Option<f64> {
    (h.count > 0).then(|| h.sum_ns as f64 / h.count as f64 / 1e6)
}

/// Rounds to microsecond precision for reports.
pub fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// `{ "mean", "p50", "p99", "max" }` in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl LatencySummary {
    pub fn of<const N: usize, const S: u32>(h: &LatencyHistogram<N, S>) -> Self {
        Self {
            mean: mean_ms(h).map(round_ms),
            p50: quantile_ms(h, 0.5).map(round_ms),
            p99: quantile_ms(h, 0.99).map(round_ms),
            max: (h.count > 0).then(|| round_ms(h.max_ns as f64 / 1e6)),
        }
    }
}

/// `{ "p50", "p90", "p99", "max" }` in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    pub fn of<const N: usize, const S: u32>(h: &LatencyHistogram<N, S>) -> Self {
        Self {
            p50: quantile_ms(h, 0.5).map(round_ms),
            p90: quantile_ms(h, 0.9).map(round_ms),
            p99: quantile_ms(h, 0.99).map(round_ms),
            max: (h.count > 0).then(|| round_ms(h.max_ns as f64 / 1e6)),
        }
    }
}

#[cfg(test)]
mod tests {
    use probe_common::histogram::bucket_index;

    use super::*;

    fn histogram(samples_ns: &[u64]) -> LatencyHistogram {
        let mut h: LatencyHistogram = LatencyHistogram::ZERO;
        for &ns in samples_ns {
            if h.count == 0 || ns < h.min_ns {
                h.min_ns = ns;
            }
            h.count += 1;
            h.sum_ns += ns;
            h.max_ns = h.max_ns.max(ns);
            h.buckets[bucket_index(ns)] += 1;
        }
        h
    }

    #[test]
    fn percentiles_land_within_a_bucket_of_the_truth() {
        // 90 fast requests at 1 ms and 10 slow ones at 100 ms, as a throttled disk gives.
        let mut samples = vec![1_000_000u64; 90];
        samples.extend(vec![100_000_000u64; 10]);
        let h = histogram(&samples);
        let p50 = quantile_ms(&h, 0.5).unwrap();
        assert!((1.0..1.25).contains(&p50), "{p50}");
        let p99 = quantile_ms(&h, 0.99).unwrap();
        assert!((80.0..=100.0).contains(&p99), "{p99}");
        assert_eq!(mean_ms(&h), Some(10.9));
        assert_eq!(LatencySummary::of(&h).max, Some(100.0));
    }

    #[test]
    fn estimates_stay_within_the_observed_range() {
        // Samples crowded at 25.1-25.3 ms fall in one 4 ms wide bucket; the estimate
        // must not wander to the bucket's middle.
        let h = histogram(&[25_100_000, 25_200_000, 25_300_000]);
        let p50 = quantile_ms(&h, 0.5).unwrap();
        assert!((25.1..=25.3).contains(&p50), "{p50}");
        // 100 ms +- a little: within a millisecond although the bucket is 16 ms wide.
        let h = histogram(&[100_100_000; 9]);
        assert!((quantile_ms(&h, 0.5).unwrap() - 100.1).abs() < 0.01);
        let one = histogram(&[7_000_000]);
        assert_eq!(quantile_ms(&one, 0.99), Some(7.0));
    }

    #[test]
    fn dns_histogram_median_within_a_millisecond_at_100_ms() {
        // A 100 ms delay with a tail, as a real server gives: most answers at 100.1-100.5,
        // a few up to 104.7. The coarse histogram would say ~102.
        let mut h = probe_common::DnsHistogram::ZERO;
        let samples = [
            100_100_000u64,
            100_200_000,
            100_300_000,
            100_300_000,
            100_400_000,
            100_400_000,
            100_500_000,
            103_000_000,
            104_000_000,
            104_600_000,
            104_700_000,
        ];
        for ns in samples {
            if h.count == 0 || ns < h.min_ns {
                h.min_ns = ns;
            }
            h.count += 1;
            h.max_ns = h.max_ns.max(ns);
            h.buckets[probe_common::DnsHistogram::bucket(ns)] += 1;
        }
        let p50 = quantile_ms(&h, 0.5).unwrap();
        assert!((p50 - 100.4).abs() <= 1.0, "{p50}");
    }

    #[test]
    fn medians_of_25_and_30_ms_differ() {
        let a = quantile_ms(&histogram(&[25_000_000; 11]), 0.5).unwrap();
        let b = quantile_ms(&histogram(&[30_000_000; 11]), 0.5).unwrap();
        assert!(
            a < b && (20.0..=25.0).contains(&a) && (28.0..=30.0).contains(&b),
            "{a} {b}"
        );
    }

    #[test]
    fn empty_and_subtracted() {
        let empty: LatencyHistogram = LatencyHistogram::ZERO;
        assert_eq!(quantile_ms(&empty, 0.5), None);
        assert_eq!(LatencySummary::of(&empty), LatencySummary::default());
        let before = histogram(&[1_000_000; 5]);
        let mut after = before;
        add(&mut after, &histogram(&[2_000_000; 3]));
        let window = since(&after, &before);
        assert_eq!(window.count, 3);
        assert_eq!(window.sum_ns, 6_000_000);
        assert_eq!(window.buckets.iter().sum::<u64>(), 3);
    }
}
