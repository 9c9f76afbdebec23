//! Before-against-after comparison of per-interval samples: the Mann-Whitney U rank test
//! (normal approximation with tie and continuity corrections) and the Hodges-Lehmann
//! shift with its 95% confidence interval (Moses' method). For paired samples (`verify
//! --ab`: one difference treated minus control per interval), the one-sample versions:
//! Wilcoxon's signed-rank test and the median of the Walsh averages. Rank statistics,
//! because per-interval rates and latencies are rarely normal and often have outliers.

use serde::Serialize;

/// Fewer samples than this on either side: no verdict.
pub(crate) const MIN_SAMPLES: usize = 5;
/// Significance level, of the two-sided test of a verdict and of the one-sided test of a
/// prediction alike.
pub(crate) const ALPHA: f64 = 0.05;

/// A load ratio (after over before) outside these bounds is a load change, the main
/// confounder of a verdict.
const LOAD_CHANGE_BOUNDS: (f64, f64) = (2.0 / 3.0, 1.5);

/// Whether the load changed by more than half or a third between the windows.
pub(crate) fn load_changed(ratio: f64) -> bool {
    !(LOAD_CHANGE_BOUNDS.0..=LOAD_CHANGE_BOUNDS.1).contains(&ratio)
}
/// The smallest shift worth a verdict, relative to the before window's median: a
/// significant but tiny shift (drift over a long window, a 2% wobble in a latency) is
/// reported as no significant change. It also keeps the false-positive rate of many
/// repeated no-effect changes well under `ALPHA`.
pub(crate) const MIN_RELATIVE_EFFECT: f64 = 0.10;
/// The smallest shift worth a verdict when the load itself changed between the windows
/// (see [`load_changed`]): a ratio or a latency moves a little with its load alone (one
/// flow instead of two retransmits a little more per segment), so under a load change
/// only a shift of a quarter of the before median is claimed.
pub(crate) const MIN_RELATIVE_EFFECT_UNDER_LOAD_CHANGE: f64 = 0.25;
/// The 97.5% quantile of the standard normal distribution.
const Z_975: f64 = 1.959_963_984_540_054;

/// The answer for one signal of one workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Improved,
    Regressed,
    #[serde(rename = "no significant change")]
    NoSignificantChange,
    #[serde(rename = "insufficient data")]
    InsufficientData,
}

/// A comparison of two windows (or of two groups, interval by interval).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    /// Hodges-Lehmann estimate of `after - before` (of `treated - control` for paired
    /// samples).
    pub effect: f64,
    /// 95% confidence interval of the effect.
    pub ci95: [f64; 2],
    /// Two-sided p-value of the Mann-Whitney U test (of the signed-rank test for paired
    /// samples).
    pub p_value: f64,
    pub verdict: Verdict,
}

/// Compares `after` with `before` for a signal where lower is better (drops, latency,
/// throttling) or, with `lower_is_better = false`, where higher is better (throughput).
pub(crate) fn compare(before: &[f64], after: &[f64], lower_is_better: bool) -> Comparison {
    compare_against(before, after, median(before), lower_is_better)
}

/// As [`compare`], with the minimum relevant effect taken relative to `reference`
/// rather than to `before`'s median (the fleet view compares differences, whose median
/// says nothing about the signal's scale).
pub(crate) fn compare_against(
    before: &[f64],
    after: &[f64],
    reference: f64,
    lower_is_better: bool,
) -> Comparison {
    compare_with_floor(
        before,
        after,
        reference,
        MIN_RELATIVE_EFFECT,
        lower_is_better,
    )
}

/// As [`compare_against`], with the smallest relevant shift `min_relative` of
/// `reference`.
pub(crate) fn compare_with_floor(
    before: &[f64],
    after: &[f64],
    reference: f64,
    min_relative: f64,
    lower_is_better: bool,
) -> Comparison {
    if before.len() < MIN_SAMPLES || after.len() < MIN_SAMPLES {
        return Comparison::INSUFFICIENT;
    }
    Comparison::of(
        mann_whitney_p(before, after),
        hodges_lehmann(before, after),
        min_relative * reference.abs(),
        lower_is_better,
    )
}

