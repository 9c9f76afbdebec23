//! `snapshot`'s table: the probes, then one section per signal with a row per workload.

use std::fmt::Write as _;

use crate::{
    report::{Snapshot, Workload, serde_name},
    signals::{
        block_io::BlockReport, cpu_throttle::CpuReport, dns::DnsReport, tcp_retransmit::TcpStats,
    },
};

/// `snapshot`'s table: probes first, then a section per signal with activity.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "tuneprobe snapshot over {:.1}s", snapshot.duration_s);
    for probe in &snapshot.probes {
        let state = match (&probe.attached, &probe.error) {
            (true, _) => "attached".to_string(),
            (false, Some(err)) => format!("OFF: {err}"),
            (false, None) => "OFF".to_string(),
        };
        let signal = serde_name(&probe.signal);
        let _ = writeln!(out, "  probe {:<20} {:<15} {state}", probe.name, signal);
    }
    for (map, lost) in snapshot.map_overflows.iter().filter(|(_, n)| **n > 0) {
        let _ = writeln!(out, "  WARNING: map {map} was full, {lost} updates lost");
    }
    let _ = writeln!(out);
    if snapshot.workloads.is_empty() {
        let _ = writeln!(
            out,
            "no retransmits, drops, DNS, block IO or CPU throttling seen"
        );
        return out;
    }
    network(snapshot, &mut out);
    dns(snapshot, &mut out);
    block(snapshot, &mut out);
    cpu(snapshot, &mut out);
    out
}

fn network(snapshot: &Snapshot, out: &mut String) {
    let rows: Vec<&Workload> = snapshot
        .workloads
        .iter()
        .filter(|w| w.signals.tcp != TcpStats::default() || w.signals.drops.total > 0)
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{:<60} {:>10} {:>8} {:>8} {:>6} {:>8}  TOP DROP REASON",
        "WORKLOAD", "NETNS", "RETRANS", "SEGS", "FAILED", "DROPS"
    );
    for w in rows {
        let top = w
            .signals
            .drops
            .by_reason
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(reason, n)| format!("{reason} ({n})"))
            .unwrap_or_default();
        let netns = w.netns.map_or_else(|| "-".into(), |n| n.to_string());
        let _ = writeln!(
            out,
            "{:<60} {:>10} {:>8} {:>8} {:>6} {:>8}  {top}",
            truncate_left(&w.display_name(), 60),
            netns,
            w.signals.tcp.retransmits,
            w.signals.tcp.retransmitted_segments,
            w.signals.tcp.failed_retransmits,
            w.signals.drops.total,
        );
    }
}

fn block(snapshot: &Snapshot, out: &mut String) {
    let rows: Vec<(&Workload, &BlockReport)> = snapshot
        .workloads
        .iter()
        .flat_map(|w| w.signals.block.iter().map(move |b| (w, b)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<50} {:<10} {:<7} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "WORKLOAD", "DEVICE", "OP", "REQS", "MB", "MEAN ms", "P50 ms", "P99 ms", "QUEUE ms"
    );
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
    for (w, b) in rows {
        let _ = writeln!(
            out,
            "{:<50} {:<10} {:<7} {:>8} {:>10.1} {:>9} {:>9} {:>9} {:>9}",
            truncate_left(&w.display_name(), 50),
            b.device,
            b.op,
            b.requests,
            b.bytes as f64 / 1e6,
            ms(b.service_ms.mean),
            ms(b.service_ms.p50),
            ms(b.service_ms.p99),
            ms(b.queue_ms.mean),
        );
    }
}

fn dns(snapshot: &Snapshot, out: &mut String) {
    let rows: Vec<(&Workload, &DnsReport)> = snapshot
        .workloads
        .iter()
        .filter_map(|w| w.signals.dns.as_ref().map(|d| (w, d)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<50} {:>8} {:>9} {:>8} {:>9} {:>8} {:>8}  RESOLVERS",
        "WORKLOAD", "QUERIES", "RESPONSES", "TIMEOUTS", "MALFORMED", "P50 ms", "P99 ms"
    );
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    for (w, d) in rows {
        let resolvers: Vec<&str> = d.by_resolver.keys().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "{:<50} {:>8} {:>9} {:>8} {:>9} {:>8} {:>8}  {}",
            truncate_left(&w.display_name(), 50),
            d.queries,
            d.responses,
            d.timeouts,
            d.malformed,
            ms(d.latency_ms.p50),
            ms(d.latency_ms.p99),
            resolvers.join(" "),
        );
    }
}

fn cpu(snapshot: &Snapshot, out: &mut String) {
    let rows: Vec<(&Workload, &CpuReport)> = snapshot
        .workloads
        .iter()
        .filter_map(|w| w.signals.cpu.as_ref().map(|c| (w, c)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<50} {:>9} {:>8} {:>9} {:>11} {:>8} {:>11} {:>11}",
        "WORKLOAD",
        "QUOTA ms",
        "PERIODS",
        "THROTTLED",
        "THROTTLE ms",
        "EVENTS",
        "STALL p50",
        "STALL p99"
    );
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    for (w, c) in rows {
        let _ = writeln!(
            out,
            "{:<50} {:>9} {:>8} {:>9} {:>11.1} {:>8} {:>11} {:>11}",
            truncate_left(&w.display_name(), 50),
            ms(c.quota_ms),
            c.periods,
            c.throttled_periods,
            c.throttled_ms,
            c.throttle_events,
            ms(c.stall_ms.p50),
            ms(c.stall_ms.p99),
        );
    }
}

/// Keeps the end of long cgroup paths, where the distinguishing part is.
fn truncate_left(s: &str, width: usize) -> String {
    let count = s.chars().count();
    if count <= width {
        return s.to_string();
    }
    let tail: String = s.chars().skip(count - (width - 1)).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_readable() {
        let table = render(&crate::report::tests::sample());
        assert!(table.contains("WORKLOAD"), "{table}");
        assert!(table.contains("pod uid / cccccccccccc"), "{table}");
        assert!(table.contains("NO_SOCKET (3)"), "{table}");
        assert!(table.contains("OFF: no such tracepoint"), "{table}");
        assert!(table.contains("(unattributed)"), "{table}");
        assert!(
            table.contains("loop0") && table.contains("98.000"),
            "{table}"
        );
        assert!(
            table.contains("THROTTLE ms") && table.contains("1600.0"),
            "{table}"
        );
        assert!(
            table.contains("TIMEOUTS") && table.contains("10.96.0.10"),
            "{table}"
        );
        assert_eq!(truncate_left("abcdef", 4), "…def");
    }
}
