//! Latency histograms filled in the kernel: log-linear buckets over microseconds, four
//! per power of two, so a bucket is at most 25% wide (a 25 ms and a 30 ms median fall in
//! different buckets) and 100 buckets reach past 25 s; longer values share the last
//! bucket (the maximum stays exact).

/// Buckets of the default histogram (block IO, CPU stalls).
pub const HISTOGRAM_BUCKETS: usize = 100;
/// Sub-buckets per power of two, as a shift: 2 bits -> 4, each at most 25% wide.
pub const SUB_BITS: u32 = 2;

/// DNS latency is judged to the millisecond at 100 ms (a 1% step), so its histogram is
/// finer: 32 sub-buckets per power of two (at most ~3% wide), from 1 µs to past 8 s.
pub const DNS_SUB_BITS: u32 = 5;
pub const DNS_BUCKETS: usize = 1 + 23 * (1 << DNS_SUB_BITS);
pub type DnsHistogram = LatencyHistogram<DNS_BUCKETS, DNS_SUB_BITS>;

/// Count, exact sum, extremes, plus the bucket counts: `N` log-linear buckets over
/// microseconds with `2^SUB_BITS` per power of two. The extremes let a percentile
/// estimate stay within what was observed when samples crowd into one bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHistogram<const N: usize = HISTOGRAM_BUCKETS, const SUB: u32 = SUB_BITS> {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    /// Smallest sample; meaningless while `count` is 0.
    pub min_ns: u64,
    pub buckets: [u64; N],
}

impl<const N: usize, const SUB: u32> LatencyHistogram<N, SUB> {
    pub const ZERO: Self = Self {
        count: 0,
        sum_ns: 0,
        max_ns: 0,
        min_ns: 0,
        buckets: [0; N],
    };

    /// The bucket of a duration in this histogram.
    #[inline(always)]
    pub fn bucket(ns: u64) -> usize {
        bucket_index_with(ns, SUB, N)
    }

    /// `[lower, upper)` of a bucket in microseconds.
    pub fn bounds_us(index: usize) -> (u64, u64) {
        bucket_bounds_with(index, SUB)
    }
}

impl<const N: usize, const SUB: u32> Default for LatencyHistogram<N, SUB> {
    fn default() -> Self {
        Self::ZERO
    }
}

/// `floor(log2(v))` for `v > 0`, without loops (the verifier prefers straight code).
#[inline(always)]
pub fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// The bucket of a duration in the default histogram: 0 below 1 µs, then four per power
/// of two of microseconds.
#[inline(always)]
pub fn bucket_index(ns: u64) -> usize {
    bucket_index_with(ns, SUB_BITS, HISTOGRAM_BUCKETS)
}

/// `[lower, upper)` of a default-histogram bucket in microseconds.
pub fn bucket_bounds_us(index: usize) -> (u64, u64) {
    bucket_bounds_with(index, SUB_BITS)
}

#[inline(always)]
fn bucket_index_with(ns: u64, sub_bits: u32, buckets: usize) -> usize {
    let us = ns / 1000;
    if us == 0 {
        return 0;
    }
    // Clamp the input, not only the index: every value past the last bucket's lower
    // bound lands in the last bucket either way, but then no path the eBPF verifier
    // explores yields an index beyond the histogram. Kernel 6.1's verifier follows
    // impossible branches of an index-only clamp with nonsense bounds and rejects the
    // bucket's atomic add as misaligned.
    let top = bucket_bounds_with(buckets - 1, sub_bits).0;
    let us = if us > top { top } else { us };
    let exp = log2(us);
    let sub_mask = (1u64 << sub_bits) - 1;
    let sub = if exp >= sub_bits {
        (us >> (exp - sub_bits)) & sub_mask
    } else {
        (us << (sub_bits - exp)) & sub_mask
    };
    let index = 1 + ((exp as usize) << sub_bits) + sub as usize;
    if index < buckets { index } else { buckets - 1 }
}

#[inline(always)]
fn bucket_bounds_with(index: usize, sub_bits: u32) -> (u64, u64) {
    if index == 0 {
        return (0, 1);
    }
    let sub_count = 1u64 << sub_bits;
    let exp = ((index - 1) >> sub_bits) as u32;
    let sub = ((index - 1) as u64) & (sub_count - 1);
    let base = 1u64 << exp;
    // Below 2^sub_bits µs some buckets are empty: bounds stay ordered and disjoint.
    let lower = base + base * sub / sub_count;
    let upper = base + base * (sub + 1) / sub_count;
    (lower, upper.max(lower + 1))
}

// SAFETY: `#[repr(C)]`, only `u64` fields and arrays of them.
#[cfg(feature = "user")]
unsafe impl<const N: usize, const SUB: u32> aya::Pod for LatencyHistogram<N, SUB> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_last_bucket_land_in_it() {
        for (sub_bits, buckets) in [(2u32, 100usize), (5, 737), (3, 200)] {
            let top = bucket_bounds_with(buckets - 1, sub_bits).0;
            assert_eq!(
                bucket_index_with(top * 1000, sub_bits, buckets),
                buckets - 1
            );
            assert_eq!(bucket_index_with(u64::MAX, sub_bits, buckets), buckets - 1);
            assert_eq!(
                bucket_index_with((top - 1) * 1000, sub_bits, buckets),
                buckets - 2,
                "{sub_bits} {buckets}"
            );
        }
    }

    #[test]
    fn log2_is_floor_log2() {
        for v in [1u64, 2, 3, 4, 7, 8, 1000, 1 << 40, u64::MAX] {
            assert_eq!(log2(v), 63 - v.leading_zeros(), "{v}");
        }
    }

    #[test]
    fn every_value_falls_inside_its_bucket() {
        for us in (1..5000u64).chain([10_000, 25_000, 30_000, 99_999, 1_000_000]) {
            let index = bucket_index(us * 1000);
            let (lo, hi) = bucket_bounds_us(index);
            assert!(
                lo <= us && us < hi,
                "{us} µs in bucket {index} [{lo}, {hi})"
            );
        }
        assert_eq!(bucket_index(999), 0);
        assert_eq!(bucket_index(u64::MAX), HISTOGRAM_BUCKETS - 1);
    }

    #[test]
    fn the_dns_histogram_steps_by_about_3_percent() {
        for us in (1..5000u64).chain([25_000, 100_000, 100_400, 1_000_000, 5_000_000]) {
            let index = DnsHistogram::bucket(us * 1000);
            let (lo, hi) = DnsHistogram::bounds_us(index);
            assert!(
                lo <= us && us < hi,
                "{us} µs in bucket {index} [{lo}, {hi})"
            );
        }
        let (lo, hi) = DnsHistogram::bounds_us(DnsHistogram::bucket(100_000_000));
        assert!(hi - lo <= 2100, "[{lo}, {hi}) at 100 ms");
        assert!(DnsHistogram::bounds_us(DNS_BUCKETS - 1).0 > 8_000_000);
    }

    #[test]
    fn buckets_are_narrow_enough_to_tell_25ms_from_30ms() {
        assert_ne!(bucket_index(25_000_000), bucket_index(30_000_000));
        for index in 9..HISTOGRAM_BUCKETS - 1 {
            let (lo, hi) = bucket_bounds_us(index);
            assert!(
                (hi - lo) * 4 <= lo,
                "bucket {index} [{lo}, {hi}) wider than 25%"
            );
        }
        // 100 buckets reach past 25 s.
        assert!(bucket_bounds_us(HISTOGRAM_BUCKETS - 1).0 > 25_000_000);
    }
}
