//! TCP retransmits and drops, produced deterministically in the test's own namespaces and
//! cgroups, checked against the kernel's own counters. Runs the real programs in the real
//! kernel (root required); other traffic on the machine is ignored by filtering on the
//! test's cgroup ids and namespace inodes.

use std::time::Duration;

use tuneprobe::{Collector, LoadOptions, Probe, Snapshot, report::Workload as Report};
use tuneprobe_tests::{
    ADDR_B, NetnsPair, NftTable, PodCgroup, Workload, finish_collector as finish, sh,
    start_collector as start,
};

const WAIT: Duration = Duration::from_secs(30);

fn by_cgroup(snapshot: &Snapshot, cgroup_id: u64) -> Option<&Report> {
    snapshot
        .workloads
        .iter()
        .find(|w| w.identity.cgroup_id == Some(cgroup_id))
}

fn drops(snapshot: &Snapshot, cgroup_id: u64, reason: &str) -> u64 {
    by_cgroup(snapshot, cgroup_id)
        .and_then(|w| w.signals.drops.by_reason.get(reason).copied())
        .unwrap_or(0)
}

#[test]
fn first_data_packet_dropped_gives_retransmits_to_the_sending_container() {
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let lossy = pod.container();
    let clean = pod.container();
    let mut sink = Workload::spawn(&pair.b, None, &["tcp-sink", &format!("{ADDR_B}:5001")]);
    assert_eq!(sink.read_line(), "ready");
    let mut sink2 = Workload::spawn(&pair.b, None, &["tcp-sink", &format!("{ADDR_B}:5002")]);
    assert_eq!(sink2.read_line(), "ready");
    // Drops exactly one packet: the first data segment to port 5001.
    let nft = NftTable::with_rule(
        &pair,
        &pair.b,
        "input",
        "tcp dport 5001 meta length > 200 limit rate 1/hour burst 1 packets counter drop",
    );

    let collector = start();
    let segs_before = pair.counter(&pair.a, "snmp", "Tcp", "RetransSegs");
    Workload::spawn(
        &pair.a,
        Some(&lossy),
        &["tcp-send", &format!("{ADDR_B}:5001"), "1000000"],
    )
    .wait(WAIT);
    let segs_lossy = pair.counter(&pair.a, "snmp", "Tcp", "RetransSegs") - segs_before;
    // Negative control: the same send from another container, to a port nothing drops.
    Workload::spawn(
        &pair.a,
        Some(&clean),
        &["tcp-send", &format!("{ADDR_B}:5002"), "1000000"],
    )
    .wait(WAIT);
    let segs_total = pair.counter(&pair.a, "snmp", "Tcp", "RetransSegs") - segs_before;
    let snapshot = finish(collector);

    assert_eq!(nft.packets(), 1, "the rule drops exactly one packet");
    assert!(segs_lossy >= 1, "the kernel retransmitted nothing?");
    let tcp = by_cgroup(&snapshot, lossy.cgroup_id)
        .unwrap_or_else(|| panic!("no workload for the sender: {:#?}", snapshot.workloads))
        .signals
        .tcp;
    assert!(tcp.retransmits >= 1, "{tcp:?}");
    assert!(
        tcp.retransmits <= segs_lossy,
        "{tcp:?} vs RetransSegs +{segs_lossy}"
    );
    // Every retransmitted segment is in the sender netns's RetransSegs, and only ours are.
    assert_eq!(tcp.retransmitted_segments, segs_lossy, "{tcp:?}");
    assert_eq!(tcp.failed_retransmits, 0);
    let sender = by_cgroup(&snapshot, lossy.cgroup_id).unwrap();
    assert_eq!(sender.identity.pod_uid.as_deref(), Some(pod.uid.as_str()));
    assert_eq!(
        sender.identity.container_id.as_deref(),
        Some(lossy.container_id.as_str())
    );
    assert_eq!(sender.identity.netns, Some(NetnsPair::inode(&pair.a)));

    assert_eq!(segs_total, segs_lossy, "the clean send retransmitted");
    let clean_tcp = by_cgroup(&snapshot, clean.cgroup_id)
        .map(|w| w.signals.tcp)
        .unwrap_or_default();
    assert_eq!(
        clean_tcp.retransmits + clean_tcp.failed_retransmits,
        0,
        "{clean_tcp:?}"
    );
}

