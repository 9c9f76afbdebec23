//! `tuneprobe top`: per-workload rates over the last interval, from two consecutive
//! cumulative reports of one collector window (differences are exact: no counts fall
//! between two reads).

use std::{cmp::Ordering, collections::HashMap, fmt::Write as _};

use probe_common::{DnsHistogram, LatencyHistogram};

use crate::{
    report::{Snapshot, Workload},
    signals::{
        block_io,
        cpu_throttle::CpuReport,
        dns::DnsReport,
        histogram::{self, quantile_ms},
    },
};

/// One workload's line.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Stable identity across refreshes: the cgroup path, else the display name.
    pub key: String,
    pub name: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub retransmits_per_s: f64,
    pub drops_per_s: f64,
    /// Most frequent drop reason since `top` started.
    pub top_drop: Option<String>,
    pub dns_per_s: f64,
    pub dns_p99_ms: Option<f64>,
    /// The device with the slowest p99 service time over the interval, and that p99.
    pub block_p99: Option<(String, f64)>,
    /// Throttled periods over periods in the interval, from `cpu.stat`.
    pub throttled_pct: Option<f64>,
}

/// Columns, in display order; each can be sorted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Workload,
    Retransmits,
    Drops,
    TopDrop,
    Dns,
    DnsP99,
    BlockP99,
    Throttled,
}

impl Column {
    pub const ALL: [Self; 8] = [
        Self::Workload,
        Self::Retransmits,
        Self::Drops,
        Self::TopDrop,
        Self::Dns,
        Self::DnsP99,
        Self::BlockP99,
        Self::Throttled,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Self::Workload => "WORKLOAD",
            Self::Retransmits => "RETX/s",
            Self::Drops => "DROPS/s",
            Self::TopDrop => "TOP DROP",
            Self::Dns => "DNS/s",
            Self::DnsP99 => "DNS p99",
            Self::BlockP99 => "BLOCK p99",
            Self::Throttled => "THROTTLED",
        }
    }

    /// Width in the plain table (the workload column takes what is left).
    pub fn width(self) -> usize {
        match self {
            Self::Workload => 48,
            Self::TopDrop => 18,
            Self::BlockP99 => 16,
            _ => 9,
        }
    }

    /// The column's text for a row.
    pub fn cell(self, row: &Row) -> String {
        let rate = |v: f64| {
            if v == 0.0 {
                "0".to_string()
            } else if v < 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        };
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}ms"));
        match self {
            Self::Workload => row.name.clone(),
            Self::Retransmits => rate(row.retransmits_per_s),
            Self::Drops => rate(row.drops_per_s),
            Self::TopDrop => row.top_drop.clone().unwrap_or_else(|| "-".to_string()),
            Self::Dns => rate(row.dns_per_s),
            Self::DnsP99 => ms(row.dns_p99_ms),
            Self::BlockP99 => row
                .block_p99
                .as_ref()
                .map_or("-".to_string(), |(dev, p99)| format!("{dev} {p99:.1}ms")),
            Self::Throttled => row
                .throttled_pct
                .map_or("-".to_string(), |p| format!("{p:.0}%")),
        }
    }

    /// Descending for numbers (the worst first), ascending for names.
    pub fn compare(self, a: &Row, b: &Row) -> Ordering {
        let num = |v: &Row| -> f64 {
            match self {
                Self::Retransmits => v.retransmits_per_s,
                Self::Drops => v.drops_per_s,
                Self::Dns => v.dns_per_s,
                Self::DnsP99 => v.dns_p99_ms.unwrap_or(-1.0),
                Self::BlockP99 => v.block_p99.as_ref().map_or(-1.0, |(_, p)| *p),
                Self::Throttled => v.throttled_pct.unwrap_or(-1.0),
                Self::Workload | Self::TopDrop => 0.0,
            }
        };
        match self {
            Self::Workload => a.name.cmp(&b.name),
            Self::TopDrop => a.top_drop.cmp(&b.top_drop).reverse(),
            _ => num(b).total_cmp(&num(a)),
        }
        .then_with(|| a.name.cmp(&b.name))
    }
}

/// Matches `filter` against namespace, pod name, pod UID and the workload's name:
/// `ns/` selects a namespace exactly, anything else is a substring.
pub fn matches(row: &Row, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    if let Some(namespace) = filter.strip_suffix('/') {
        return row.namespace.as_deref() == Some(namespace);
    }
    [&row.namespace, &row.pod, &row.pod_uid]
        .iter()
        .any(|field| field.as_deref().is_some_and(|f| f.contains(filter)))
        || row.name.contains(filter)
}

/// What one workload's detail view draws.
#[derive(Debug, Clone, Default)]
pub struct Detail {
    pub name: String,
    pub cgroup_path: Option<String>,
    pub drops_by_reason: Vec<(String, u64)>,
    pub retransmits: u64,
    pub dns_queries: u64,
    pub dns: Option<DnsHistogram>,
    pub block: Vec<(String, LatencyHistogram)>,
    pub stall: Option<LatencyHistogram>,
}

