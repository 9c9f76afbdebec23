//! A cpu cgroup's own CFS bandwidth accounting and limit, v1 or v2.

use std::{fs, path::Path};

/// `cpu.stat` counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuAccounting {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
    /// CPU time used: `usage_usec` of v2's `cpu.stat`, or v1's `cpuacct.usage` where
    /// the cpuacct controller is found beside (`None` without either).
    pub usage_ns: Option<u64>,
}

impl CpuAccounting {
    /// Reads `DIR/cpu.stat`: `throttled_time` (ns) on v1, `throttled_usec` on v2.
    pub fn read(dir: &Path) -> Option<Self> {
        Self::read_with_usage(dir, None)
    }

    /// As [`read`](Self::read), with the usage on v1 from `cpuacct.usage` in `DIR`
    /// (`cpu,cpuacct` mounted together) or in `cpuacct_dir` (the same cgroup in a
    /// hierarchy of its own).
    pub fn read_with_usage(dir: &Path, cpuacct_dir: Option<&Path>) -> Option<Self> {
        let mut out = Self::parse(&fs::read_to_string(dir.join("cpu.stat")).ok()?)?;
        if out.usage_ns.is_none() {
            out.usage_ns = std::iter::once(dir)
                .chain(cpuacct_dir)
                .find_map(|d| fs::read_to_string(d.join("cpuacct.usage")).ok())
                .and_then(|t| t.trim().parse().ok());
        }
        Some(out)
    }

    pub fn parse(text: &str) -> Option<Self> {
        let mut out = Self::default();
        let mut seen = false;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<u64>() else {
                continue;
            };
            match key {
                "nr_periods" => {
                    out.periods = value;
                    seen = true;
                }
                "nr_throttled" => out.throttled_periods = value,
                "throttled_time" => out.throttled_ns = value,
                "throttled_usec" => out.throttled_ns = value * 1000,
                "usage_usec" => out.usage_ns = Some(value * 1000),
                _ => {}
            }
        }
        seen.then_some(out)
    }

    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            periods: self.periods.saturating_sub(earlier.periods),
            throttled_periods: self
                .throttled_periods
                .saturating_sub(earlier.throttled_periods),
            throttled_ns: self.throttled_ns.saturating_sub(earlier.throttled_ns),
            usage_ns: self
                .usage_ns
                .zip(earlier.usage_ns)
                .map(|(now, then)| now.saturating_sub(then)),
        }
    }
}

/// The configured CFS bandwidth limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuLimit {
    /// `None`: no quota (`max` on v2, `-1` on v1).
    pub quota_us: Option<u64>,
    pub period_us: u64,
}

impl CpuLimit {
    /// `cpu.max` (v2) or `cpu.cfs_quota_us` + `cpu.cfs_period_us` (v1).
    pub fn read(dir: &Path) -> Option<Self> {
        if let Ok(max) = fs::read_to_string(dir.join("cpu.max")) {
            return Self::parse_v2(&max);
        }
        let quota = fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
        let period = fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
        Self::parse_v1(&quota, &period)
    }

    pub fn parse_v2(text: &str) -> Option<Self> {
        let mut fields = text.split_whitespace();
        let quota = fields.next()?;
        let period_us = fields.next()?.parse().ok()?;
        let quota_us = if quota == "max" {
            None
        } else {
            Some(quota.parse().ok()?)
        };
        Some(Self {
            quota_us,
            period_us,
        })
    }

    pub fn parse_v1(quota: &str, period: &str) -> Option<Self> {
        let quota: i64 = quota.trim().parse().ok()?;
        Some(Self {
            quota_us: u64::try_from(quota).ok(),
            period_us: period.trim().parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_stat() {
        let v1 = "nr_periods 21\nnr_throttled 20\nthrottled_time 1600000000\nnr_bursts 0\n";
        assert_eq!(
            CpuAccounting::parse(v1),
            Some(CpuAccounting {
                periods: 21,
                throttled_periods: 20,
                throttled_ns: 1_600_000_000,
                usage_ns: None,
            })
        );
        let v2 = "usage_usec 5\nuser_usec 3\nsystem_usec 2\nnr_periods 4\nnr_throttled 1\nthrottled_usec 80000\n";
        assert_eq!(CpuAccounting::parse(v2).unwrap().throttled_ns, 80_000_000);
        assert_eq!(CpuAccounting::parse(v2).unwrap().usage_ns, Some(5_000));
        assert_eq!(CpuAccounting::parse("garbage\n"), None);
        // v2 without the cpu controller enabled has no nr_periods.
        assert_eq!(CpuAccounting::parse("usage_usec 5\n"), None);
    }

    #[test]
    fn parses_limits() {
        assert_eq!(
            CpuLimit::parse_v2("20000 100000\n"),
            Some(CpuLimit {
                quota_us: Some(20_000),
                period_us: 100_000
            })
        );
        assert_eq!(CpuLimit::parse_v2("max 100000\n").unwrap().quota_us, None);
        assert_eq!(
            CpuLimit::parse_v1("-1\n", "100000\n").unwrap().quota_us,
            None
        );
        assert_eq!(
            CpuLimit::parse_v1("20000\n", "100000\n").unwrap().quota_us,
            Some(20_000)
        );
        assert_eq!(CpuLimit::parse_v2("bogus"), None);
    }
}