#[test]
fn udp_to_a_closed_port_is_no_socket_for_the_pod_in_the_receiving_netns() {
    const N: u64 = 40;
    let pair = NetnsPair::new();
    let mut receiver = PodCgroup::new();
    let receiver_app = receiver.container();
    let mut sender = PodCgroup::new();
    let sender_app = sender.container();
    // The receiving pod: a process living in namespace B, in the pod's container.
    let mut pause = Workload::spawn(&pair.b, Some(&receiver_app), &["pause"]);
    assert_eq!(pause.read_line(), "ready");

    let collector = start();
    let sent = Workload::spawn(
        &pair.a,
        Some(&sender_app),
        &["udp-send", &format!("{ADDR_B}:9"), &N.to_string(), "100"],
    )
    .wait(WAIT);
    assert_eq!(sent.trim(), format!("sent {N}"));
    let snapshot = finish(collector);

    let pod = by_cgroup(&snapshot, receiver.pod_id()).unwrap_or_else(|| {
        panic!(
            "no workload for the receiving pod: {:#?}",
            snapshot.workloads
        )
    });
    assert_eq!(
        pod.signals.drops.by_reason.get("NO_SOCKET"),
        Some(&N),
        "{pod:#?}"
    );
    assert_eq!(pod.identity.pod_uid.as_deref(), Some(receiver.uid.as_str()));
    assert_eq!(
        pod.identity.container_id, None,
        "attributed to the pod, not a container"
    );
    assert_eq!(pod.identity.netns, Some(NetnsPair::inode(&pair.b)));
    assert_eq!(
        pod.identity.cgroup_path.as_deref(),
        Some(receiver.pod_path.as_str())
    );
    // Negative control: the sender saw no drops of its own.
    assert_eq!(drops(&snapshot, sender_app.cgroup_id, "NO_SOCKET"), 0);
    assert_eq!(drops(&snapshot, sender.pod_id(), "NO_SOCKET"), 0);
}

#[test]
fn nft_drop_rule_is_netfilter_drop_one_per_packet() {
    const N: u64 = 30;
    let pair = NetnsPair::new();
    let mut receiver = PodCgroup::new();
    let app = receiver.container();
    let mut pause = Workload::spawn(&pair.b, Some(&app), &["pause"]);
    assert_eq!(pause.read_line(), "ready");
    let nft = NftTable::with_rule(&pair, &pair.b, "input", "udp dport 7000 counter drop");

    let collector = start();
    Workload::spawn(
        &pair.a,
        None,
        &["udp-send", &format!("{ADDR_B}:7000"), &N.to_string(), "64"],
    )
    .wait(WAIT);
    let snapshot = finish(collector);

    assert_eq!(nft.packets(), N);
    assert_eq!(
        drops(&snapshot, receiver.pod_id(), "NETFILTER_DROP"),
        N,
        "{:#?}",
        snapshot.workloads
    );
    assert_eq!(
        drops(&snapshot, receiver.pod_id(), "NO_SOCKET"),
        0,
        "the rule drops before the socket lookup"
    );
}

#[test]
fn full_receive_buffer_is_socket_rcvbuff_for_the_receiving_container() {
    let pair = NetnsPair::new();
    let mut receiver = PodCgroup::new();
    let app = receiver.container();
    let mut sink = Workload::spawn(
        &pair.b,
        Some(&app),
        &["udp-sink", &format!("{ADDR_B}:7001"), "4096"],
    );
    assert_eq!(sink.read_line(), "ready");

    let collector = start();
    let udp = |name| pair.counter(&pair.b, "snmp", "Udp", name);
    let (before, delivered_before) = (udp("RcvbufErrors"), udp("InDatagrams"));
    Workload::spawn(
        &pair.a,
        None,
        &["udp-send", &format!("{ADDR_B}:7001"), "200", "1000"],
    )
    .wait(WAIT);
    let overflowed = udp("RcvbufErrors") - before;
    let delivered = udp("InDatagrams") - delivered_before;
    let snapshot = finish(collector);

    assert!(
        overflowed > 100,
        "a 4 KiB buffer should overflow: {overflowed}"
    );
    assert_eq!(
        drops(&snapshot, app.cgroup_id, "SOCKET_RCVBUFF"),
        overflowed,
        "{:#?}",
        snapshot.workloads
    );
    // The load `rcvbuf_drop_ratio` divides by: the namespace's datagrams that reached a
    // socket, delivered or refused, as the kernel counts them (the sink's buffer held a
    // few; the rest overflowed; the first few of the 200 may wait on neighbour
    // resolution and be lost before any socket).
    let app_drops = &by_cgroup(&snapshot, app.cgroup_id)
        .expect("the receiving container")
        .signals
        .drops;
    assert_eq!(app_drops.received_datagrams, delivered + overflowed);
    assert!(delivered + overflowed > 190 && delivered + overflowed <= 200);
    // The receiving namespace's packets only: the sender's namespace is not its load.
    assert!(
        app_drops.received_packets >= delivered + overflowed,
        "{app_drops:?}"
    );
    assert_eq!(app_drops.forwarded_packets, 0);
}