/// Turns consecutive cumulative reports into rows.
#[derive(Debug, Default)]
pub struct Rates {
    previous: HashMap<String, Workload>,
    /// The latest cumulative report per key, for the detail view.
    latest: HashMap<String, Workload>,
}

fn key_of(workload: &Workload) -> String {
    workload
        .cgroup_path
        .clone()
        .unwrap_or_else(|| workload.display_name())
}

impl Rates {
    /// Rows for the interval since the previous call, `seconds` long.
    pub fn update(&mut self, snapshot: &Snapshot, seconds: f64) -> Vec<Row> {
        let seconds = seconds.max(1e-3);
        let current: HashMap<String, Workload> = snapshot
            .workloads
            .iter()
            .map(|w| (key_of(w), w.clone()))
            .collect();
        let empty = Workload::default();
        let rows = current
            .iter()
            .map(|(key, now)| row(key, now, self.previous.get(key).unwrap_or(&empty), seconds))
            .collect();
        self.previous = current.clone();
        self.latest = current;
        rows
    }

    /// Totals and distributions since `top` started, for one workload.
    pub fn detail(&self, key: &str) -> Option<Detail> {
        let w = self.latest.get(key)?;
        let signals = &w.signals;
        let mut drops: Vec<(String, u64)> = signals
            .drops
            .by_reason
            .iter()
            .map(|(r, n)| (r.clone(), *n))
            .collect();
        drops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut devices: Vec<&str> = signals.block.iter().map(|b| b.device.as_str()).collect();
        devices.sort_unstable();
        devices.dedup();
        let block = devices
            .into_iter()
            .map(|d| {
                (
                    d.to_string(),
                    block_io::total(&signals.block, Some(d), false),
                )
            })
            .collect();
        Some(Detail {
            name: w.display_name(),
            cgroup_path: w.cgroup_path.clone(),
            drops_by_reason: drops,
            retransmits: signals.tcp.retransmits,
            dns_queries: signals.dns.as_ref().map_or(0, |d| d.queries),
            dns: signals.dns.as_ref().map(DnsReport::latency),
            block,
            stall: signals.cpu.as_ref().map(|c| c.stall_histogram),
        })
    }
}

fn row(key: &str, now: &Workload, before: &Workload, seconds: f64) -> Row {
    let per_s = |now: u64, before: u64| now.saturating_sub(before) as f64 / seconds;
    let (now_s, before_s) = (&now.signals, &before.signals);
    let dns_p99_ms = now_s
        .dns
        .as_ref()
        .and_then(|d| quantile_ms(&DnsReport::latency_since(before_s.dns.as_ref(), d), 0.99));
    let mut worst: Option<(String, f64)> = None;
    for b in &now_s.block {
        let earlier = before_s
            .block
            .iter()
            .find(|e| e.device == b.device && e.op == b.op);
        let delta = match earlier {
            Some(e) => histogram::since(&b.service_histogram, &e.service_histogram),
            None => b.service_histogram,
        };
        if let Some(p99) = quantile_ms(&delta, 0.99)
            && worst.as_ref().is_none_or(|(_, w)| p99 > *w)
        {
            worst = Some((b.device.clone(), p99));
        }
    }
    let throttled_pct = now_s.cpu.as_ref().and_then(|c| {
        let (periods, throttled) = CpuReport::periods_since(before_s.cpu.as_ref(), c);
        c.quota_ms?;
        Some(if periods == 0 {
            0.0
        } else {
            100.0 * throttled as f64 / periods as f64
        })
    });
    Row {
        key: key.to_string(),
        name: now.display_name(),
        namespace: now.namespace.clone(),
        pod: now.pod.clone(),
        pod_uid: now.pod_uid.clone(),
        retransmits_per_s: per_s(now_s.tcp.retransmits, before_s.tcp.retransmits),
        drops_per_s: per_s(now_s.drops.total, before_s.drops.total),
        top_drop: now_s
            .drops
            .top_reason()
            .map(|(reason, _)| reason.to_string()),
        dns_per_s: per_s(
            now_s.dns.as_ref().map_or(0, |d| d.queries),
            before_s.dns.as_ref().map_or(0, |d| d.queries),
        ),
        dns_p99_ms,
        block_p99: worst,
        throttled_pct,
    }
}

/// Sorts and filters rows for display.
pub fn arrange(rows: &mut Vec<Row>, sort: Column, reverse: bool, filter: &str) {
    rows.retain(|r| matches(r, filter));
    rows.sort_by(|a, b| {
        let order = sort.compare(a, b);
        if reverse { order.reverse() } else { order }
    });
}

