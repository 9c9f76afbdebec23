//! Every rule on the symptom it claims (it fires, naming exactly its knobs) and on a
//! healthy workload beside it with the same settings and load but no symptom (it stays
//! silent); and the cases where a rule must hold back.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use probe_common::LatencyHistogram;

use super::*;
use crate::{
    report::Workload,
    signals::{
        Sections,
        block_io::BlockReport,
        cpu_throttle::CpuReport,
        drops::{DropStats, TCP_LISTEN_OVERFLOW},
        tcp_connections::{ConnectFailures, ConnectionReport},
        tcp_retransmit::TcpStats,
    },
    tuning::{DeviceSettings, NetnsSettings, Setting},
};

const SICK: &str = "/kubepods/podsick/c1";
const HEALTHY: &str = "/kubepods/podok/c1";

struct Stub;

impl Locator for Stub {
    fn cpu_dir(&self, path: &str) -> Option<(PathBuf, bool)> {
        Some((PathBuf::from(format!("/sys/fs/cgroup{path}")), true))
    }
    fn netns_name(&self, inode: u32) -> Option<String> {
        Some(format!("ns{inode}"))
    }
}

fn settings(pairs: &[(&str, &str)]) -> Vec<Setting> {
    pairs
        .iter()
        .map(|(knob, value)| Setting {
            knob: knob.to_string(),
            value: value.to_string(),
            recommended: None,
            deviates: None,
            signal: String::new(),
        })
        .collect()
}

/// Kernel defaults everywhere: the sick and the healthy workload live with the same
/// settings, each in its own network namespace (7 and 8), on one SSD `sda` with a
/// strictatime mount.
fn inventory() -> Inventory {
    let netns = |inode| NetnsSettings {
        netns: inode,
        owner: None,
        settings: settings(&[
            ("net.core.somaxconn", "4096"),
            ("net.ipv4.tcp_max_syn_backlog", "1024"),
            ("net.ipv4.tcp_syncookies", "1"),
            ("net.ipv4.ip_local_port_range", "32768 60999"),
            ("net.ipv4.tcp_tw_reuse", "2"),
            ("net.ipv4.tcp_fin_timeout", "60"),
            ("net.ipv4.tcp_keepalive_time", "7200"),
            ("net.ipv4.tcp_congestion_control", "cubic"),
            ("net.ipv4.tcp_rmem", "4096 131072 6291456"),
        ]),
        error: None,
    };
    Inventory {
        node: settings(&[
            ("net.core.netdev_max_backlog", "1000"),
            ("net.core.rmem_max", "212992"),
            ("net.core.rmem_default", "212992"),
            ("vm.dirty_background_ratio", "10"),
        ]),
        netns: vec![netns(7), netns(8)],
        devices: vec![DeviceSettings {
            device: "sda".into(),
            settings: settings(&[
                ("queue/scheduler", "bfq"),
                ("queue/nr_requests", "64"),
                ("queue/rotational", "0"),
            ]),
        }],
        ..Inventory::default()
    }
}

fn workload(path: &str, netns: u32, signals: Sections) -> Workload {
    Workload {
        identity: Identity {
            cgroup_path: Some(path.into()),
            netns: Some(netns),
            pod_uid: Some(path.split('/').nth(2).unwrap().into()),
            ..Identity::default()
        },
        signals,
        ..Workload::default()
    }
}

/// The advice for a window from nothing to `sick` (netns 7) and `healthy` (netns 8),
/// as knob names per workload.
fn knobs_with(
    sick: Sections,
    healthy: Sections,
    inventory: &Inventory,
) -> (BTreeSet<String>, BTreeSet<String>, Vec<Advice>) {
    let start = Snapshot::of_workloads(vec![
        workload(SICK, 7, Sections::default()),
        workload(HEALTHY, 8, Sections::default()),
    ]);
    let mut end =
        Snapshot::of_workloads(vec![workload(SICK, 7, sick), workload(HEALTHY, 8, healthy)]);
    end.duration_s = 30.0;
    let advice = advise(&[start, end], inventory, &Thresholds::default(), &Stub);
    let of = |path: &str| -> BTreeSet<String> {
        advice
            .iter()
            .filter(|a| {
                a.workloads
                    .iter()
                    .any(|w| w.cgroup_path.as_deref() == Some(path))
            })
            .map(|a| a.knob.clone())
            .collect()
    };
    (of(SICK), of(HEALTHY), advice)
}

