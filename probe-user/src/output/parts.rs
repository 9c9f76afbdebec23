//! What a signal contributes to the views, as plain values: `top`'s columns and cells,
//! its part of a workload's detail view, and helpers for its `snapshot` table. A leaf
//! module: the signals fill these in, `views::top` and `views::table` lay them out.

use probe_common::LatencyHistogram;

/// One of `top`'s columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopColumn {
    /// Its name for `top --sort`.
    pub name: &'static str,
    pub title: &'static str,
    /// Width in the plain table.
    pub width: usize,
}

/// One cell of `top`'s table.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// A number, sorted the worst (highest) first; `None` sorts last and shows `-`.
    Number { value: Option<f64>, text: String },
    /// A name, sorted alphabetically from the end (an empty cell last).
    Text(Option<String>),
}

impl Cell {
    /// Events per second: `0`, one decimal under 10, none above.
    pub fn rate(per_s: f64) -> Self {
        let text = if per_s == 0.0 {
            "0".to_string()
        } else if per_s < 10.0 {
            format!("{per_s:.1}")
        } else {
            format!("{per_s:.0}")
        };
        Self::Number {
            value: Some(per_s),
            text,
        }
    }

    /// Milliseconds, one decimal, after an optional prefix (a device name).
    pub fn ms(prefix: Option<&str>, value: Option<f64>) -> Self {
        Self::Number {
            value,
            text: match (prefix, value) {
                (_, None) => "-".to_string(),
                (Some(prefix), Some(ms)) => format!("{prefix} {ms:.1}ms"),
                (None, Some(ms)) => format!("{ms:.1}ms"),
            },
        }
    }

    /// A percentage without decimals.
    pub fn percent(value: Option<f64>) -> Self {
        Self::Number {
            value,
            text: value.map_or_else(|| "-".to_string(), |p| format!("{p:.0}%")),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Self::Number { text, .. } => text.clone(),
            Self::Text(text) => text.clone().unwrap_or_else(|| "-".to_string()),
        }
    }

    /// The order `top` sorts by: numbers descending, names reversed.
    pub fn compare(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (Self::Number { value: a, .. }, Self::Number { value: b, .. }) => {
                b.unwrap_or(-1.0).total_cmp(&a.unwrap_or(-1.0))
            }
            (Self::Text(a), Self::Text(b)) => a.cmp(b).reverse(),
            _ => std::cmp::Ordering::Equal,
        }
    }
}

/// What one workload's detail view draws: totals since `top` started, then histograms.
#[derive(Debug, Clone, Default)]
pub struct Detail {
    pub name: String,
    pub cgroup_path: Option<String>,
    /// One phrase per signal (`2 retransmits`, `drops: NO_SOCKET 3`).
    pub totals: Vec<String>,
    /// Titled bars: `(label, count)` per non-empty bucket.
    pub histograms: Vec<(String, Vec<(String, u64)>)>,
}

/// Bars for the non-empty buckets of a histogram: `(label, count)` with the label as a
/// microsecond/millisecond range.
pub(crate) fn bars<const N: usize, const S: u32>(h: &LatencyHistogram<N, S>) -> Vec<(String, u64)> {
    h.buckets
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| {
            let (lo, hi) = LatencyHistogram::<N, S>::bounds_us(i);
            (format!("{}-{}", duration_label(lo), duration_label(hi)), *n)
        })
        .collect()
}

fn duration_label(us: u64) -> String {
    if us >= 1000 {
        let ms = us as f64 / 1000.0;
        if ms >= 100.0 {
            format!("{ms:.0}ms")
        } else {
            format!("{ms:.1}ms")
        }
    } else {
        format!("{us}us")
    }
}

/// Keeps the end of long cgroup paths, where the distinguishing part is.
pub(crate) fn truncate_left(s: &str, width: usize) -> String {
    let count = s.chars().count();
    if count <= width {
        return s.to_string();
    }
    let tail: String = s.chars().skip(count - (width - 1)).collect();
    format!("…{tail}")
}

/// `-` for an absent value, else the value with `decimals`.
pub(crate) fn or_dash(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}
