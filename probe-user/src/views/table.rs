//! `snapshot`'s table: the probes, then one section per signal with a row per workload.

use std::fmt::Write as _;

use crate::{report::Snapshot, signals};

/// `snapshot`'s table: probes first, then a section per signal with activity.
pub(crate) fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "tuneprobe snapshot over {:.1}s", snapshot.duration_s);
    for probe in &snapshot.probes {
        let state = match (&probe.attached, &probe.error) {
            (true, _) => "attached".to_string(),
            (false, Some(err)) => format!("OFF: {err}"),
            (false, None) => "OFF".to_string(),
        };
        let _ = writeln!(
            out,
            "  probe {:<20} {:<15} {state}",
            probe.name, probe.signal
        );
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
    let workloads: Vec<_> = snapshot
        .workloads
        .iter()
        .map(|w| (&w.identity, &w.signals))
        .collect();
    let tables: Vec<String> = signals::tables(&workloads)
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect();
    out.push_str(&tables.join("\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::parts::truncate_left;

    #[test]
    fn table_is_readable() {
        let table = render(&crate::report::tests::sample());
        assert!(table.contains("WORKLOAD"), "{table}");
        assert!(table.contains("pod:uid/cccccccccccc"), "{table}");
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