fn knobs(sick: Sections, healthy: Sections) -> (BTreeSet<String>, BTreeSet<String>, Vec<Advice>) {
    knobs_with(sick, healthy, &inventory())
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(ToString::to_string).collect()
}

fn listen(overflows: u64, accepted: u64) -> Sections {
    let mut drops = DropStats::default();
    if overflows > 0 {
        drops.add(TCP_LISTEN_OVERFLOW, overflows);
    }
    Sections {
        drops,
        tcp: TcpStats {
            passive_opens: accepted,
            ..TcpStats::default()
        },
        ..Sections::default()
    }
}

#[test]
fn listen_overflows_call_for_somaxconn() {
    let (sick, healthy, advice) = knobs(listen(300, 700), listen(0, 1000));
    assert_eq!(sick, set(&["net.core.somaxconn"]));
    assert!(healthy.is_empty(), "{advice:#?}");
    let a = &advice[0];
    assert_eq!(
        (a.current.as_str(), a.recommended.as_str()),
        ("4096", "65535")
    );
    assert_eq!(a.evidence.value, 0.3);
    assert_eq!(a.evidence.load, 1000.0);
    assert_eq!(a.target.as_ref().unwrap().option, "--pod");
    assert_eq!(
        a.verify_command,
        "tuneprobe verify --apply 'net.core.somaxconn=65535' --pod podsick \
         --expect listen_overflow_ratio:lower:50%"
    );
    // Below the threshold, or with too few attempts to call it a pattern: nothing.
    assert!(knobs(listen(5, 995), listen(0, 0)).0.is_empty());
    assert!(knobs(listen(30, 20), listen(0, 0)).0.is_empty());
}

#[test]
fn listen_overflows_never_call_for_the_syn_backlog_and_somaxconn_only_where_below_the_guide() {
    let mut inventory = inventory();
    for s in &mut inventory.netns[0].settings {
        match s.knob.as_str() {
            "net.ipv4.tcp_syncookies" => s.value = "0".into(),
            "net.core.somaxconn" => s.value = "65535".into(),
            _ => {}
        }
    }
    // Without syncookies too: the accept queue's overflows are not the SYN queue's.
    let (sick, _, _) = knobs_with(listen(300, 700), listen(0, 1000), &inventory);
    assert!(sick.is_empty(), "{sick:?}");
}

fn datagrams(dropped: u64, received: u64) -> Sections {
    let mut drops = DropStats {
        received_datagrams: received,
        ..DropStats::default()
    };
    if dropped > 0 {
        drops.add("SOCKET_RCVBUFF", dropped);
    }
    Sections {
        drops,
        ..Sections::default()
    }
}

#[test]
fn receive_buffer_drops_call_for_both_buffer_limits() {
    let (sick, healthy, advice) = knobs(datagrams(50, 10_000), datagrams(0, 10_000));
    assert_eq!(sick, set(&["net.core.rmem_default", "net.core.rmem_max"]));
    assert!(healthy.is_empty());
    let default = advice
        .iter()
        .find(|a| a.knob == "net.core.rmem_default")
        .unwrap();
    assert_eq!(default.recommended, "851968", "4 x 212992");
    assert!(default.target.is_none() && default.notes[0].contains("node-wide"));
    assert!(default.takes_effect.contains("sockets created after"));
}

