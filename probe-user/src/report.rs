//! The per-workload report that `snapshot` prints, as JSON or as a table.

use std::{collections::BTreeMap, fmt::Write as _};

use probe_common::{DnsHistogram, LatencyHistogram};
use serde::Serialize;

use crate::{
    signals::histogram::LatencySummary,
    kernel::loader::{ProbeStatus, ProgramStats},
};

/// The name a unit enum has in the JSON (`tcp_retransmit`, `no significant change`), for
/// tables and metric labels that should say the same.
pub fn serde_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The reason under which listen-queue overflows appear: the kernel counts them in
/// `TcpExtListenOverflows` but does not report them through `kfree_skb`.
pub const TCP_LISTEN_OVERFLOW: &str = "TCP_LISTEN_OVERFLOW";

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub duration_s: f64,
    pub probes: Vec<ProbeStatus>,
    /// Updates lost because a kernel map was full, per map (0 is the healthy value).
    pub map_overflows: BTreeMap<String, u64>,
    /// Kernel map entries deleted because their cgroup or network namespace was gone
    /// for longer than the grace period, per map (grows with pod churn).
    pub gc_deleted_entries: BTreeMap<String, u64>,
    /// Kernel run time of each program since it was loaded (zeros unless `--bpf-stats`).
    pub program_stats: Vec<ProgramStats>,
    pub workloads: Vec<Workload>,
}

/// One cgroup (a container, a pod, a system service, the host), or a network
/// namespace whose owner is unknown, or the unattributable rest.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Workload {
    pub cgroup_id: Option<u64>,
    pub cgroup_path: Option<String>,
    pub netns: Option<u32>,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    /// Names from the kubelet's log directories (or the API): `null` when unknown.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    /// The pod's labels (from the API), for the exporter's opt-in label copies.
    #[serde(skip)]
    pub pod_labels: BTreeMap<String, String>,
    pub tcp: TcpStats,
    pub drops: DropStats,
    /// Block requests per (device, operation) issued by this workload.
    pub block: Vec<BlockReport>,
    /// CFS bandwidth: the cgroup's limit and accounting, and what the probe saw.
    pub cpu: Option<CpuReport>,
    /// DNS lookups this workload's sockets made.
    pub dns: Option<DnsReport>,
}

/// Response code names (RFC 1035, 2136, 6895); others as `RCODE<n>`.
pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        other => return format!("RCODE{other}"),
    }
    .to_string()
}