/// Paired samples: `differences` are one `treated - control` per interval. The
/// signed-rank test and the one-sample Hodges-Lehmann shift, with the verdict's rule of
/// [`compare`]: a shift below [`MIN_RELATIVE_EFFECT`] of `reference` (the control
/// group's median) is no significant change.
pub(crate) fn compare_paired(
    differences: &[f64],
    reference: f64,
    lower_is_better: bool,
) -> Comparison {
    if differences.len() < MIN_SAMPLES {
        return Comparison::INSUFFICIENT;
    }
    Comparison::of(
        signed_rank_p(differences),
        hodges_lehmann_one_sample(differences),
        MIN_RELATIVE_EFFECT * reference.abs(),
        lower_is_better,
    )
}

impl Comparison {
    /// Too few samples on a side: no effect, no p, no verdict.
    const INSUFFICIENT: Self = Self {
        effect: f64::NAN,
        ci95: [f64::NAN, f64::NAN],
        p_value: f64::NAN,
        verdict: Verdict::InsufficientData,
    };

    /// A test's p and shift, judged on a shift of at least `floor`.
    fn of(
        p_value: f64,
        (effect, ci95): (f64, [f64; 2]),
        floor: f64,
        lower_is_better: bool,
    ) -> Self {
        Self {
            effect,
            ci95,
            p_value,
            verdict: verdict(p_value, effect, floor, lower_is_better),
        }
    }
}

/// Significant at [`ALPHA`] and a shift of at least `floor`, or no significant change.
fn verdict(p_value: f64, effect: f64, floor: f64, lower_is_better: bool) -> Verdict {
    if p_value >= ALPHA || effect == 0.0 || effect.abs() < floor {
        Verdict::NoSignificantChange
    } else if (effect < 0.0) == lower_is_better {
        Verdict::Improved
    } else {
        Verdict::Regressed
    }
}

/// The median (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Two-sided p-value of the Mann-Whitney U test (normal approximation with tie
/// correction and continuity correction).
pub(crate) fn mann_whitney_p(x: &[f64], y: &[f64]) -> f64 {
    let Some(u) = RankSum::of(x, y) else {
        return 1.0;
    };
    let z = ((u.u - u.mean).abs() - 0.5).max(0.0) / u.variance.sqrt();
    (2.0 * (1.0 - normal_cdf(z))).clamp(0.0, 1.0)
}

/// One-sided p-value of the Mann-Whitney U test that `y` lies below `x` (`y_lower`) or
/// above it, from the same normal approximation with the continuity correction toward
/// the null (as R's `wilcox.test(x, y, alternative = "greater" | "less", exact = FALSE)`):
/// half the two-sided p when the samples lean the tested way, above one half when they
/// lean the other.
pub(crate) fn mann_whitney_one_sided_p(x: &[f64], y: &[f64], y_lower: bool) -> f64 {
    let Some(u) = RankSum::of(x, y) else {
        return 1.0;
    };
    // U counts the pairs in which x is the larger: large when y lies below x.
    let lean = if y_lower { u.u - u.mean } else { u.mean - u.u };
    let z = (lean - 0.5) / u.variance.sqrt();
    (1.0 - normal_cdf(z)).clamp(0.0, 1.0)
}

/// The Mann-Whitney U statistic of `x` against `y`, with its mean and tie-corrected
/// variance under the null.
struct RankSum {
    u: f64,
    mean: f64,
    variance: f64,
}

