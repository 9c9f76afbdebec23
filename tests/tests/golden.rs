//! Golden shapes: the exact JSON keys of `snapshot --json` and `trace all --json`, and
//! the exact `/metrics` families with their label names, produced by one pod that shows
//! every signal at once. They pin the published formats, so that moving code between
//! modules cannot change them unnoticed. Values are not pinned here (every other test
//! checks them against the kernel's counters); names, nesting and types are.
//!
//! Maps whose keys are data (drop reasons, response codes, query types, resolvers) are
//! pinned as `*`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use tuneprobe_tests::{
    ADDR_A, ADDR_B, Container, LoopDevice, NetnsPair, NftTable, PodCgroup, Running, Workload,
    free_port, http_get, testload, tuneprobe_binary, wait_for_metrics,
};

/// Object keys that are data, not format.
const DATA_KEYED: [&str; 4] = ["by_reason", "by_rcode", "by_qtype", "by_resolver"];

/// Every node's path, with `: object` or `: array` for the containers. Scalars are
/// pinned by path alone: whether a value is `null` (a percentile without samples, an
/// unknown pod name) is data.
fn shape(value: &Value, path: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Array(items) => {
            out.insert(format!("{path}: array"));
            items
                .iter()
                .for_each(|item| shape(item, &format!("{path}[]"), out));
        }
        Value::Object(fields) => {
            out.insert(format!("{path}: object"));
            let data_keyed = DATA_KEYED.iter().any(|k| path.ends_with(k));
            for (key, field) in fields {
                let key = if data_keyed { "*" } else { key.as_str() };
                shape(field, &format!("{path}.{key}"), out);
            }
        }
        _ => {
            out.insert(path.to_string());
        }
    }
}

fn shape_of(value: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    shape(value, "", &mut out);
    out
}

fn assert_same(name: &str, actual: &BTreeSet<String>, expected: &[&str]) {
    let expected: BTreeSet<String> = expected
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    let missing: Vec<&String> = expected.difference(actual).collect();
    let extra: Vec<&String> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name} changed shape\nmissing: {missing:#?}\nextra: {extra:#?}\nwhole: {actual:#?}"
    );
}

/// One container in its own pod with every signal: egress UDP drops by an nft rule in
/// its namespace, a TCP flow through a loss of every 50th segment, DNS to a server that
/// answers after 20 ms, direct reads from a loop device and a busy loop under a 20 ms
/// quota. Returns what keeps it alive.
struct Scenario {
    pair: NetnsPair,
    _pod: PodCgroup,
    container: Container,
    disk: LoopDevice,
}

fn scenario() -> Scenario {
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::with_controllers(&["cpu", "cpuacct", "blkio"]);
    let container = pod.container();
    let dir = container.cpu_dir();
    if dir.join("cpu.max").exists() {
        fs::write(dir.join("cpu.max"), "20000 100000").unwrap();
    } else {
        fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
        fs::write(dir.join("cpu.cfs_quota_us"), "20000").unwrap();
    }
    let disk = LoopDevice::new(16);
    Scenario {
        pair,
        _pod: pod,
        container,
        disk,
    }
}

