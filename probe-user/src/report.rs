//! The snapshot of a window: every workload with its signals, as `snapshot --json`
//! prints it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    kernel::loader::{ProbeStatus, ProgramStats},
    signals::Sections,
    workloads::identity::Identity,
};

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

impl Snapshot {
    /// A one-second snapshot of `workloads` alone, for tests.
    #[cfg(test)]
    pub(crate) fn of_workloads(workloads: Vec<Workload>) -> Self {
        Self {
            duration_s: 1.0,
            probes: vec![],
            map_overflows: BTreeMap::new(),
            gc_deleted_entries: BTreeMap::new(),
            program_stats: vec![],
            workloads,
        }
    }
}

/// One cgroup (a container, a pod, a system service, the host), or a network
/// namespace whose owner is unknown, or the unattributable rest.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Workload {
    /// Who it is: ids, cgroup path, network namespace, pod and container names.
    #[serde(flatten)]
    pub identity: Identity,
    /// The pod's labels (from the API), for the exporter's opt-in label copies.
    #[serde(skip)]
    pub pod_labels: BTreeMap<String, String>,
    /// Every signal's section: `tcp`, `drops`, `block`, `cpu`, `dns`.
    #[serde(flatten)]
    pub signals: Sections,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::signals::{
        Sections, Signal,
        block_io::BlockReport,
        cpu_throttle::CpuReport,
        dns::{DnsLatencySeries, DnsReport, ResolverReport},
        drops::{DropStats, TCP_LISTEN_OVERFLOW},
        histogram::{LatencySummary, Percentiles},
        tcp_connections::{ConnectFailures, ConnectionReport},
        tcp_retransmit::TcpStats,
    };

    /// A snapshot of one workload, `identity`, whose cpu cgroup was throttled in
    /// `throttled` of `periods` CFS periods: what the watcher's tests feed it.
    pub(crate) fn throttled(identity: Identity, periods: u64, throttled: u64) -> Snapshot {
        Snapshot::of_workloads(vec![Workload {
            identity,
            signals: Sections {
                cpu: Some(Box::new(CpuReport {
                    periods,
                    throttled_periods: throttled,
                    ..CpuReport::default()
                })),
                ..Sections::default()
            },
            ..Workload::default()
        }])
    }

    /// A snapshot with every field populated somewhere (the generated references,
    /// `docs/json.md` and `docs/metrics.md`, are made from it): a pod's container with
    /// every signal but no names, an unattributed workload with one drop, and a named
    /// container with the values of the JSON example in `docs/snapshot.md`.
    pub(crate) fn sample() -> Snapshot {
        Snapshot {
            duration_s: 2.5,
            probes: probes(),
            map_overflows: BTreeMap::from([("DROPS".to_string(), 0)]),
            gc_deleted_entries: BTreeMap::from([("DROPS".to_string(), 3)]),
            program_stats: vec![ProgramStats {
                name: "kfree_skb".into(),
                run_time_ns: 1150,
                run_count: 10,
            }],
            workloads: vec![
                pod_container(),
                Workload {
                    signals: Sections {
                        drops: DropStats {
                            total: 1,
                            by_reason: BTreeMap::from([("NO_SOCKET".to_string(), 1)]),
                            ..DropStats::default()
                        },
                        ..Sections::default()
                    },
                    ..Workload::default()
                },
                named(),
                service(),
            ],
        }
    }

    /// The sample's programs: one attached, one the kernel refused.
    fn probes() -> Vec<ProbeStatus> {
        vec![
            ProbeStatus {
                name: "kfree_skb".into(),
                signal: Signal::Drops.name(),
                attached: true,
                error: None,
            },
            ProbeStatus {
                name: "tcp_retransmit_skb".into(),
                signal: Signal::TcpRetransmit.name(),
                attached: false,
                error: Some("no such tracepoint".into()),
            },
        ]
    }

    /// A pod's container with every signal but no names.
    fn pod_container() -> Workload {
        let mut drops = DropStats::default();
        drops.add("NO_SOCKET", 3);
        drops.add(TCP_LISTEN_OVERFLOW, 2);
        Workload {
            identity: Identity {
                cgroup_id: Some(42),
                cgroup_path: Some("/kubepods/pod1/c".into()),
                netns: Some(4026531840),
                pod_uid: Some("uid".into()),
                container_id: Some("c".repeat(64)),
                namespace: None,
                pod: None,
                container: None,
            },
            pod_labels: BTreeMap::new(),
            signals: Sections {
                tcp: TcpStats {
                    retransmits: 1,
                    retransmitted_segments: 4,
                    failed_retransmits: 0,
                    ..TcpStats::default()
                },
                drops,
                dns: Some(Box::new(pod_dns())),
                block: vec![BlockReport {
                    device: "loop0".into(),
                    op: "read".into(),
                    scheduler: Some("none".into()),
                    requests: 10,
                    bytes: 40960,
                    errors: 0,
                    service_ms: summary(10.5, 1.1, 98.0, 101.0),
                    queue_ms: LatencySummary::default(),
                    ..BlockReport::default()
                }],
                cpu: Some(Box::new(CpuReport {
                    quota_ms: Some(20.0),
                    period_ms: Some(100.0),
                    periods: 21,
                    throttled_periods: 20,
                    throttled_ms: 1600.0,
                    throttle_events: 20,
                    stall_ms: summary(80.0, 80.0, 81.0, 81.5),
                    stall_total_ms: 1600.0,
                    ..CpuReport::default()
                })),
                connections: Some(Box::new(ConnectionReport {
                    connect_attempts: 12,
                    connected: 10,
                    failed: ConnectFailures {
                        refused: 2,
                        ..ConnectFailures::default()
                    },
                    closed: 10,
                    ..ConnectionReport::default()
                })),
            },
        }
    }

    /// The pod container's DNS: answers, a timeout and malformed packets, one resolver.
    fn pod_dns() -> DnsReport {
        DnsReport {
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
        }
    }

    /// A latency summary with every value set.
    fn summary(mean: f64, p50: f64, p99: f64, max: f64) -> LatencySummary {
        LatencySummary {
            mean: Some(mean),
            p50: Some(p50),
            p99: Some(p99),
            max: Some(max),
        }
    }

    /// A system service with the fields that can be null null: a disk gone by report
    /// time, no quota of its own (throttled by its parent's), DNS queries without answers.
    fn service() -> Workload {
        Workload {
            identity: Identity {
                cgroup_id: Some(77),
                cgroup_path: Some("/system.slice/backup.service".into()),
                netns: Some(4026531840),
                ..Identity::default()
            },
            signals: Sections {
                block: vec![BlockReport {
                    device: "8:16".into(),
                    op: "write".into(),
                    scheduler: None,
                    requests: 2,
                    bytes: 8192,
                    errors: 0,
                    service_ms: LatencySummary::default(),
                    queue_ms: LatencySummary::default(),
                    ..BlockReport::default()
                }],
                cpu: Some(Box::new(CpuReport {
                    quota_ms: None,
                    period_ms: None,
                    periods: 0,
                    throttled_periods: 0,
                    throttle_events: 1,
                    ..CpuReport::default()
                })),
                dns: Some(Box::new(DnsReport {
                    queries: 3,
                    responses: 0,
                    timeouts: 3,
                    malformed: 0,
                    unmatched_responses: 0,
                    by_rcode: BTreeMap::new(),
                    by_qtype: BTreeMap::new(),
                    latency_ms: Percentiles::default(),
                    by_resolver: BTreeMap::new(),
                    latency_series: Vec::new(),
                })),
                ..Sections::default()
            },
            ..Workload::default()
        }
    }

    /// A named container with every optional field set, from `docs/snapshot.md`'s
    /// example.
    fn named() -> Workload {
        Workload {
            identity: Identity {
                cgroup_id: Some(8412),
                cgroup_path: Some("/kubepods/burstable/pod0b5a/4f2a".into()),
                netns: Some(4026532175),
                pod_uid: Some("0b5a3f0e-52c2-4b7e-9f0a-6a1c2e3d4f5a".into()),
                container_id: Some("4f2a".repeat(16)),
                namespace: Some("shop".into()),
                pod: Some("api-7f9c4".into()),
                container: Some("server".into()),
            },
            pod_labels: BTreeMap::from([("app".to_string(), "api".to_string())]),
            signals: Sections {
                tcp: TcpStats {
                    retransmits: 1,
                    retransmitted_segments: 7,
                    failed_retransmits: 0,
                    passive_opens: 120,
                    sent_segments: 5310,
                    received_segments: 4870,
                    rcvq_drops: 1,
                    rcvq_prunes: 1,
                },
                drops: DropStats {
                    total: 3,
                    by_reason: BTreeMap::from([("SOCKET_RCVBUFF".to_string(), 3)]),
                    received_packets: 5102,
                    forwarded_packets: 10,
                    received_datagrams: 240,
                    conntrack_full: 4,
                },
                dns: Some(Box::new(named_dns())),
                block: vec![BlockReport {
                    device: "loop0".into(),
                    op: "read".into(),
                    scheduler: Some("mq-deadline".into()),
                    requests: 301,
                    bytes: 1_232_896,
                    errors: 0,
                    service_ms: summary(9.831, 0.115, 101.679, 101.679),
                    queue_ms: summary(0.002, 0.002, 0.007, 0.024),
                    ..BlockReport::default()
                }],
                cpu: Some(Box::new(CpuReport {
                    quota_ms: Some(20.0),
                    period_ms: Some(100.0),
                    periods: 23,
                    throttled_periods: 21,
                    throttled_ms: 1624.393,
                    usage_ms: Some(460.2),
                    throttle_events: 21,
                    stall_ms: summary(77.3, 75.9, 87.4, 88.1),
                    stall_total_ms: 1623.9,
                    ..CpuReport::default()
                })),
                connections: Some(Box::new(named_connections())),
            },
        }
    }

    /// The named container's DNS: answers and timeouts at one resolver, with its latency.
    fn named_dns() -> DnsReport {
        let latency = Percentiles {
            p50: Some(0.41),
            p90: Some(1.9),
            p99: Some(25.3),
            max: Some(31.0),
        };
        DnsReport {
            queries: 120,
            responses: 118,
            timeouts: 2,
            malformed: 0,
            unmatched_responses: 0,
            by_rcode: BTreeMap::from([("NOERROR".into(), 110), ("NXDOMAIN".into(), 8)]),
            by_qtype: BTreeMap::from([("A".into(), 60), ("AAAA".into(), 58)]),
            latency_ms: latency,
            by_resolver: BTreeMap::from([(
                "10.96.0.10".into(),
                ResolverReport {
                    queries: 120,
                    responses: 118,
                    timeouts: 2,
                    latency_ms: latency,
                },
            )]),
            latency_series: vec![DnsLatencySeries {
                resolver: "10.96.0.10".into(),
                rcode: "NOERROR".into(),
                histogram: probe_common::histogram::DnsHistogram::ZERO,
            }],
        }
    }

    /// The named container's connections: made, refused by port exhaustion, accepted,
    /// closed and reset, with their durations and round-trip times.
    fn named_connections() -> ConnectionReport {
        ConnectionReport {
            connect_attempts: 40,
            connected: 30,
            failed: ConnectFailures {
                port_exhaustion: 10,
                ..ConnectFailures::default()
            },
            accepted: 120,
            closed: 148,
            resets_sent: 2,
            resets_received: 0,
            time_wait: Some(31),
            duration_ms: summary(812.4, 524.3, 4194.3, 5012.0),
            srtt_ms: summary(0.41, 0.384, 1.2, 1.4),
            min_rtt_ms: summary(0.09, 0.088, 0.2, 0.21),
            ..ConnectionReport::default()
        }
    }

    /// The sample as JSON.
    fn sample_json() -> serde_json::Value {
        serde_json::to_value(sample()).unwrap()
    }

    /// Asserts that `value` has each of `keys`, naming a missing one `{prefix}{key}`.
    fn assert_keys(value: &serde_json::Value, prefix: &str, keys: &[&str]) {
        for key in keys {
            assert!(value.get(key).is_some(), "missing {prefix}{key}");
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let json = sample_json();
        assert_eq!(json["duration_s"], 2.5);
        let probe = &json["probes"][1];
        assert_eq!(probe["name"], "tcp_retransmit_skb");
        assert_eq!(probe["signal"], "tcp_retransmit");
        assert_eq!(probe["attached"], false);
        assert_eq!(probe["error"], "no such tracepoint");
        assert!(json["probes"][0]["error"].is_null());
        assert_eq!(json["probes"][0]["signal"], "drops");
        let w = &json["workloads"][0];
        assert_keys(
            w,
            "",
            &[
                "cgroup_id",
                "cgroup_path",
                "netns",
                "pod_uid",
                "container_id",
                "tcp",
                "drops",
            ],
        );
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
        assert!(empty["cpu"].is_null());
        assert!(empty["dns"].is_null());
        assert_eq!(empty["block"], serde_json::json!([]));
    }

    #[test]
    fn block_json_has_the_documented_shape() {
        let json = sample_json();
        let block = &json["workloads"][0]["block"][0];
        assert_keys(
            block,
            "block.",
            &["device", "op", "scheduler", "requests", "bytes", "errors"],
        );
        assert_keys(
            &block["service_ms"],
            "service_ms.",
            &["mean", "p50", "p99", "max"],
        );
        assert_keys(&block["queue_ms"], "queue_ms.", &["mean", "p50", "p99"]);
        assert_eq!(block["service_ms"]["p99"], 98.0);
        assert!(
            block["queue_ms"]["mean"].is_null(),
            "no queued requests: null"
        );
    }

    #[test]
    fn cpu_json_has_the_documented_shape() {
        let json = sample_json();
        let cpu = &json["workloads"][0]["cpu"];
        assert_keys(
            cpu,
            "cpu.",
            &[
                "quota_ms",
                "period_ms",
                "periods",
                "throttled_periods",
                "throttled_ms",
                "throttle_events",
                "stall_ms",
                "stall_total_ms",
            ],
        );
        assert_keys(&cpu["stall_ms"], "stall_ms.", &["p50", "p99", "max"]);
    }

    #[test]
    fn dns_json_has_the_documented_shape() {
        let json = sample_json();
        let dns = &json["workloads"][0]["dns"];
        assert_keys(
            dns,
            "dns.",
            &[
                "queries",
                "responses",
                "timeouts",
                "malformed",
                "by_rcode",
                "latency_ms",
                "by_resolver",
            ],
        );
        assert_keys(
            &dns["latency_ms"],
            "dns.latency_ms.",
            &["p50", "p90", "p99", "max"],
        );
        assert_eq!(dns["by_rcode"]["NXDOMAIN"], 1);
        let resolver = &dns["by_resolver"]["10.96.0.10"];
        assert_keys(
            resolver,
            "by_resolver.",
            &["queries", "responses", "timeouts", "latency_ms"],
        );
        assert!(
            resolver["latency_ms"].get("p50").is_some()
                && resolver["latency_ms"].get("p99").is_some()
        );
    }
}
