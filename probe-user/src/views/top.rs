//! `tuneprobe top`: per-workload rates over the last interval, from two consecutive
//! cumulative reports of one collector window (differences are exact: no counts fall
//! between two reads). The workload's column comes first; every other column is a
//! signal's ([`Source::TOP_COLUMNS`](crate::signals::Source::TOP_COLUMNS)).

use std::{cmp::Ordering, collections::HashMap, fmt::Write as _};

pub(crate) use crate::output::parts::{Cell, Detail, TopColumn};
use crate::{
    report::{Snapshot, Workload},
    signals,
    workloads::identity::Identity,
};

/// One workload's line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    /// Stable identity across refreshes: the cgroup path, else the display name.
    pub key: String,
    pub workload: Identity,
    pub name: String,
    /// The signals' cells, in [`columns`]' order after the workload's.
    pub cells: Vec<Cell>,
}

/// The workload's column.
pub(crate) const WORKLOAD: TopColumn = TopColumn {
    name: "workload",
    title: "WORKLOAD",
    width: 48,
};

/// Every column, in display order: the workload's, then the signals'. A column is
/// referred to by its index here.
pub(crate) fn columns() -> Vec<TopColumn> {
    let mut all = vec![WORKLOAD];
    all.extend(signals::top_columns());
    all
}

/// The index of the column `top --sort` calls `name`.
pub(crate) fn column_named(name: &str) -> Option<usize> {
    columns().iter().position(|c| c.name == name)
}

impl Row {
    /// Column `column`'s text.
    pub(crate) fn cell(&self, column: usize) -> String {
        match column.checked_sub(1) {
            None => self.name.clone(),
            Some(i) => self
                .cells
                .get(i)
                .map_or_else(|| "-".to_string(), Cell::text),
        }
    }

    /// The worst first for numbers, ascending for names; then by name.
    pub(crate) fn compare(&self, other: &Self, column: usize) -> Ordering {
        match column.checked_sub(1) {
            None => self.name.cmp(&other.name),
            Some(i) => match (self.cells.get(i), other.cells.get(i)) {
                (Some(a), Some(b)) => a.compare(b),
                _ => Ordering::Equal,
            },
        }
        .then_with(|| self.name.cmp(&other.name))
    }
}

/// Matches `filter` against namespace, pod name, pod UID and the workload's name:
/// `ns/` selects a namespace exactly, anything else is a substring.
pub(crate) fn matches(row: &Row, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let w = &row.workload;
    if let Some(namespace) = filter.strip_suffix('/') {
        return w.namespace.as_deref() == Some(namespace);
    }
    [&w.namespace, &w.pod, &w.pod_uid]
        .iter()
        .any(|field| field.as_deref().is_some_and(|f| f.contains(filter)))
        || row.name.contains(filter)
}

/// Turns consecutive cumulative reports into rows.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    previous: HashMap<String, Workload>,
    /// The latest cumulative report per key, for the detail view.
    latest: HashMap<String, Workload>,
}

fn key_of(workload: &Workload) -> String {
    workload
        .identity
        .cgroup_path
        .clone()
        .unwrap_or_else(|| workload.identity.display_name())
}

impl Rates {
    /// Rows for the interval since the previous call, `seconds` long.
    pub(crate) fn update(&mut self, snapshot: &Snapshot, seconds: f64) -> Vec<Row> {
        let seconds = seconds.max(1e-3);
        let current: HashMap<String, Workload> = snapshot
            .workloads
            .iter()
            .map(|w| (key_of(w), w.clone()))
            .collect();
        let empty = Workload::default();
        let rows = current
            .iter()
            .map(|(key, now)| {
                let before = self.previous.get(key).unwrap_or(&empty);
                Row {
                    key: key.clone(),
                    workload: now.identity.clone(),
                    name: now.identity.display_name(),
                    cells: now.signals.top_cells(&before.signals, seconds),
                }
            })
            .collect();
        self.previous = current.clone();
        self.latest = current;
        rows
    }

    /// Totals and distributions since `top` started, for one workload.
    pub(crate) fn detail(&self, key: &str) -> Option<Detail> {
        let w = self.latest.get(key)?;
        let mut detail = Detail {
            name: w.identity.display_name(),
            cgroup_path: w.identity.cgroup_path.clone(),
            ..Detail::default()
        };
        w.signals.top_detail(&mut detail);
        Some(detail)
    }
}