/// Runs every signal's load in the scenario's container, concurrently, and waits for
/// it; halfway through the busy loop the quota is raised to 100 ms, a change that
/// `serve` judges.
fn load(s: &Scenario) {
    let (pair, container) = (&s.pair, &s.container);
    let _egress = NftTable::with_rule(pair, &pair.a, "output", "udp dport 9999 drop");
    let _loss = NftTable::with_rule(
        pair,
        &pair.b,
        "input",
        "tcp dport 7400 numgen inc mod 50 == 0 drop",
    );
    let mut sink = Workload::spawn(&pair.b, None, &["tcp-sink", &format!("{ADDR_B}:7400")]);
    assert_eq!(sink.read_line(), "ready");
    // A connection the container accepts, for `tuneprobe_tcp_passive_opens_total`. A
    // namespace's TCP load counts from serve's first reading of it (its one-second
    // tick, once a process lives there), so the connection comes well after that.
    let mut accepting = Workload::spawn(
        &pair.a,
        Some(container),
        &["tcp-sink", &format!("{ADDR_A}:7401")],
    );
    assert_eq!(accepting.read_line(), "ready");
    thread::sleep(Duration::from_millis(2500));
    Workload::spawn(
        &pair.b,
        None,
        &["tcp-send", &format!("{ADDR_A}:7401"), "100000"],
    )
    .wait(Duration::from_secs(10));
    let flow = Workload::spawn(
        &pair.a,
        Some(container),
        &["tcp-send", &format!("{ADDR_B}:7400"), "4000000"],
    );
    let (_server, _queries) = tuneprobe_tests::dns_with_a_20ms_server(pair, container);
    let drops = Workload::spawn(
        &pair.a,
        Some(container),
        &["udp-send", &format!("{ADDR_B}:9999"), "20", "100"],
    );
    let busy = Workload::spawn_program(None, Some(container), &testload(), &["busy", "9000"]);
    let started = std::time::Instant::now();
    let reads = Workload::spawn_program(
        None,
        Some(container),
        Path::new("fio"),
        &[
            "--name=golden",
            &format!("--filename={}", s.disk.device),
            "--direct=1",
            "--rw=randread",
            "--bs=4k",
            "--iodepth=1",
            "--ioengine=psync",
            "--number_ios=50",
            "--size=8m",
            "--output-format=json",
        ],
    );
    let wait = Duration::from_secs(30);
    flow.wait(wait);
    drops.wait(wait);
    reads.wait(wait);
    // A full before window of `--verify-window 3s`, then the change.
    thread::sleep(Duration::from_millis(4500).saturating_sub(started.elapsed()));
    // Two CPUs' worth: the busy thread is never throttled after it, so no verdict
    // carries the note of a limit still below demand (at exactly one CPU a loaded
    // machine still throttled over half the periods now and then, and the shape then
    // had `notes[]`).
    let dir = container.cpu_dir();
    if dir.join("cpu.max").exists() {
        fs::write(dir.join("cpu.max"), "200000 100000").unwrap();
    } else {
        fs::write(dir.join("cpu.cfs_quota_us"), "200000").unwrap();
    }
    busy.wait(wait);
    // A few answered queries more.
    thread::sleep(Duration::from_millis(300));
}

/// Starts `tuneprobe ARGS` and waits for its `ready` line.
fn start_ready(args: &[&str]) -> (Running, thread::JoinHandle<String>) {
    let mut child = Command::new(tuneprobe_binary())
        .args(args)
        .args(["--kube-api", "none", "--pod-logs-dir", "/nonexistent"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines().map_while(Result::ok);
    assert!(
        lines.by_ref().any(|l| l.contains("ready")),
        "tuneprobe {args:?} never got ready"
    );
    thread::spawn(move || lines.for_each(drop));
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
        out
    });
    (Running(child), reader)
}