#[test]
fn backlog_and_receive_queue_drops_call_for_their_knobs() {
    let mut backlog = DropStats {
        received_packets: 100_000,
        ..DropStats::default()
    };
    backlog.add("CPU_BACKLOG", 500);
    let sick = Sections {
        drops: backlog,
        tcp: TcpStats {
            received_segments: 100_000,
            rcvq_drops: 400,
            ..TcpStats::default()
        },
        ..Sections::default()
    };
    let healthy = Sections {
        drops: DropStats {
            received_packets: 100_000,
            ..DropStats::default()
        },
        tcp: TcpStats {
            received_segments: 100_000,
            ..TcpStats::default()
        },
        ..Sections::default()
    };
    let (sick, healthy, _) = knobs(sick, healthy);
    assert_eq!(
        sick,
        set(&["net.core.netdev_max_backlog", "net.ipv4.tcp_rmem"])
    );
    assert!(healthy.is_empty());
}

fn connects(attempts: u64, no_port: u64, refused: u64, time_wait: u64) -> Sections {
    Sections {
        connections: Some(Box::new(ConnectionReport {
            connect_attempts: attempts,
            failed: ConnectFailures {
                port_exhaustion: no_port,
                refused,
                ..ConnectFailures::default()
            },
            time_wait: Some(time_wait),
            ..ConnectionReport::default()
        })),
        ..Sections::default()
    }
}

#[test]
fn port_exhaustion_calls_for_the_range_and_time_wait_for_reuse() {
    let (sick, healthy, _) = knobs(connects(1000, 400, 0, 100), connects(1000, 0, 0, 100));
    assert_eq!(sick, set(&["net.ipv4.ip_local_port_range"]));
    assert!(healthy.is_empty());
    // TIME_WAIT holds more than half the 28,232 ports: reuse them (tcp_fin_timeout does
    // not shorten TIME_WAIT, whatever guides say).
    let (sick, _, _) = knobs(connects(1000, 400, 0, 20_000), connects(1000, 0, 0, 0));
    assert_eq!(
        sick,
        set(&["net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse"])
    );
    // Failures, but refused ones: no port is missing, no knob of these helps.
    let (sick, _, _) = knobs(connects(1000, 100, 400, 20_000), connects(1000, 0, 0, 0));
    assert!(sick.is_empty(), "{sick:?}");
}

/// 100 connections that ended after `lived_s` seconds, `received` of them by a reset;
/// 30 retransmitted segments per reset in 100,000 sent.
fn resets(received: u64, lived_s: u64) -> Sections {
    use probe_common::tcp_connections::DurationHistogram;
    let ns = lived_s * 1_000_000_000;
    let mut lived = DurationHistogram {
        count: 100,
        sum_ns: 100 * ns,
        max_ns: ns,
        min_ns: ns,
        ..DurationHistogram::ZERO
    };
    lived.buckets[<DurationHistogram>::bucket(ns)] = 100;
    Sections {
        connections: Some(Box::new(ConnectionReport {
            closed: 100,
            resets_received: received,
            duration_histogram: lived,
            ..ConnectionReport::default()
        })),
        tcp: TcpStats {
            sent_segments: 100_000,
            retransmitted_segments: received * 30,
            ..TcpStats::default()
        },
        ..Sections::default()
    }
}

#[test]
fn resets_of_long_idle_connections_call_for_keepalives_and_loss_for_nothing() {
    let (sick, healthy, advice) = knobs(resets(40, 600), resets(0, 600));
    // Retransmits too (1.2 in 100 segments): no congestion control is advised for them.
    assert_eq!(sick, set(&["net.ipv4.tcp_keepalive_time"]));
    assert!(healthy.is_empty());
    let keepalive = advice
        .iter()
        .find(|a| a.knob.ends_with("keepalive_time"))
        .unwrap();
    assert!(
        keepalive
            .evidence
            .detail
            .as_deref()
            .unwrap()
            .contains("median")
    );
    // Resets that end connections of a second are the server's doing: no keepalive.
    let (sick, _, _) = knobs(resets(40, 1), resets(0, 1));
    assert!(sick.is_empty(), "{sick:?}");
}