impl RankSum {
    /// `None` when the variance is zero (every value tied): no evidence either way.
    fn of(x: &[f64], y: &[f64]) -> Option<Self> {
        let (n1, n2) = (x.len() as f64, y.len() as f64);
        let n = n1 + n2;
        let mut all: Vec<(f64, bool)> = x
            .iter()
            .map(|&v| (v, true))
            .chain(y.iter().map(|&v| (v, false)))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Average ranks over ties; sum of t^3 - t for the variance correction.
        let mut rank_sum_x = 0.0;
        let mut ties = 0.0;
        let mut i = 0;
        while i < all.len() {
            let mut j = i;
            while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
                j += 1;
            }
            let rank = (i + j) as f64 / 2.0 + 1.0;
            let t = (j - i + 1) as f64;
            ties += t * t * t - t;
            rank_sum_x += all[i..=j].iter().filter(|(_, from_x)| *from_x).count() as f64 * rank;
            i = j + 1;
        }
        let variance = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
        (variance > 0.0).then(|| Self {
            u: rank_sum_x - n1 * (n1 + 1.0) / 2.0,
            mean: n1 * n2 / 2.0,
            variance,
        })
    }
}

/// Hodges-Lehmann estimate of `y - x` (the median of all pairwise differences) and its
/// 95% confidence interval from the order statistics of those differences.
pub(crate) fn hodges_lehmann(x: &[f64], y: &[f64]) -> (f64, [f64; 2]) {
    let mut differences: Vec<f64> = y
        .iter()
        .flat_map(|&b| x.iter().map(move |&a| b - a))
        .collect();
    differences.sort_by(f64::total_cmp);
    let m = differences.len();
    let median = if m % 2 == 1 {
        differences[m / 2]
    } else {
        (differences[m / 2 - 1] + differences[m / 2]) / 2.0
    };
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let spread = (n1 * n2 * (n1 + n2 + 1.0) / 12.0).sqrt();
    let k = ((n1 * n2 / 2.0 - Z_975 * spread).floor() as usize).clamp(1, m);
    let ci = [differences[k - 1], differences[m - k]];
    (median, ci)
}