#[test]
fn tbf_overflow_is_qdisc_drop_for_the_sending_container() {
    let pair = NetnsPair::new();
    let mut sender = PodCgroup::new();
    let app = sender.container();
    sh(&[
        "tc",
        "-n",
        &pair.a,
        "qdisc",
        "add",
        "dev",
        &pair.dev_a,
        "root",
        "tbf",
        "rate",
        "10mbit",
        "burst",
        "5kb",
        "limit",
        "10kb",
    ]);

    let collector = start();
    Workload::spawn(
        &pair.a,
        Some(&app),
        &["udp-send", &format!("{ADDR_B}:7002"), "400", "1000"],
    )
    .wait(WAIT);
    let stats = sh(&[
        "tc",
        "-n",
        &pair.a,
        "-s",
        "qdisc",
        "show",
        "dev",
        &pair.dev_a,
    ]);
    let snapshot = finish(collector);

    let dropped: u64 = stats
        .split("dropped ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped count in {stats}"));
    assert!(
        dropped > 100,
        "tbf should drop most of a 400 KB burst: {stats}"
    );
    assert_eq!(
        drops(&snapshot, app.cgroup_id, "QDISC_DROP"),
        dropped,
        "{:#?}",
        snapshot.workloads
    );
}

#[test]
fn listen_backlog_overflow_is_its_own_reason_for_the_listening_pod() {
    let pair = NetnsPair::new();
    let mut server = PodCgroup::new();
    let app = server.container();
    let mut listener = Workload::spawn(
        &pair.b,
        Some(&app),
        &["tcp-listen", &format!("{ADDR_B}:8000"), "1"],
    );
    assert_eq!(listener.read_line(), "ready");

    let collector = start();
    let before = pair.counter(&pair.b, "netstat", "TcpExt", "ListenOverflows");
    Workload::spawn(
        &pair.a,
        None,
        &["tcp-connect-burst", &format!("{ADDR_B}:8000"), "10", "300"],
    )
    .wait(WAIT);
    let overflows = pair.counter(&pair.b, "netstat", "TcpExt", "ListenOverflows") - before;
    let snapshot = finish(collector);

    assert!(overflows > 0, "backlog 1 with 10 connects must overflow");
    assert_eq!(
        drops(&snapshot, server.pod_id(), "TCP_LISTEN_OVERFLOW"),
        overflows,
        "{:#?}",
        snapshot.workloads
    );
}

#[test]
fn a_full_drop_map_counts_the_lost_updates() {
    const N: u64 = 20;
    let pair = NetnsPair::new();
    let options = LoadOptions {
        // One slot: whatever drop comes first takes it, every other key overflows.
        map_max_entries: vec![(probe_common::drops::DROPS_MAP, 1)],
        ..LoadOptions::default()
    };
    let probe = Probe::load(&options).unwrap_or_else(|e| panic!("load: {e:#}"));
    let collector = Collector::start(probe).unwrap();
    // Two distinct keys of our own: NO_SOCKET in B, then NETFILTER_DROP in B.
    let _nft = NftTable::with_rule(&pair, &pair.b, "input", "udp dport 7003 counter drop");
    Workload::spawn(
        &pair.a,
        None,
        &["udp-send", &format!("{ADDR_B}:9"), &N.to_string(), "64"],
    )
    .wait(WAIT);
    Workload::spawn(
        &pair.a,
        None,
        &["udp-send", &format!("{ADDR_B}:7003"), &N.to_string(), "64"],
    )
    .wait(WAIT);
    let snapshot = finish(collector);

    let lost = snapshot.map_overflows["DROPS"];
    assert!(
        lost >= N,
        "at least one of our two keys found the map full: lost {lost}"
    );
    // The rest keeps working: the retransmit map is unaffected.
    assert_eq!(snapshot.map_overflows["TCP_RETRANSMITS"], 0);
}