fn cpu(periods: u64, throttled: u64, used_ms: f64, throttled_ms: f64) -> Sections {
    Sections {
        cpu: Some(Box::new(CpuReport {
            quota_ms: Some(20.0),
            period_ms: Some(100.0),
            periods,
            throttled_periods: throttled,
            throttled_ms,
            usage_ms: Some(used_ms),
            ..CpuReport::default()
        })),
        ..Sections::default()
    }
}

#[test]
fn throttling_calls_for_a_limit_sized_from_demand() {
    // 10 intervals of 10 periods: 20 ms used and 70 ms throttled per period, 90 ms of
    // demand; one interval wants 100. p95 of demand x 1.2, rounded up to the ms.
    let mut snapshots = vec![Snapshot::of_workloads(vec![
        workload(SICK, 7, cpu(0, 0, 0.0, 0.0)),
        workload(HEALTHY, 8, cpu(0, 0, 0.0, 0.0)),
    ])];
    let (mut used, mut throttled) = (0.0, 0.0);
    for i in 1..=10u64 {
        used += 200.0;
        throttled += if i == 10 { 800.0 } else { 700.0 };
        let mut s = Snapshot::of_workloads(vec![
            workload(SICK, 7, cpu(10 * i, 10 * i, used, throttled)),
            workload(HEALTHY, 8, cpu(10 * i, 0, 20.0 * i as f64, 0.0)),
        ]);
        s.duration_s = i as f64;
        snapshots.push(s);
    }
    let advice = advise(&snapshots, &inventory(), &Thresholds::default(), &Stub);
    assert_eq!(advice.len(), 1, "{advice:#?}");
    let a = &advice[0];
    assert_eq!(a.workloads[0].cgroup_path.as_deref(), Some(SICK));
    assert_eq!(
        (a.knob.as_str(), a.current.as_str()),
        ("cpu.max", "20000 100000")
    );
    // p95 of nine 90s and one 100: 95.5; x 1.2 = 114.6 -> 115 ms.
    assert_eq!(a.recommended, "115000 100000");
    assert!(a.notes[0].contains("1150m") && a.notes[0].contains("GOMAXPROCS"));
    // A user's threshold above the symptom: silence.
    let strict = Thresholds(BTreeMap::from([(Measure::CpuThrottledRatio, 1.5)]));
    assert!(advise(&snapshots, &inventory(), &strict, &Stub).is_empty());
}

fn block(queue_ns: u64, service_ns: u64) -> Sections {
    let mut report = BlockReport {
        device: "sda".into(),
        op: "read".into(),
        requests: 1000,
        ..BlockReport::default()
    };
    for (histogram, ns) in [
        (&mut report.queue_histogram, queue_ns),
        (&mut report.service_histogram, service_ns),
    ] {
        *histogram = LatencyHistogram {
            count: 1000,
            sum_ns: 1000 * ns,
            max_ns: ns,
            min_ns: ns,
            ..LatencyHistogram::ZERO
        };
        histogram.buckets[<LatencyHistogram>::bucket(ns)] = 1000;
    }
    Sections {
        block: vec![report],
        ..Sections::default()
    }
}

#[test]
fn queueing_on_an_ssd_calls_for_another_scheduler_then_a_deeper_queue() {
    let (sick, healthy, advice) = knobs(block(4_000_000, 1_000_000), block(100_000, 1_000_000));
    assert_eq!(sick, set(&["queue/scheduler"]), "{advice:#?}");
    assert!(healthy.is_empty());
    assert_eq!(advice[0].recommended, "none");
    assert_eq!(advice[0].evidence.device.as_deref(), Some("sda"));
    // With mq-deadline (the guides'), the queue depth instead.
    let mut inventory = inventory();
    inventory.devices[0].settings[0].value = "mq-deadline".into();
    let (sick, _, advice) =
        knobs_with(block(4_000_000, 1_000_000), Sections::default(), &inventory);
    assert_eq!(sick, set(&["queue/nr_requests"]));
    assert_eq!(advice[0].recommended, "128");
    // A rotational disk: reordering pays there, no advice.
    inventory.devices[0].settings[2].value = "1".into();
    assert!(
        knobs_with(block(4_000_000, 1_000_000), Sections::default(), &inventory)
            .0
            .is_empty()
    );
}