#[test]
fn snapshot_trace_and_metrics_keep_their_shape() {
    let s = scenario();
    let port = free_port();
    let _serve = tuneprobe_tests::spawn_serve(port, &["--verify-window", "3s"]);
    wait_for_metrics(port, "tuneprobe_probe_attached");
    let (_snapshot, snapshot_out) = start_ready(&["snapshot", "--for", "16s", "--json"]);
    let (mut trace, trace_out) = start_ready(&[
        "trace",
        "all",
        "--json",
        "--cgroup",
        &s.container.path,
        "--for",
        "16s",
    ]);
    load(&s);

    // serve's judgement of the quota change, final 3 s after it.
    let scope = format!("cgroup:{}", s.container.path);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let change = loop {
        let (_, body) = http_get(port, "/changes").expect("serve answers");
        let changes: Value = serde_json::from_str(&body).unwrap();
        let ours = changes
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["change"]["scope"] == scope.as_str() && c["final"] == true)
            .cloned();
        if let Some(change) = ours {
            break change;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no final verdict for {scope}: {changes:#}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    let (_, metrics) = http_get(port, "/metrics").expect("serve answers");
    let snapshot: Value = serde_json::from_str(&snapshot_out.join().unwrap()).unwrap();
    let _ = trace.0.wait();
    let trace = trace_out.join().unwrap();

    // snapshot: the document around the workloads, then our workload.
    let mut outer = snapshot.clone();
    outer["workloads"] = Value::Array(Vec::new());
    assert_same("snapshot", &shape_of(&outer), SNAPSHOT);
    let ours = snapshot["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["cgroup_path"] == s.container.path.as_str())
        .unwrap_or_else(|| panic!("no {} in {snapshot:#}", s.container.path));
    assert_same("snapshot workload", &shape_of(ours), WORKLOAD);

    assert_same("/changes", &shape_of(&change), CHANGE);

    // trace: the keys of each signal's events.
    let mut by_signal: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in trace.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        let signal = event["signal"].as_str().unwrap().to_string();
        by_signal
            .entry(signal)
            .or_default()
            .extend(shape_of(&event));
    }
    for (signal, expected) in TRACE {
        let actual = by_signal
            .get(*signal)
            .unwrap_or_else(|| panic!("no {signal} event in {trace}"));
        assert_same(&format!("trace {signal}"), actual, expected);
    }
    assert_eq!(by_signal.len(), TRACE.len(), "{:?}", by_signal.keys());

    // metrics: every family with its type and label names.
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.entry(name.to_string()).or_default().0 = kind.to_string();
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap();
            let name = &line[..name_end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|f| families.get(*f).is_some_and(|(k, _)| k == "histogram"))
                })
                .unwrap_or(name);
            let labels = labels_of(&line[name_end..]);
            families
                .entry(family.to_string())
                .or_default()
                .1
                .extend(labels);
        }
    }
    let mut pinned = BTreeSet::new();
    for (name, kind, labels) in METRICS {
        pinned.insert(*name);
        let (actual_kind, actual_labels) = families
            .get(*name)
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"));
        assert_eq!(actual_kind, kind, "{name}");
        let expected: BTreeSet<String> = labels
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        assert_eq!(actual_labels, &expected, "labels of {name}");
    }
    let unpinned: Vec<&String> = families
        .keys()
        .filter(|f| !pinned.contains(f.as_str()))
        .collect();
    assert!(
        unpinned.is_empty(),
        "families not pinned here: {unpinned:?}"
    );
}