#[test]
fn btf_without_the_needed_fields_is_a_clear_error() {
    let dir = std::env::temp_dir().join(tuneprobe_tests::unique("tuneprobe-btf-"));
    std::fs::write(&dir, b"not BTF at all").unwrap();
    let options = LoadOptions {
        btf_path: Some(dir.clone()),
        ..LoadOptions::default()
    };
    let err = Probe::load(&options)
        .err()
        .expect("garbage BTF must not load")
        .to_string();
    let _ = std::fs::remove_file(&dir);
    assert!(
        err.contains("BTF") && err.contains(&dir.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_deleted_pod_leaves_the_report_after_the_grace_period() {
    const N: u64 = 10;
    let pair = NetnsPair::new();
    let mut receiver = PodCgroup::new();
    let app = receiver.container();
    let pod_id = receiver.pod_id();
    let mut pause = Workload::spawn(&pair.b, Some(&app), &["pause"]);
    assert_eq!(pause.read_line(), "ready");

    let grace = Duration::from_secs(1);
    let probe = Probe::load(&LoadOptions::default()).unwrap_or_else(|e| panic!("load: {e:#}"));
    let options = tuneprobe::window::CollectorOptions {
        pod_grace: grace,
        ..Default::default()
    };
    let mut collector = Collector::start_with(probe, options).unwrap();
    Workload::spawn(
        &pair.a,
        None,
        &["udp-send", &format!("{ADDR_B}:9"), &N.to_string(), "64"],
    )
    .wait(WAIT);
    let before = collector.report().unwrap();
    assert_eq!(drops(&before, pod_id, "NO_SOCKET"), N);

    // The pod goes away: its processes, then its cgroups.
    drop(pause);
    drop(receiver);
    let within_grace = collector.report().unwrap();
    assert_eq!(
        drops(&within_grace, pod_id, "NO_SOCKET"),
        N,
        "still there during the grace period"
    );
    std::thread::sleep(grace + Duration::from_millis(300));
    let after = collector.report().unwrap();
    assert!(
        by_cgroup(&after, pod_id).is_none(),
        "{:#?}",
        after.workloads
    );
}

/// A container that lives less than a scan (created and removed between two of them):
/// its cgroup can no longer be named, but its network namespace still says whose pod it
/// was, so its retransmits go to that pod (names included), not to a bare cgroup id.
#[test]
fn a_container_gone_before_any_scan_is_still_its_pods() {
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let keeper = pod.container();
    let mut pause = Workload::spawn(&pair.a, Some(&keeper), &["pause"]);
    assert_eq!(pause.read_line(), "ready");
    let mut sink = Workload::spawn(&pair.b, None, &["tcp-sink", &format!("{ADDR_B}:5003")]);
    assert_eq!(sink.read_line(), "ready");
    let nft = NftTable::with_rule(
        &pair,
        &pair.b,
        "input",
        "tcp dport 5003 meta length > 200 limit rate 1/hour burst 1 packets counter drop",
    );
    let logs = std::env::temp_dir().join(tuneprobe_tests::unique("tuneprobe-logs-"));
    std::fs::create_dir_all(logs.join(format!("pods/shop_batch-1_{}/job", pod.uid))).unwrap();
    let options = tuneprobe::window::CollectorOptions {
        pod_logs_dir: logs.join("pods"),
        kube_api: None,
        cri_socket: tuneprobe::window::CriSocket::None,
        ..Default::default()
    };
    let probe = Probe::load(&LoadOptions::default()).unwrap_or_else(|e| panic!("load: {e:#}"));
    let collector = Collector::start_with(probe, options).unwrap();

    // The short-lived container: created after the collector's scan, gone before the next.
    let job = pod.container();
    let before = pair.counter(&pair.a, "snmp", "Tcp", "RetransSegs");
    Workload::spawn(
        &pair.a,
        Some(&job),
        &["tcp-send", &format!("{ADDR_B}:5003"), "1000000"],
    )
    .wait(WAIT);
    let segments = pair.counter(&pair.a, "snmp", "Tcp", "RetransSegs") - before;
    for dir in job.dirs.iter().rev() {
        std::fs::remove_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    let snapshot = finish(collector);
    let _ = std::fs::remove_dir_all(&logs);

    assert_eq!(nft.packets(), 1);
    let entry = by_cgroup(&snapshot, job.cgroup_id)
        .unwrap_or_else(|| panic!("no entry for the gone container: {:#?}", snapshot.workloads));
    assert_eq!(entry.identity.cgroup_path, None, "its path was never seen");
    assert_eq!(
        entry.signals.tcp.retransmitted_segments, segments,
        "RetransSegs +{segments}"
    );
    assert_eq!(entry.identity.pod_uid.as_deref(), Some(pod.uid.as_str()));
    assert_eq!(
        (
            entry.identity.namespace.as_deref(),
            entry.identity.pod.as_deref(),
            entry.identity.container.as_deref()
        ),
        (Some("shop"), Some("batch-1"), None)
    );
    assert_eq!(entry.identity.netns, Some(NetnsPair::inode(&pair.a)));
    // Negative control: the pod's live container sent nothing.
    let keeper_tcp = by_cgroup(&snapshot, keeper.cgroup_id)
        .map(|w| w.signals.tcp)
        .unwrap_or_default();
    assert_eq!(keeper_tcp.retransmits, 0);
}