#[test]
fn the_same_knob_in_the_same_place_is_one_piece_of_advice() {
    // Two containers of one pod in one namespace, both overflowing.
    let start = Snapshot::of_workloads(vec![]);
    let mut end = Snapshot::of_workloads(vec![
        workload("/kubepods/podsick/c1", 7, listen(300, 700)),
        workload("/kubepods/podsick/c2", 7, listen(300, 700)),
    ]);
    end.duration_s = 10.0;
    let advice = advise(&[start, end], &inventory(), &Thresholds::default(), &Stub);
    assert_eq!(advice.len(), 1, "{advice:#?}");
    assert_eq!(advice[0].workloads.len(), 2);
}

/// `reads` reads and `writes` writes on `sda`; `slow` of the writes take 500 ms, the
/// rest 2 ms.
fn reads_and_writes(reads: u64, writes: u64, slow: u64) -> Sections {
    let histogram = |fast: u64, slow: u64| {
        let mut h = LatencyHistogram {
            count: fast + slow,
            sum_ns: fast * 2_000_000 + slow * 500_000_000,
            max_ns: if slow > 0 { 500_000_000 } else { 2_000_000 },
            min_ns: 2_000_000,
            ..LatencyHistogram::ZERO
        };
        h.buckets[<LatencyHistogram>::bucket(2_000_000)] += fast;
        h.buckets[<LatencyHistogram>::bucket(500_000_000)] += slow;
        h
    };
    let report = |op: &str, count: u64, slow: u64| BlockReport {
        device: "sda".into(),
        op: op.into(),
        requests: count,
        service_histogram: histogram(count - slow, slow),
        ..BlockReport::default()
    };
    Sections {
        block: vec![report("read", reads, 0), report("write", writes, slow)],
        ..Sections::default()
    }
}

#[test]
fn writes_per_read_call_for_noatime_only_on_a_strictatime_mount() {
    let mut inventory = inventory();
    inventory.mounts = vec![crate::tuning::MountSettings {
        mountpoint: "/data".into(),
        source: "/dev/sda".into(),
        fstype: "ext4".into(),
        settings: settings(&[("noatime", "off"), ("relatime", "off")]),
    }];
    let (sick, healthy, advice) = knobs_with(
        reads_and_writes(200, 150, 0),
        reads_and_writes(200, 10, 0),
        &inventory,
    );
    assert_eq!(sick, set(&["noatime"]));
    assert!(healthy.is_empty());
    let target = advice[0].target.as_ref().unwrap();
    assert_eq!((target.option, target.value.as_str()), ("--mount", "/data"));
    assert_eq!(
        advice[0].verify_command,
        "tuneprobe verify --exec 'mount -o remount,noatime /data' --revert-with 'mount -o \
         remount,strictatime /data' --expect writes_per_read:lower:50%"
    );
    // relatime (the default) writes access times once a day at most: not the cause.
    inventory.mounts[0].settings[1].value = "on".into();
    assert!(
        knobs_with(
            reads_and_writes(200, 150, 0),
            Sections::default(),
            &inventory
        )
        .0
        .is_empty()
    );
}

#[test]
fn write_bursts_call_for_earlier_writeback() {
    let (sick, healthy, advice) =
        knobs(reads_and_writes(0, 1000, 20), reads_and_writes(0, 1000, 0));
    assert_eq!(sick, set(&["vm.dirty_background_ratio"]));
    assert!(healthy.is_empty());
    assert_eq!(
        (advice[0].current.as_str(), advice[0].recommended.as_str()),
        ("10", "5")
    );
    // Slow throughout (every write 500 ms, no burst): the device, not writeback.
    assert!(
        knobs(reads_and_writes(0, 1000, 1000), Sections::default())
            .0
            .is_empty()
    );
}