/// The plain table (`--once`, or when stdout is not a terminal).
pub fn table(rows: &[Row], seconds: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "tuneprobe top: rates over the last {seconds:.1}s");
    let header: Vec<String> = Column::ALL
        .iter()
        .map(|c| pad(c.title(), c.width(), *c == Column::Workload))
        .collect();
    let _ = writeln!(out, "{}", header.join(" ").trim_end());
    for row in rows {
        let cells: Vec<String> = Column::ALL
            .iter()
            .map(|c| pad(&c.cell(row), c.width(), *c == Column::Workload))
            .collect();
        let _ = writeln!(out, "{}", cells.join(" ").trim_end());
    }
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "(no workload with retransmits, drops, DNS, block IO or throttling yet)"
        );
    }
    out
}

/// Left-aligns names, right-aligns numbers; never cuts a name (the table stays
/// parseable by splitting on whitespace).
fn pad(text: &str, width: usize, left: bool) -> String {
    if left {
        format!("{text:<width$}")
    } else {
        format!("{text:>width$}")
    }
}

/// Bars for the non-empty buckets of a histogram: `(label, count)` with the label as a
/// microsecond/millisecond range.
pub fn bars<const N: usize, const S: u32>(h: &LatencyHistogram<N, S>) -> Vec<(String, u64)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::cpu_throttle::CpuReport;

    fn workload(path: &str, pod: &str, drops: u64, reason: &str) -> Workload {
        let mut w = Workload {
            cgroup_path: Some(path.to_string()),
            namespace: Some("shop".to_string()),
            pod: Some(pod.to_string()),
            ..Default::default()
        };
        w.signals.drops.add(reason, drops);
        w
    }

    fn snapshot(workloads: Vec<Workload>) -> Snapshot {
        Snapshot {
            duration_s: 1.0,
            probes: vec![],
            map_overflows: Default::default(),
            gc_deleted_entries: Default::default(),
            program_stats: vec![],
            workloads,
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let mut rates = Rates::default();
        let first = rates.update(&snapshot(vec![workload("/a", "api", 10, "NO_SOCKET")]), 1.0);
        assert_eq!(first[0].drops_per_s, 10.0);
        let mut later = workload("/a", "api", 30, "NO_SOCKET");
        later.signals.cpu = Some(CpuReport {
            quota_ms: Some(20.0),
            periods: 10,
            throttled_periods: 5,
            ..Default::default()
        });
        let second = rates.update(&snapshot(vec![later]), 2.0);
        assert_eq!(second[0].drops_per_s, 10.0);
        assert_eq!(second[0].top_drop.as_deref(), Some("NO_SOCKET"));
        assert_eq!(second[0].throttled_pct, Some(50.0));
        assert_eq!(
            rates.detail("/a").unwrap().drops_by_reason,
            vec![("NO_SOCKET".to_string(), 30)]
        );
    }

    #[test]
    fn sort_and_filter() {
        let mut rates = Rates::default();
        let mut rows = rates.update(
            &snapshot(vec![
                workload("/a", "api", 5, "NO_SOCKET"),
                workload("/b", "db", 50, "QDISC_DROP"),
                workload("/c", "web", 20, "NO_SOCKET"),
            ]),
            1.0,
        );
        arrange(&mut rows, Column::Drops, false, "");
        let names: Vec<&str> = rows.iter().map(|r| r.pod.as_deref().unwrap()).collect();
        assert_eq!(names, ["db", "web", "api"]);
        arrange(&mut rows, Column::Drops, true, "");
        assert_eq!(rows[0].pod.as_deref(), Some("api"));
        arrange(&mut rows, Column::Workload, false, "we");
        assert_eq!(rows.len(), 1);
        let mut all = rates.update(&snapshot(vec![workload("/a", "api", 5, "X")]), 1.0);
        arrange(&mut all, Column::Drops, false, "shop/");
        assert_eq!(all.len(), 1);
        arrange(&mut all, Column::Drops, false, "other/");
        assert!(all.is_empty());
    }

    #[test]
    fn plain_table_has_a_header_and_a_row_per_workload() {
        let mut rates = Rates::default();
        let rows = rates.update(&snapshot(vec![workload("/a", "api", 7, "NO_SOCKET")]), 1.0);
        let text = table(&rows, 1.0);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("WORKLOAD"));
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            cells,
            ["shop/api", "0", "7.0", "NO_SOCKET", "0", "-", "-", "-"]
        );
    }

    #[test]
    fn bars_label_bucket_ranges() {
        let mut h = LatencyHistogram::<100, 2>::ZERO;
        h.buckets[LatencyHistogram::<100, 2>::bucket(1_500_000)] = 3;
        let bars = bars(&h);
        assert_eq!(bars.len(), 1);
        assert_eq!(bars[0].1, 3);
        assert!(bars[0].0.contains("ms"), "{bars:?}");
    }
}