/// `{ "p50", "p90", "p99", "max" }` in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DnsReport {
    pub queries: u64,
    pub responses: u64,
    /// Queries with no response within the timeout (`--dns-timeout`).
    pub timeouts: u64,
    /// Packets to or from port 53 that are not a parsable DNS message.
    pub malformed: u64,
    /// Responses that matched no query in flight (late after a timeout, or to a query
    /// sent before the probe attached).
    pub unmatched_responses: u64,
    pub by_rcode: BTreeMap<String, u64>,
    /// `A`, `AAAA`, `SRV`, `PTR`, `OTHER`, over answered queries.
    pub by_qtype: BTreeMap<String, u64>,
    pub latency_ms: Percentiles,
    /// By resolver address as the client addressed it (a Service IP stays a Service IP).
    pub by_resolver: BTreeMap<String, ResolverReport>,
    /// Latency distributions per (resolver, response code), for the exporter.
    #[serde(skip)]
    pub latency_series: Vec<DnsLatencySeries>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsLatencySeries {
    pub resolver: String,
    pub rcode: String,
    pub histogram: DnsHistogram,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ResolverReport {
    pub queries: u64,
    pub responses: u64,
    pub timeouts: u64,
    pub latency_ms: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BlockReport {
    pub device: String,
    /// `read`, `write`, `flush`, `discard` or `other`.
    pub op: String,
    /// The device's IO scheduler now (`none`, `mq-deadline`, ...), if it has one.
    pub scheduler: Option<String>,
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Issue -> complete.
    pub service_ms: LatencySummary,
    /// Insert -> issue, over the requests that went through a scheduler queue.
    pub queue_ms: LatencySummary,
    /// The distributions behind the summaries, for the exporter.
    #[serde(skip)]
    pub service_histogram: LatencyHistogram,
    #[serde(skip)]
    pub queue_histogram: LatencyHistogram,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CpuReport {
    /// `null` without a quota.
    pub quota_ms: Option<f64>,
    pub period_ms: Option<f64>,
    /// From the cgroup's `cpu.stat`, over the window.
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ms: f64,
    /// Throttled switch-outs seen at `sched_switch`.
    pub throttle_events: u64,
    /// How long throttled tasks waited to run again.
    pub stall_ms: LatencySummary,
    pub stall_total_ms: f64,
    #[serde(skip)]
    pub stall_histogram: LatencyHistogram,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct TcpStats {
    pub retransmits: u64,
    pub retransmitted_segments: u64,
    pub failed_retransmits: u64,
    /// Connections accepted in the workload's network namespace (`PassiveOpens`), the
    /// load that listen overflows are normalised by. A namespace total: every workload
    /// in the namespace (a pod and its containers) shows the same number.
    pub passive_opens: u64,
    /// Segments sent from its network namespace (`OutSegs`), the load for retransmits;
    /// a namespace total too.
    pub sent_segments: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DropStats {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
}

impl DropStats {
    pub fn add(&mut self, reason: &str, count: u64) {
        self.total += count;
        *self.by_reason.entry(reason.to_string()).or_default() += count;
    }
}

impl Workload {
    /// A short name for tables: `namespace/pod/container` when known, else
    /// `pod <uid>/<container id>`, the cgroup path, or the netns.
    pub fn display_name(&self) -> String {
        if let (Some(namespace), Some(pod)) = (&self.namespace, &self.pod) {
            return match &self.container {
                Some(container) => format!("{namespace}/{pod}/{container}"),
                None => format!("{namespace}/{pod}"),
            };
        }
        match (&self.pod_uid, &self.container_id, &self.cgroup_path) {
            (Some(pod), Some(container), _) => format!("pod {pod} / {}", &container[..12]),
            (Some(pod), None, _) => format!("pod {pod}"),
            (None, _, Some(path)) => path.clone(),
            (None, _, None) => match self.netns {
                Some(netns) => format!("netns {netns}"),
                None => "(unattributed)".to_string(),
            },
        }
    }
}

impl Snapshot {
    /// A readable table: probes first, then one row per workload.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "tuneprobe snapshot over {:.1}s", self.duration_s);
        for probe in &self.probes {
            let state = match (&probe.attached, &probe.error) {
                (true, _) => "attached".to_string(),
                (false, Some(err)) => format!("OFF: {err}"),
                (false, None) => "OFF".to_string(),
            };
            let signal = serde_name(&probe.signal);
            let _ = writeln!(out, "  probe {:<20} {:<15} {state}", probe.name, signal);
        }
        for (map, lost) in self.map_overflows.iter().filter(|(_, n)| **n > 0) {
            let _ = writeln!(out, "  WARNING: map {map} was full, {lost} updates lost");
        }
        let _ = writeln!(out);
        if self.workloads.is_empty() {
            let _ = writeln!(
                out,
                "no retransmits, drops, DNS, block IO or CPU throttling seen"
            );
            return out;
        }
        self.network_table(&mut out);
        self.dns_table(&mut out);
        self.block_table(&mut out);
        self.cpu_table(&mut out);
        out
    }

    fn network_table(&self, out: &mut String) {
        let rows: Vec<&Workload> = self
            .workloads
            .iter()
            .filter(|w| w.tcp != TcpStats::default() || w.drops.total > 0)
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
                .drops
                .by_reason
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(reason, n)| format!("{reason} ({n})"))
                .unwrap_or_default();
            let netns = w.netns.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<60} {:>10} {:>8} {:>8} {:>6} {:>8}  {top}",
                truncate_left(&w.display_name(), 60),
                netns,
                w.tcp.retransmits,
                w.tcp.retransmitted_segments,
                w.tcp.failed_retransmits,
                w.drops.total,
            );
        }
    }

    fn block_table(&self, out: &mut String) {
        let rows: Vec<(&Workload, &BlockReport)> = self
            .workloads
            .iter()
            .flat_map(|w| w.block.iter().map(move |b| (w, b)))
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

    fn dns_table(&self, out: &mut String) {
        let rows: Vec<(&Workload, &DnsReport)> = self
            .workloads
            .iter()
            .filter_map(|w| w.dns.as_ref().map(|d| (w, d)))
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

    fn cpu_table(&self, out: &mut String) {
        let rows: Vec<(&Workload, &CpuReport)> = self
            .workloads
            .iter()
            .filter_map(|w| w.cpu.as_ref().map(|c| (w, c)))
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
    use crate::kernel::loader::Signal;

    fn sample() -> Snapshot {
        let mut drops = DropStats::default();
        drops.add("NO_SOCKET", 3);
        drops.add(TCP_LISTEN_OVERFLOW, 2);
        Snapshot {
            duration_s: 2.5,
            probes: vec![
                ProbeStatus {
                    name: "kfree_skb".into(),
                    signal: Signal::Drops,
                    attached: true,
                    error: None,
                },
                ProbeStatus {
                    name: "tcp_retransmit_skb".into(),
                    signal: Signal::TcpRetransmit,
                    attached: false,
                    error: Some("no such tracepoint".into()),
                },
            ],
            map_overflows: BTreeMap::from([("DROPS".to_string(), 0)]),
            gc_deleted_entries: BTreeMap::new(),
            program_stats: vec![],
            workloads: vec![
                Workload {
                    cgroup_id: Some(42),
                    cgroup_path: Some("/kubepods/pod1/c".into()),
                    netns: Some(4026531840),
                    pod_uid: Some("uid".into()),
                    container_id: Some("c".repeat(64)),
                    namespace: None,
                    pod: None,
                    container: None,
                    pod_labels: BTreeMap::new(),
                    tcp: TcpStats {
                        retransmits: 1,
                        retransmitted_segments: 4,
                        failed_retransmits: 0,
                        ..TcpStats::default()
                    },
                    drops,
                    dns: Some(DnsReport {
                        queries: 4,
                        responses: 3,
                        timeouts: 1,
                        malformed: 2,
                        unmatched_responses: 0,
                        by_rcode: BTreeMap::from([("NOERROR".into(), 2), ("NXDOMAIN".into(), 1)]),
                        by_qtype: BTreeMap::from([("A".into(), 3)]),
                        latency_ms: Percentiles {
                            p50: Some(25.1),
                            p90: Some(25.3),
                            p99: Some(25.3),
                            max: Some(25.3),
                        },
                        by_resolver: BTreeMap::from([(
                            "10.96.0.10".into(),
                            ResolverReport {
                                queries: 4,
                                responses: 3,
                                timeouts: 1,
                                latency_ms: Percentiles::default(),
                            },
                        )]),
                        latency_series: Vec::new(),
                    }),
                    block: vec![BlockReport {
                        device: "loop0".into(),
                        op: "read".into(),
                        scheduler: Some("none".into()),
                        requests: 10,
                        bytes: 40960,
                        errors: 0,
                        service_ms: LatencySummary {
                            mean: Some(10.5),
                            p50: Some(1.1),
                            p99: Some(98.0),
                            max: Some(101.0),
                        },
                        queue_ms: LatencySummary::default(),
                        ..BlockReport::default()
                    }],
                    cpu: Some(CpuReport {
                        quota_ms: Some(20.0),
                        period_ms: Some(100.0),
                        periods: 21,
                        throttled_periods: 20,
                        throttled_ms: 1600.0,
                        throttle_events: 20,
                        stall_ms: LatencySummary {
                            mean: Some(80.0),
                            p50: Some(80.0),
                            p99: Some(81.0),
                            max: Some(81.5),
                        },
                        stall_total_ms: 1600.0,
                        ..CpuReport::default()
                    }),
                },
                Workload {
                    drops: DropStats {
                        total: 1,
                        by_reason: BTreeMap::from([("NO_SOCKET".to_string(), 1)]),
                    },
                    ..Workload::default()
                },
            ],
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["duration_s"], 2.5);
        let probe = &json["probes"][1];
        assert_eq!(probe["name"], "tcp_retransmit_skb");
        assert_eq!(probe["signal"], "tcp_retransmit");
        assert_eq!(probe["attached"], false);
        assert_eq!(probe["error"], "no such tracepoint");
        assert!(json["probes"][0]["error"].is_null());
        assert_eq!(json["probes"][0]["signal"], "drops");
        let w = &json["workloads"][0];
        for key in [
            "cgroup_id",
            "cgroup_path",
            "netns",
            "pod_uid",
            "container_id",
            "tcp",
            "drops",
        ] {
            assert!(w.get(key).is_some(), "missing {key}");
        }
        assert_eq!(w["tcp"]["retransmits"], 1);
        assert_eq!(w["tcp"]["retransmitted_segments"], 4);
        assert_eq!(w["tcp"]["failed_retransmits"], 0);
        assert_eq!(w["drops"]["total"], 5);
        assert_eq!(w["drops"]["by_reason"]["NO_SOCKET"], 3);
        assert_eq!(w["drops"]["by_reason"]["TCP_LISTEN_OVERFLOW"], 2);
        // Fields that do not apply are null, not absent.
        let empty = &json["workloads"][1];
        assert!(empty["cgroup_id"].is_null() && empty["pod_uid"].is_null());
        assert_eq!(json["map_overflows"]["DROPS"], 0);
        let block = &w["block"][0];
        for key in ["device", "op", "scheduler", "requests", "bytes", "errors"] {
            assert!(block.get(key).is_some(), "missing block.{key}");
        }
        for key in ["mean", "p50", "p99", "max"] {
            assert!(
                block["service_ms"].get(key).is_some(),
                "missing service_ms.{key}"
            );
        }
        for key in ["mean", "p50", "p99"] {
            assert!(
                block["queue_ms"].get(key).is_some(),
                "missing queue_ms.{key}"
            );
        }
        assert_eq!(block["service_ms"]["p99"], 98.0);
        assert!(
            block["queue_ms"]["mean"].is_null(),
            "no queued requests: null"
        );
        let cpu = &w["cpu"];
        for key in [
            "quota_ms",
            "period_ms",
            "periods",
            "throttled_periods",
            "throttled_ms",
            "throttle_events",
            "stall_ms",
            "stall_total_ms",
        ] {
            assert!(cpu.get(key).is_some(), "missing cpu.{key}");
        }
        for key in ["p50", "p99", "max"] {
            assert!(cpu["stall_ms"].get(key).is_some(), "missing stall_ms.{key}");
        }
        assert!(empty["cpu"].is_null());
        assert!(empty["dns"].is_null());
        let dns = &w["dns"];
        for key in [
            "queries",
            "responses",
            "timeouts",
            "malformed",
            "by_rcode",
            "latency_ms",
            "by_resolver",
        ] {
            assert!(dns.get(key).is_some(), "missing dns.{key}");
        }
        for key in ["p50", "p90", "p99", "max"] {
            assert!(
                dns["latency_ms"].get(key).is_some(),
                "missing dns.latency_ms.{key}"
            );
        }
        assert_eq!(dns["by_rcode"]["NXDOMAIN"], 1);
        let resolver = &dns["by_resolver"]["10.96.0.10"];
        for key in ["queries", "responses", "timeouts", "latency_ms"] {
            assert!(resolver.get(key).is_some(), "missing by_resolver.{key}");
        }
        assert!(
            resolver["latency_ms"].get("p50").is_some()
                && resolver["latency_ms"].get("p99").is_some()
        );
        assert_eq!(empty["block"], serde_json::json!([]));
    }

    #[test]
    fn table_is_readable() {
        let table = sample().to_table();
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
        assert_eq!(rcode_name(3), "NXDOMAIN");
        assert_eq!(rcode_name(15), "RCODE15");
        assert_eq!(truncate_left("abcdef", 4), "…def");
    }
}