/// An adviser holding the listen-overflow advice, for the generated references.
pub(crate) fn sample_adviser() -> Adviser {
    let (_, _, advice) = knobs(listen(300, 700), listen(0, 1000));
    let mut adviser = Adviser::new(std::time::Duration::from_secs(60));
    adviser.current = AdviceReport {
        window_s: 30.0,
        advice,
    };
    adviser
}

#[test]
fn the_live_adviser_keeps_a_snapshot_per_step_and_forgets_the_window_behind() {
    let mut adviser = Adviser::new(std::time::Duration::from_secs(60));
    let at = |s: f64, overflows: u64, accepted: u64| {
        let mut snapshot =
            Snapshot::of_workloads(vec![workload(SICK, 7, listen(overflows, accepted))]);
        snapshot.duration_s = s;
        snapshot
    };
    // Overflowing for the first minute: advice once two snapshots span time.
    assert!(adviser.observe(&at(0.0, 0, 0), &inventory(), &Stub));
    assert!(adviser.current.advice.is_empty());
    assert!(
        !adviser.observe(&at(5.0, 150, 350), &inventory(), &Stub),
        "within a step"
    );
    assert!(adviser.observe(&at(10.0, 300, 700), &inventory(), &Stub));
    assert_eq!(adviser.current.advice.len(), 1);
    assert_eq!(adviser.current.window_s, 10.0);
    // Then a minute and more without overflows: the window slides past them.
    for step in 2..=20u32 {
        let s = 10.0 * f64::from(step);
        adviser.observe(
            &at(s, 300, 700 + 1000 * u64::from(step)),
            &inventory(),
            &Stub,
        );
    }
    assert!(adviser.current.advice.is_empty(), "{:#?}", adviser.current);
    assert!(
        adviser.current.window_s <= 70.0,
        "{}",
        adviser.current.window_s
    );
    assert!(adviser.snapshots_kept() <= 8);
}

/// A pod's DNS: `answered` queries to `resolver`, each taking `ms`.
fn dns(resolver: &str, answered: u64, ms: u64) -> Sections {
    use crate::signals::dns::{DnsLatencySeries, DnsReport, ResolverReport};
    use probe_common::DnsHistogram;
    let mut histogram = DnsHistogram {
        count: answered,
        sum_ns: answered * ms * 1_000_000,
        max_ns: ms * 1_000_000,
        min_ns: ms * 1_000_000,
        ..DnsHistogram::ZERO
    };
    histogram.buckets[<DnsHistogram>::bucket(ms * 1_000_000)] = answered;
    Sections {
        dns: Some(Box::new(DnsReport {
            queries: answered,
            responses: answered,
            by_resolver: BTreeMap::from([(
                resolver.to_string(),
                ResolverReport {
                    queries: answered,
                    responses: answered,
                    ..ResolverReport::default()
                },
            )]),
            latency_series: vec![DnsLatencySeries {
                resolver: resolver.to_string(),
                rcode: "NOERROR".into(),
                histogram,
            }],
            ..DnsReport::default()
        })),
        ..Sections::default()
    }
}

#[test]
fn a_slow_cluster_resolver_calls_for_a_node_local_cache() {
    let (sick, healthy, advice) = knobs(dns("10.96.0.10", 40, 300), dns("10.96.0.10", 40, 2));
    assert_eq!(sick, set(&["nodelocaldns"]));
    assert!(healthy.is_empty());
    let a = &advice[0];
    assert_eq!((a.current.as_str(), a.recommended.as_str()), ("off", "on"));
    assert!(a.target.is_none());
    assert!(a.notes[0].contains("not a sysctl") && a.notes[0].contains("10.96.0.10"));
    assert!(
        a.verify_command
            .contains("--expect dns_latency_p99_ms:lower:50%")
    );
    // Already on the node-local cache: nothing left to recommend.
    assert!(
        knobs(dns("169.254.20.10", 40, 300), Sections::default())
            .0
            .is_empty()
    );
    // Too few answers to call it a pattern.
    assert!(
        knobs(dns("10.96.0.10", 3, 300), Sections::default())
            .0
            .is_empty()
    );
}