/// Sorts and filters rows for display.
pub(crate) fn arrange(rows: &mut Vec<Row>, sort: usize, reverse: bool, filter: &str) {
    rows.retain(|r| matches(r, filter));
    rows.sort_by(|a, b| {
        let order = a.compare(b, sort);
        if reverse { order.reverse() } else { order }
    });
}

/// The plain table (`--once`, or when stdout is not a terminal).
pub(crate) fn table(rows: &[Row], seconds: f64) -> String {
    let columns = columns();
    let mut out = String::new();
    let _ = writeln!(out, "tuneprobe top: rates over the last {seconds:.1}s");
    let header: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| pad(c.title, c.width, i == 0))
        .collect();
    let _ = writeln!(out, "{}", header.join(" ").trim_end());
    for row in rows {
        let cells: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| pad(&row.cell(i), c.width, i == 0))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        output::parts::bars, signals::cpu_throttle::CpuReport, workloads::identity::Identity,
    };

    fn workload(path: &str, pod: &str, drops: u64, reason: &str) -> Workload {
        let mut w = Workload {
            identity: Identity {
                cgroup_path: Some(path.to_string()),
                namespace: Some("shop".to_string()),
                pod: Some(pod.to_string()),
                ..Identity::default()
            },
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
        let drops = column_named("drops").unwrap();
        assert_eq!(first[0].cell(drops), "10");
        let mut later = workload("/a", "api", 30, "NO_SOCKET");
        later.signals.cpu = Some(Box::new(CpuReport {
            quota_ms: Some(20.0),
            periods: 10,
            throttled_periods: 5,
            ..Default::default()
        }));
        let second = rates.update(&snapshot(vec![later]), 2.0);
        assert_eq!(second[0].cell(drops), "10");
        assert_eq!(
            second[0].cell(column_named("top-drop").unwrap()),
            "NO_SOCKET"
        );
        assert_eq!(second[0].cell(column_named("throttled").unwrap()), "50%");
        let detail = rates.detail("/a").unwrap();
        assert!(
            detail.totals.contains(&"drops: NO_SOCKET 30".to_string()),
            "{detail:?}"
        );
        assert_eq!(detail.histograms[0].0, "CPU throttle stalls");
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
        let drops = column_named("drops").unwrap();
        arrange(&mut rows, drops, false, "");
        let names: Vec<&str> = rows
            .iter()
            .map(|r| r.workload.pod.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["db", "web", "api"]);
        arrange(&mut rows, drops, true, "");
        assert_eq!(rows[0].workload.pod.as_deref(), Some("api"));
        arrange(&mut rows, 0, false, "we");
        assert_eq!(rows.len(), 1);
        let mut all = rates.update(&snapshot(vec![workload("/a", "api", 5, "X")]), 1.0);
        arrange(&mut all, drops, false, "shop/");
        assert_eq!(all.len(), 1);
        arrange(&mut all, drops, false, "other/");
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
            [
                "shop/api",
                "0",
                "7.0",
                "NO_SOCKET",
                "0",
                "-",
                "-",
                "-",
                "0",
                "0",
                "-"
            ]
        );
    }

    #[test]
    fn columns_keep_their_published_order_and_names_are_distinct() {
        let titles: Vec<&str> = columns().iter().map(|c| c.title).collect();
        assert_eq!(
            titles,
            [
                "WORKLOAD",
                "RETX/s",
                "DROPS/s",
                "TOP DROP",
                "DNS/s",
                "DNS p99",
                "BLOCK p99",
                "THROTTLED",
                "CONN/s",
                "CONNFAIL/s",
                "SRTT p50"
            ]
        );
        let mut names: Vec<&str> = columns().iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), columns().len());
    }

    #[test]
    fn bars_label_bucket_ranges() {
        use probe_common::LatencyHistogram;

        let mut h = LatencyHistogram::<100, 2>::ZERO;
        h.buckets[LatencyHistogram::<100, 2>::bucket(1_500_000)] = 3;
        let bars = bars(&h);
        assert_eq!(bars.len(), 1);
        assert_eq!(bars[0].1, 3);
        assert!(bars[0].0.contains("ms"), "{bars:?}");
    }
}