/// Two-sided p-value of Wilcoxon's signed-rank test of `differences` against zero:
/// zeros are dropped (Wilcoxon's rule), tied absolute values share their mean rank, and
/// the normal approximation has the tie and continuity corrections (as R's
/// `wilcox.test(d, exact = FALSE)`).
pub(crate) fn signed_rank_p(differences: &[f64]) -> f64 {
    let mut nonzero: Vec<f64> = differences.iter().copied().filter(|d| *d != 0.0).collect();
    if nonzero.is_empty() {
        return 1.0;
    }
    nonzero.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    let n = nonzero.len() as f64;
    // The sum of the ranks of the positive differences; sum of t^3 - t over ties.
    let mut positive_ranks = 0.0;
    let mut ties = 0.0;
    let mut i = 0;
    while i < nonzero.len() {
        let mut j = i;
        while j + 1 < nonzero.len() && nonzero[j + 1].abs() == nonzero[i].abs() {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        positive_ranks += nonzero[i..=j].iter().filter(|d| **d > 0.0).count() as f64 * rank;
        i = j + 1;
    }
    let mean = n * (n + 1.0) / 4.0;
    let variance = n * (n + 1.0) * (2.0 * n + 1.0) / 24.0 - ties / 48.0;
    if variance <= 0.0 {
        return 1.0;
    }
    let distance = ((positive_ranks - mean).abs() - 0.5).max(0.0);
    (2.0 * (1.0 - normal_cdf(distance / variance.sqrt()))).clamp(0.0, 1.0)
}

/// The one-sample Hodges-Lehmann estimate of the centre of `differences` (the median of
/// the Walsh averages, `(d_i + d_j) / 2` for `i <= j`) and its 95% confidence interval
/// from their order statistics, as [`hodges_lehmann`] does for two samples.
pub(crate) fn hodges_lehmann_one_sample(differences: &[f64]) -> (f64, [f64; 2]) {
    let mut walsh: Vec<f64> = differences
        .iter()
        .enumerate()
        .flat_map(|(i, &a)| differences[i..].iter().map(move |&b| f64::midpoint(a, b)))
        .collect();
    walsh.sort_by(f64::total_cmp);
    let m = walsh.len();
    if m == 0 {
        return (f64::NAN, [f64::NAN, f64::NAN]);
    }
    let n = differences.len() as f64;
    let spread = (n * (n + 1.0) * (2.0 * n + 1.0) / 24.0).sqrt();
    let k = ((m as f64 / 2.0 - Z_975 * spread).floor().max(1.0) as usize).min(m);
    (median(&walsh), [walsh[k - 1], walsh[m - k]])
}

/// Standard normal CDF, through the complementary error function.
pub(crate) fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// `erfc` with fractional error below 1.2e-7 everywhere (Numerical Recipes' Chebyshev
/// fit), plenty for p-values.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let polynomial = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * polynomial.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_shift_is_claimed_only_while_the_load_holds() {
        // 15% up, clearly apart: claimed at the usual floor, not at the load-change one.
        let before = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01, 0.99];
        let after = before.map(|v| v * 1.15);
        let at = |floor| compare_with_floor(&before, &after, 1.0, floor, true).verdict;
        assert_eq!(at(MIN_RELATIVE_EFFECT), Verdict::Regressed);
        assert_eq!(
            at(MIN_RELATIVE_EFFECT_UNDER_LOAD_CHANGE),
            Verdict::NoSignificantChange
        );
    }

    #[test]
    fn normal_cdf_matches_tables() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-2.575_829) - 0.005).abs() < 1e-6);
    }

    #[test]
    fn mann_whitney_matches_the_textbook_approximation() {
        // R: wilcox.test(1:5, 6:10, exact = FALSE, correct = TRUE) -> p = 0.01219.
        let p = mann_whitney_p(&[1.0, 2.0, 3.0, 4.0, 5.0], &[6.0, 7.0, 8.0, 9.0, 10.0]);
        assert!((p - 0.012186).abs() < 1e-5, "{p}");
        // Identical samples: no evidence at all.
        assert_eq!(mann_whitney_p(&[3.0; 8], &[3.0; 8]), 1.0);
        // Symmetric: order of arguments does not matter.
        let (a, b) = (
            [1.0, 4.0, 2.0, 8.0, 5.0, 7.0],
            [3.0, 6.0, 9.0, 10.0, 11.0, 2.5],
        );
        assert!((mann_whitney_p(&a, &b) - mann_whitney_p(&b, &a)).abs() < 1e-12);
    }

    /// Hollander & Wolfe's depression scores (the example of R's `wilcox.test`): paired
    /// differences x - y of 9 patients.
    const DEPRESSION: [f64; 9] = [0.952, -0.147, 1.022, 0.43, 0.62, 0.59, 0.49, -0.08, 0.01];

    #[test]
    fn signed_rank_matches_the_textbook_approximation() {
        // V = 40 of 45; R: wilcox.test(x, y, paired = TRUE, exact = FALSE) -> p = 0.04401.
        let p = signed_rank_p(&DEPRESSION);
        assert!((p - 0.044_011).abs() < 1e-5, "{p}");
        // 1..10, all positive: V = 55, z = 2.7521, p = 0.005922.
        let all_up: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!((signed_rank_p(&all_up) - 0.005_922).abs() < 1e-5);
        // Zeros dropped, ties at their mean rank: V = 26.5 of 28, variance 35 - 36/48,
        // p = 2 (1 - Phi(12 / sqrt(34.25))) = 0.04032.
        let tied = [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, -1.0, 0.0];
        let p = signed_rank_p(&tied);
        assert!((p - 0.040_32).abs() < 1e-4, "{p}");
        // Symmetric in sign; nothing but zeros is no evidence.
        let negated = tied.map(|d| -d);
        assert!((signed_rank_p(&negated) - p).abs() < 1e-12);
        assert_eq!(signed_rank_p(&[0.0; 8]), 1.0);
    }

    #[test]
    fn one_sample_hodges_lehmann_is_the_median_of_walsh_averages() {
        // R: wilcox.test(x, y, paired = TRUE, conf.int = TRUE) -> (pseudo)median 0.46.
        let (shift, [lo, hi]) = hodges_lehmann_one_sample(&DEPRESSION);
        assert!((shift - 0.46).abs() < 1e-9, "{shift}");
        // 45 Walsh averages; k = floor(22.5 - 1.96 * sqrt(71.25)) = 5: the 5th and 41st.
        assert_eq!([lo, hi], [-0.035, 0.806]);
        // A clean shift of 10 over symmetric noise is found exactly.
        let shifted: Vec<f64> = (-10..=10).map(|i| 10.0 + f64::from(i) / 10.0).collect();
        let (shift, [lo, hi]) = hodges_lehmann_one_sample(&shifted);
        assert!(
            (shift - 10.0).abs() < 1e-12 && lo < 10.0 && 10.0 < hi,
            "{shift} [{lo}, {hi}]"
        );
    }

    #[test]
    fn paired_verdicts_follow_the_floor_of_the_control_median() {
        // A consistent 0.05 below a control at 1.0: significant, but under the 10% floor.
        let small: Vec<f64> = (0..20).map(|i| -0.05 + f64::from(i % 3) * 0.001).collect();
        let compared = compare_paired(&small, 1.0, true);
        assert!(compared.p_value < ALPHA, "{compared:?}");
        assert_eq!(compared.verdict, Verdict::NoSignificantChange);
        assert_eq!(compare_paired(&small, 0.2, true).verdict, Verdict::Improved);
        assert_eq!(
            compare_paired(&small, 0.2, false).verdict,
            Verdict::Regressed
        );
        assert_eq!(
            compare_paired(&small[..4], 0.2, true).verdict,
            Verdict::InsufficientData
        );
    }

    #[test]
    fn hodges_lehmann_finds_a_clean_shift() {
        let before: Vec<f64> = (1..=20).map(f64::from).collect();
        let after: Vec<f64> = before.iter().map(|v| v + 10.0).collect();
        let (shift, [lo, hi]) = hodges_lehmann(&before, &after);
        assert_eq!(shift, 10.0);
        assert!(lo < 10.0 && 10.0 < hi && lo > 0.0, "[{lo}, {hi}]");
    }

    #[test]
    fn verdicts() {
        let before: Vec<f64> = (0..30).map(|i| 10.0 + f64::from(i % 5)).collect();
        let lower: Vec<f64> = before.iter().map(|v| v - 8.0).collect();
        assert_eq!(compare(&before, &lower, true).verdict, Verdict::Improved);
        assert_eq!(compare(&lower, &before, true).verdict, Verdict::Regressed);
        assert_eq!(compare(&before, &lower, false).verdict, Verdict::Regressed);
        assert_eq!(
            compare(&before, &before, true).verdict,
            Verdict::NoSignificantChange
        );
        assert_eq!(
            compare(&before[..3], &lower, true).verdict,
            Verdict::InsufficientData
        );
        let json = serde_json::to_value(Verdict::NoSignificantChange).unwrap();
        assert_eq!(json, "no significant change");
    }

    #[test]
    fn no_effect_rarely_looks_like_one() {
        // 200 comparisons of two draws from the same distribution (a fixed LCG): the
        // test should call about 5% of them significant, certainly not more than 10%.
        let mut state = 12345u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut significant = 0;
        for _ in 0..200 {
            let a: Vec<f64> = (0..30).map(|_| next()).collect();
            let b: Vec<f64> = (0..30).map(|_| next()).collect();
            if compare(&a, &b, true).verdict != Verdict::NoSignificantChange {
                significant += 1;
            }
        }
        assert!(significant <= 20, "{significant} of 200");
    }
}