/// Label names of one sample line's `{...}` part (`le` of histogram buckets included).
fn labels_of(rest: &str) -> Vec<String> {
    let Some(body) = rest.strip_prefix('{') else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut chars = body.chars().peekable();
    let mut name = String::new();
    while let Some(c) = chars.next() {
        match c {
            '=' => {
                names.push(std::mem::take(&mut name));
                // Skip the quoted value, escapes included.
                assert_eq!(chars.next(), Some('"'));
                while let Some(v) = chars.next() {
                    match v {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            ',' => {}
            '}' => break,
            c => name.push(c),
        }
    }
    names
}

/// `snapshot --json` around its `workloads`.
const SNAPSHOT: &[&str] = &[
    ".duration_s",
    ".gc_deleted_entries.BLOCK_IO",
    ".gc_deleted_entries.CPU_THROTTLE",
    ".gc_deleted_entries.DNS_COUNTERS",
    ".gc_deleted_entries.DNS_IN_FLIGHT",
    ".gc_deleted_entries.DNS_LATENCY",
    ".gc_deleted_entries.DROPS",
    ".gc_deleted_entries.TCP_CONNECTIONS",
    ".gc_deleted_entries.TCP_CONNECTION_TIMES",
    ".gc_deleted_entries.TCP_RETRANSMITS",
    ".gc_deleted_entries: object",
    ".map_overflows.BLOCK_IN_FLIGHT",
    ".map_overflows.BLOCK_IO",
    ".map_overflows.CPU_THROTTLE",
    ".map_overflows.DNS_COUNTERS",
    ".map_overflows.DNS_IN_FLIGHT",
    ".map_overflows.DNS_LATENCY",
    ".map_overflows.DROPS",
    ".map_overflows.TCP_CONNECTIONS",
    ".map_overflows.TCP_CONNECTION_TIMES",
    ".map_overflows.TCP_RETRANSMITS",
    ".map_overflows: object",
    ".probes: array",
    ".probes[].attached",
    ".probes[].error",
    ".probes[].name",
    ".probes[].signal",
    ".probes[]: object",
    ".program_stats: array",
    ".program_stats[].name",
    ".program_stats[].run_count",
    ".program_stats[].run_time_ns",
    ".program_stats[]: object",
    ".workloads: array",
    ": object",
];
/// One workload of `snapshot --json` with every signal.
const WORKLOAD: &[&str] = &[
    ".connections.accepted",
    ".connections.closed",
    ".connections.connect_attempts",
    ".connections.connected",
    ".connections.duration_ms.max",
    ".connections.duration_ms.mean",
    ".connections.duration_ms.p50",
    ".connections.duration_ms.p99",
    ".connections.duration_ms: object",
    ".connections.failed.other",
    ".connections.failed.port_exhaustion",
    ".connections.failed.refused",
    ".connections.failed.reset",
    ".connections.failed.timed_out",
    ".connections.failed: object",
    ".connections.min_rtt_ms.max",
    ".connections.min_rtt_ms.mean",
    ".connections.min_rtt_ms.p50",
    ".connections.min_rtt_ms.p99",
    ".connections.min_rtt_ms: object",
    ".connections.resets_received",
    ".connections.resets_sent",
    ".connections.srtt_ms.max",
    ".connections.srtt_ms.mean",
    ".connections.srtt_ms.p50",
    ".connections.srtt_ms.p99",
    ".connections.srtt_ms: object",
    ".connections.time_wait",
    ".connections: object",
    ".block: array",
    ".block[].bytes",
    ".block[].device",
    ".block[].errors",
    ".block[].op",
    ".block[].queue_ms.max",
    ".block[].queue_ms.mean",
    ".block[].queue_ms.p50",
    ".block[].queue_ms.p99",
    ".block[].queue_ms: object",
    ".block[].requests",
    ".block[].scheduler",
    ".block[].service_ms.max",
    ".block[].service_ms.mean",
    ".block[].service_ms.p50",
    ".block[].service_ms.p99",
    ".block[].service_ms: object",
    ".block[]: object",
    ".cgroup_id",
    ".cgroup_path",
    ".container",
    ".container_id",
    ".cpu.period_ms",
    ".cpu.periods",
    ".cpu.quota_ms",
    ".cpu.stall_ms.max",
    ".cpu.stall_ms.mean",
    ".cpu.stall_ms.p50",
    ".cpu.stall_ms.p99",
    ".cpu.stall_ms: object",
    ".cpu.stall_total_ms",
    ".cpu.throttle_events",
    ".cpu.throttled_ms",
    ".cpu.throttled_periods",
    // Added with the verdicts by each knob's own load (issue 20).
    ".cpu.usage_ms",
    ".cpu: object",
    ".dns.by_qtype.*",
    ".dns.by_qtype: object",
    ".dns.by_rcode.*",
    ".dns.by_rcode: object",
    ".dns.by_resolver.*.latency_ms.max",
    ".dns.by_resolver.*.latency_ms.p50",
    ".dns.by_resolver.*.latency_ms.p90",
    ".dns.by_resolver.*.latency_ms.p99",
    ".dns.by_resolver.*.latency_ms: object",
    ".dns.by_resolver.*.queries",
    ".dns.by_resolver.*.responses",
    ".dns.by_resolver.*.timeouts",
    ".dns.by_resolver.*: object",
    ".dns.by_resolver: object",
    ".dns.latency_ms.max",
    ".dns.latency_ms.p50",
    ".dns.latency_ms.p90",
    ".dns.latency_ms.p99",
    ".dns.latency_ms: object",
    ".dns.malformed",
    ".dns.queries",
    ".dns.responses",
    ".dns.timeouts",
    ".dns.unmatched_responses",
    ".dns: object",
    ".drops.by_reason.*",
    ".drops.by_reason: object",
    ".drops.total",
    ".drops.conntrack_full",
    ".drops.forwarded_packets",
    ".drops.received_datagrams",
    ".drops.received_packets",
    ".drops: object",
    ".namespace",
    ".netns",
    ".pod",
    ".pod_uid",
    ".tcp.failed_retransmits",
    ".tcp.passive_opens",
    ".tcp.retransmits",
    ".tcp.retransmitted_segments",
    ".tcp.sent_segments",
    ".tcp.rcvq_drops",
    ".tcp.rcvq_prunes",
    ".tcp.received_segments",
    ".tcp: object",
    ": object",
];
/// A final judgement in `serve`'s `/changes`.
const CHANGE: &[&str] = &[
    ".after_intervals",
    ".change.affected: array",
    ".change.affected[]",
    ".change.at",
    ".change.knob",
    ".change.new",
    ".change.old",
    ".change.owner",
    ".change.scope",
    ".change: object",
    ".final",
    ".notes: array",
    ".signals: array",
    ".signals[]",
    ".verdicts: array",
    ".verdicts[].after",
    ".verdicts[].before",
    ".verdicts[].cgroup_path",
    ".verdicts[].ci95: array",
    ".verdicts[].ci95[]",
    ".verdicts[].container",
    ".verdicts[].cgroup_id",
    ".verdicts[].container_id",
    ".verdicts[].effect",
    ".verdicts[].exploratory",
    ".verdicts[].load",
    ".verdicts[].load_change",
    ".verdicts[].load_changed",
    ".verdicts[].namespace",
    ".verdicts[].netns",
    ".verdicts[].notes: array",
    ".verdicts[].p_value",
    ".verdicts[].pod",
    ".verdicts[].pod_uid",
    ".verdicts[].prediction",
    ".verdicts[].samples.after: array",
    ".verdicts[].samples.after[]",
    ".verdicts[].samples.before: array",
    ".verdicts[].samples.before[]",
    ".verdicts[].samples: object",
    ".verdicts[].signal",
    ".verdicts[].verdict",
    ".verdicts[]: object",
    ": object",
];
/// `trace all --json`, per signal.
const TRACE: &[(&str, &[&str])] = &[
    (
        "connections",
        &[
            ".cgroup_id",
            ".cgroup_path",
            ".container",
            ".container_id",
            ".daddr",
            ".direction",
            ".dport",
            ".duration_ms",
            ".min_rtt_ms",
            ".namespace",
            ".netns",
            ".outcome",
            ".pod",
            ".pod_uid",
            ".saddr",
            ".signal",
            ".sport",
            ".srtt_ms",
            ".state",
            ".time",
            ": object",
        ],
    ),
    (
        "block",
        &[
            ".bytes",
            ".cgroup_id",
            ".cgroup_path",
            ".container",
            ".container_id",
            ".device",
            ".error",
            ".namespace",
            ".netns",
            ".op",
            ".pod",
            ".pod_uid",
            ".queue_ms",
            ".service_ms",
            ".signal",
            ".time",
            ": object",
        ],
    ),
    (
        "dns",
        &[
            ".cgroup_id",
            ".cgroup_path",
            ".container",
            ".container_id",
            ".decode_error",
            ".latency_ms",
            ".namespace",
            ".netns",
            ".pod",
            ".pod_uid",
            ".qname",
            ".qtype",
            ".rcode",
            ".resolver",
            ".signal",
            ".time",
            ".transport",
            ": object",
        ],
    ),
    (
        "drops",
        &[
            ".cgroup_id",
            ".cgroup_path",
            ".container",
            ".container_id",
            ".daddr",
            ".dport",
            ".location",
            ".namespace",
            ".netns",
            ".pod",
            ".pod_uid",
            ".protocol",
            ".reason",
            ".saddr",
            ".signal",
            ".sport",
            ".time",
            ": object",
        ],
    ),
    (
        "retransmits",
        &[
            ".cgroup_id",
            ".cgroup_path",
            ".container",
            ".container_id",
            ".daddr",
            ".dport",
            ".failed",
            ".namespace",
            ".netns",
            ".pod",
            ".pod_uid",
            ".saddr",
            ".segments",
            ".signal",
            ".sport",
            ".state",
            ".time",
            ": object",
        ],
    ),
    (
        "throttle",
        &[
            ".cgroup_id",
            ".cgroup_path",
            ".container",
            ".container_id",
            ".namespace",
            ".netns",
            ".pod",
            ".pod_uid",
            ".signal",
            ".stall_ms",
            ".tid",
            ".time",
            ": object",
        ],
    ),
];
/// (family, type, label names)
const METRICS: &[(&str, &str, &[&str])] = &[
    (
        "tuneprobe_tcp_connect_attempts_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_tcp_connect_failures_total",
        "counter",
        &["cause", "cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_tcp_connection_duration_seconds",
        "histogram",
        &["cgroup", "container", "le", "namespace", "pod"],
    ),
    (
        "tuneprobe_tcp_connections_closed_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_tcp_connections_opened_total",
        "counter",
        &["cgroup", "container", "direction", "namespace", "pod"],
    ),
    (
        "tuneprobe_tcp_min_rtt_seconds",
        "histogram",
        &["cgroup", "container", "le", "namespace", "pod"],
    ),
    (
        "tuneprobe_tcp_resets_total",
        "counter",
        &["cgroup", "container", "direction", "namespace", "pod"],
    ),
    (
        "tuneprobe_tcp_time_wait_sockets",
        "gauge",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_tcp_srtt_seconds",
        "histogram",
        &["cgroup", "container", "le", "namespace", "pod"],
    ),
    ("tuneprobe_agent_errors_total", "counter", &["stage"]),
    (
        "tuneprobe_block_bytes_total",
        "counter",
        &["cgroup", "container", "device", "namespace", "op", "pod"],
    ),
    (
        "tuneprobe_block_errors_total",
        "counter",
        &["cgroup", "container", "device", "namespace", "op", "pod"],
    ),
    (
        "tuneprobe_block_queue_seconds",
        "histogram",
        &[
            "cgroup",
            "container",
            "device",
            "le",
            "namespace",
            "op",
            "pod",
        ],
    ),
    (
        "tuneprobe_block_service_seconds",
        "histogram",
        &[
            "cgroup",
            "container",
            "device",
            "le",
            "namespace",
            "op",
            "pod",
        ],
    ),
    (
        "tuneprobe_cpu_period_seconds",
        "gauge",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_cpu_periods_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_cpu_quota_seconds",
        "gauge",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_cpu_throttle_events_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_cpu_throttle_stall_seconds",
        "histogram",
        &["cgroup", "container", "le", "namespace", "pod"],
    ),
    (
        "tuneprobe_cpu_throttled_periods_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_cpu_throttled_seconds_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_dns_latency_seconds",
        "histogram",
        &[
            "cgroup",
            "container",
            "le",
            "namespace",
            "pod",
            "rcode",
            "resolver",
        ],
    ),
    (
        "tuneprobe_dns_malformed_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_dns_queries_total",
        "counter",
        &["cgroup", "container", "namespace", "pod", "resolver"],
    ),
    (
        "tuneprobe_dns_timeouts_total",
        "counter",
        &["cgroup", "container", "namespace", "pod", "resolver"],
    ),
    ("tuneprobe_folded_workloads", "gauge", &[]),
    ("tuneprobe_gc_deleted_entries_total", "counter", &["map"]),
    ("tuneprobe_map_overflows_total", "counter", &["map"]),
    (
        "tuneprobe_packet_drops_total",
        "counter",
        &["cgroup", "container", "namespace", "pod", "reason"],
    ),
    ("tuneprobe_probe_attached", "gauge", &["probe", "signal"]),
    ("tuneprobe_program_run_seconds_total", "counter", &["probe"]),
    ("tuneprobe_program_runs_total", "counter", &["probe"]),
    ("tuneprobe_scrape_duration_seconds", "gauge", &[]),
    (
        "tuneprobe_tcp_failed_retransmits_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_tcp_passive_opens_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_tcp_retransmits_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_tcp_retransmitted_segments_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_tcp_sent_segments_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    // The loads each knob's own drops are divided by (issue 20); the receive-queue drop
    // and prune counters, forwarded packets and conntrack-full events appear only once
    // non-zero, which this scenario does not make.
    (
        "tuneprobe_tcp_received_segments_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_ip_received_packets_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_udp_received_datagrams_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_cpu_usage_seconds_total",
        "counter",
        &["cgroup", "container", "namespace", "pod"],
    ),
    (
        "tuneprobe_tuning_changes_total",
        "counter",
        &["knob", "scope"],
    ),
    (
        "tuneprobe_tuning_deviation",
        "gauge",
        &["knob", "owner", "scope"],
    ),
    ("tuneprobe_tuning_unreadable", "gauge", &["owner", "scope"]),
    (
        "tuneprobe_tuning_value",
        "gauge",
        &["knob", "owner", "scope"],
    ),
    (
        "tuneprobe_tuning_verdict",
        "gauge",
        &[
            "cgroup",
            "container",
            "final",
            "knob",
            "namespace",
            "pod",
            "scope",
            "signal",
            "verdict",
        ],
    ),
];
