//! `tuneprobe advise` judged like an advisor: each rule's symptom induced in one lab pod,
//! next to an idle pod on the same node; advise must name exactly the knob for the sick
//! pod (with its current value and a prediction) and nothing for the idle one. Then the
//! recommendation is applied with the command advise printed, and `verify` must find
//! the prediction held. With nothing sick, no advice at all.

use std::{collections::BTreeSet, fs};

use serde_json::Value;
use tuneprobe_tests::{NetnsPair, PodCgroup, Workload, testload, tuneprobe_json};

/// One at a time: each test's symptom would be another's noise, and the quiet-node
/// test asserts that the whole node has no advice.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `tuneprobe advise --json` over a 4-second window.
fn advise() -> Value {
    tuneprobe_json([
        "advise",
        "--for",
        "4s",
        "--interval",
        "500ms",
        "--json",
        "--kube-api",
        "none",
    ])
}

/// The advice entries that name a workload matching `is_it`.
fn advice_for(report: &Value, is_it: impl Fn(&Value) -> bool) -> Vec<&Value> {
    report["advice"]
        .as_array()
        .expect("advice[]")
        .iter()
        .filter(|a| a["workloads"].as_array().unwrap().iter().any(&is_it))
        .collect()
}

/// Applies an advice as `verify --plan` does (with `--revert`), over 4-second windows,
/// and returns the verdicts on the advice's predicted measure for `path`'s workload.
fn prove(advice: &Value, path: &str) -> Value {
    use std::io::Write as _;
    let mut child = std::process::Command::new(tuneprobe_tests::tuneprobe_binary())
        .args([
            "verify",
            "--plan",
            "-",
            "--revert",
            "--json",
            "--kube-api",
            "none",
        ])
        .args(["--before", "4s", "--after", "4s", "--interval", "500ms"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(advice.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let measure = &advice["prediction"]["measure"];
    report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["cgroup_path"] == path && v["signal"] == *measure)
        .unwrap_or_else(|| panic!("no {measure} verdict for {path}: {report:#}"))
        .clone()
}

/// The prediction held, as written.
fn assert_as_predicted(verdict: &Value) {
    assert_eq!(
        verdict["prediction"]["outcome"], "as predicted",
        "{verdict:#}"
    );
    assert_eq!(verdict["exploratory"], false, "{verdict:#}");
}

fn knobs(advice: &[&Value]) -> BTreeSet<String> {
    advice
        .iter()
        .map(|a| a["knob"].as_str().unwrap().to_string())
        .collect()
}

fn in_cgroup(path: &str) -> impl Fn(&Value) -> bool + '_ {
    move |w| w["cgroup_path"] == path
}

fn in_netns(inode: u32) -> impl Fn(&Value) -> bool {
    move |w| w["netns"] == inode
}

/// An idle container in its own pod, living in namespace `ns`.
fn idle_pod(ns: &str) -> (PodCgroup, Workload, String) {
    let mut pod = PodCgroup::new();
    let container = pod.container();
    let idle = Workload::spawn(ns, Some(&container), &["pause"]);
    (pod, idle, container.path)
}

#[test]
fn listen_overflows_call_for_somaxconn_for_that_pod_only() {
    let _one = one_at_a_time();
    let pair = NetnsPair::new();
    pair.exec(
        &pair.b,
        &["sh", "-c", "echo 8 > /proc/sys/net/core/somaxconn"],
    );
    let mut pod = PodCgroup::new();
    let server = pod.container();
    let mut listener = Workload::spawn(
        &pair.b,
        Some(&server),
        &["tcp-slow-accept", "10.200.0.2:7100", "1024", "300", "200"],
    );
    assert_eq!(listener.read_line(), "ready");
    let _clients = Workload::spawn(
        &pair.a,
        None,
        &["tcp-connect-bursts", "10.200.0.2:7100", "40", "100"],
    );
    let (_idle_pod, _idle, idle_path) = idle_pod(&pair.a);

    let report = advise();
    let sick = advice_for(&report, in_netns(NetnsPair::inode(&pair.b)));
    assert_eq!(
        knobs(&sick),
        BTreeSet::from(["net.core.somaxconn".to_string()]),
        "{report:#}"
    );
    let a = sick[0];
    assert_eq!(a["current"], "8");
    assert_eq!(a["recommended"], "65535");
    assert_eq!(a["scope"], "netns");
    assert_eq!(a["target"]["option"], "--pod");
    assert_eq!(a["target"]["value"], pod.uid.as_str());
    assert_eq!(a["evidence"]["measure"], "listen_overflow_ratio");
    assert!(a["evidence"]["value"].as_f64().unwrap() > 0.5, "{a:#}");
    assert_eq!(a["evidence"]["threshold"], 0.01);
    assert_eq!(a["prediction"]["measure"], "listen_overflow_ratio");
    assert_eq!(a["prediction"]["direction"], "lower");
    assert!(
        a["takes_effect"].as_str().unwrap().contains("listen()"),
        "{a:#}"
    );
    assert!(
        advice_for(&report, in_cgroup(&idle_path)).is_empty(),
        "{report:#}"
    );
    // The listener listens again every 200 ms: the new limit applies, as predicted.
    let listener_path = a["workloads"][0]["cgroup_path"].as_str().unwrap();
    assert_as_predicted(&prove(a, listener_path));
    let somaxconn = pair.exec(&pair.b, &["cat", "/proc/sys/net/core/somaxconn"]);
    assert_eq!(somaxconn.trim(), "8", "--revert");
}

/// A pod connecting every 20 ms through a 10-port local range, with `mode` one of
/// `tcp-hold-loop` (each connection kept open) and `tcp-connect-loop` (each closed at
/// once, its port then held in TIME_WAIT), and an idle pod beside it. Everything runs
/// until dropped.
struct Exhausting {
    report: Value,
    client: String,
    idle: String,
    _lab: (NetnsPair, PodCgroup, PodCgroup, [Workload; 3]),
}

fn exhausting_pod(mode: &str) -> Exhausting {
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let client = pod.container();
    pair.exec(
        &pair.a,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40009"],
    );
    let mut sink = Workload::spawn(&pair.b, None, &["tcp-sink", "10.200.0.2:7200"]);
    assert_eq!(sink.read_line(), "ready");
    let connects = Workload::spawn(&pair.a, Some(&client), &[mode, "10.200.0.2:7200", "20"]);
    let (idle_pod, idle, idle_path) = idle_pod(&pair.b);
    std::thread::sleep(std::time::Duration::from_millis(500));
    Exhausting {
        report: advise(),
        client: client.path,
        idle: idle_path,
        _lab: (pair, pod, idle_pod, [sink, connects, idle]),
    }
}

#[test]
fn connects_failing_for_lack_of_a_port_call_for_a_wider_range() {
    let _one = one_at_a_time();
    let lab = exhausting_pod("tcp-hold-loop");
    let (report, client, idle) = (&lab.report, &lab.client, &lab.idle);
    let sick = advice_for(report, in_cgroup(client));
    assert_eq!(
        knobs(&sick),
        BTreeSet::from(["net.ipv4.ip_local_port_range".to_string()]),
        "ports held open, none in TIME_WAIT: only the range helps: {report:#}"
    );
    let a = sick[0];
    assert_eq!(a["current"], "40000 40009");
    assert_eq!(a["recommended"], "1024 65535");
    let detail = a["evidence"]["detail"].as_str().unwrap();
    assert!(detail.contains("found no free local port"), "{a:#}");
    assert!(a["evidence"]["value"].as_f64().unwrap() > 0.8, "{a:#}");
    assert!(advice_for(report, in_cgroup(idle)).is_empty(), "{report:#}");
    assert_as_predicted(&prove(a, client));
}

#[test]
fn ports_held_in_time_wait_also_call_for_reuse() {
    let _one = one_at_a_time();
    let lab = exhausting_pod("tcp-connect-loop");
    let (report, client, idle) = (&lab.report, &lab.client, &lab.idle);
    let sick = advice_for(report, in_cgroup(client));
    assert_eq!(
        knobs(&sick),
        BTreeSet::from([
            "net.ipv4.ip_local_port_range".to_string(),
            "net.ipv4.tcp_tw_reuse".to_string(),
        ]),
        "{report:#}"
    );
    let reuse = sick
        .iter()
        .find(|a| a["knob"] == "net.ipv4.tcp_tw_reuse")
        .unwrap();
    assert!(
        reuse["evidence"]["detail"]
            .as_str()
            .unwrap()
            .contains("TIME_WAIT"),
        "{reuse:#}"
    );
    assert!(advice_for(report, in_cgroup(idle)).is_empty(), "{report:#}");
}

/// Ports held in TIME_WAIT, and the advice to reuse them proven: 40 local ports, a
/// connect every 30 ms (33 a second) each closed at once, TIME_WAIT reuse off. Reused
/// after a second (`tcp_tw_reuse_delay`), 40 ports serve more than 33 connects a second:
/// the failures stop, as predicted.
#[test]
fn reusing_ports_held_in_time_wait_is_proven_as_predicted() {
    let _one = one_at_a_time();
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let client = pod.container();
    for setting in [
        "net.ipv4.ip_local_port_range=40000 40039",
        "net.ipv4.tcp_tw_reuse=0",
    ] {
        pair.exec(&pair.a, &["sysctl", "-qw", setting]);
    }
    let mut sink = Workload::spawn(&pair.b, None, &["tcp-sink", "10.200.0.2:7250"]);
    assert_eq!(sink.read_line(), "ready");
    let _connects = Workload::spawn(
        &pair.a,
        Some(&client),
        &["tcp-connect-loop", "10.200.0.2:7250", "30"],
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let report = advise();
    let sick = advice_for(&report, in_cgroup(&client.path));
    let reuse = sick
        .iter()
        .find(|a| a["knob"] == "net.ipv4.tcp_tw_reuse")
        .unwrap_or_else(|| panic!("no tcp_tw_reuse advice: {report:#}"));
    assert_eq!(reuse["current"], "0");
    assert_eq!(reuse["recommended"], "1");
    let verdict = prove(reuse, &client.path);
    assert_as_predicted(&verdict);
    // Every connect failed before; after, none.
    assert!(verdict["before"].as_f64().unwrap() > 0.9, "{verdict:#}");
    assert!(verdict["after"].as_f64().unwrap() < 0.1, "{verdict:#}");
    let reuse_now = pair.exec(&pair.a, &["cat", "/proc/sys/net/ipv4/tcp_tw_reuse"]);
    assert_eq!(reuse_now.trim(), "0", "--revert");
}

#[test]
fn a_tight_quota_calls_for_a_limit_sized_from_demand() {
    let _one = one_at_a_time();
    let mut pod = PodCgroup::with_controllers(&["cpu", "cpuacct"]);
    let app = pod.container();
    let idle = pod.container();
    for c in [&app, &idle] {
        let dir = c.cpu_dir();
        fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
        fs::write(dir.join("cpu.cfs_quota_us"), "20000").unwrap();
    }
    let _busy = Workload::spawn_program(None, Some(&app), &testload(), &["busy", "60000"]);
    let _idle = Workload::spawn_program(None, Some(&idle), &testload(), &["pause"]);

    let report = advise();
    let sick = advice_for(&report, in_cgroup(&app.path));
    assert_eq!(
        knobs(&sick),
        BTreeSet::from(["cpu.cfs_quota_us".to_string()]),
        "{report:#}"
    );
    let a = sick[0];
    assert_eq!(a["current"], "20000");
    // One busy thread wants a whole CPU, 100 ms per period: 20 ms used and 70-80 ms
    // throttled (cpu.stat counts the wait from throttle to unthrottle), times 1.2.
    let recommended: u64 = a["recommended"].as_str().unwrap().parse().unwrap();
    assert!((100_000..=130_000).contains(&recommended), "{a:#}");
    assert_eq!(a["target"]["option"], "--cgroup");
    assert_eq!(a["evidence"]["measure"], "cpu_throttled_ratio");
    assert!(a["evidence"]["value"].as_f64().unwrap() > 0.8, "{a:#}");
    assert!(
        a["notes"][0].as_str().unwrap().contains("GOMAXPROCS"),
        "{a:#}"
    );
    assert!(
        advice_for(&report, in_cgroup(&idle.path)).is_empty(),
        "{report:#}"
    );
    assert_as_predicted(&prove(a, &app.path));
    let quota = fs::read_to_string(app.cpu_dir().join("cpu.cfs_quota_us")).unwrap();
    assert_eq!(quota.trim(), "20000", "--revert");
}

/// A pod whose namespace tracks connections (a firewall rule that matches on state, as a
/// service mesh's sidecar adds) opens new UDP flows faster than the table can hold them:
/// past the global limit, which this namespace's entries alone reach, every new flow
/// evicts an older one. The limit is global and read-only inside a pod's namespace, so
/// the recommendation is not applied here (raising it would change the machine).
#[test]
fn a_full_conntrack_table_calls_for_a_higher_limit_for_that_pod_only() {
    let _one = one_at_a_time();
    let pair = NetnsPair::new();
    let limit: u64 = fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .map_or(262_144, |v| v.trim().parse().unwrap());
    // Tracked on output; the datagrams themselves dropped on input, so no ICMP answers.
    pair.exec(
        &pair.a,
        &[
            "nft",
            "add table ip tp; \
             add chain ip tp out { type filter hook output priority 0; }; \
             add rule ip tp out ct state new counter; \
             add chain ip tp in { type filter hook input priority 0; }; \
             add rule ip tp in meta l4proto udp drop",
        ],
    );
    let mut pod = PodCgroup::new();
    let app = pod.container();
    let mut spray = Workload::spawn(&pair.a, Some(&app), &["udp-spray", "100000"]);
    assert_eq!(spray.read_line(), "ready");
    let (_idle_pod, _idle, idle_path) = idle_pod(&pair.b);
    let count = || -> u64 {
        let text = pair.exec(
            &pair.a,
            &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"],
        );
        text.trim().parse().unwrap()
    };
    let started = std::time::Instant::now();
    while count() < limit {
        assert!(started.elapsed().as_secs() < 30, "the table never filled");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let report = advise();
    let sick = advice_for(&report, in_cgroup(&app.path));
    assert_eq!(
        knobs(&sick),
        BTreeSet::from(["net.netfilter.nf_conntrack_max".to_string()]),
        "{report:#}"
    );
    let a = sick[0];
    assert_eq!(a["current"], limit.to_string());
    assert_eq!(a["recommended"], (limit * 2).to_string());
    assert_eq!(a["scope"], "node");
    assert_eq!(a["evidence"]["measure"], "conntrack_full_ratio");
    // Past the limit each datagram evicts one entry as it is sent and is received
    // once: one event per packet received, a ratio of events to (received + events)
    // of one half.
    let value = a["evidence"]["value"].as_f64().unwrap();
    assert!((0.45..=0.55).contains(&value), "{a:#}");
    assert_eq!(
        a["verify_command"],
        format!(
            "tuneprobe verify --apply 'net.netfilter.nf_conntrack_max={}' \
             --expect conntrack_full_ratio:lower:50%",
            limit * 2
        )
    );
    assert_eq!(a["prediction"]["direction"], "lower");
    assert!(
        advice_for(&report, in_cgroup(&idle_path)).is_empty(),
        "{report:#}"
    );
}

/// A pod whose resolver answers in 200 ms (a loaded or throttled cluster DNS): advise
/// names NodeLocal DNSCache for it, a resolver deployment it can only describe, and
/// nothing for an idle pod beside it.
#[test]
fn a_slow_resolver_calls_for_nodelocal_dns_for_that_pod_only() {
    let _one = one_at_a_time();
    let pair = NetnsPair::new();
    let mut server = Workload::spawn(&pair.b, None, &["dns-server", "10.200.0.2:53", "200", "0"]);
    assert_eq!(server.read_line(), "ready");
    let mut pod = PodCgroup::new();
    let client = pod.container();
    // Sequential queries, five a second, for longer than the window.
    let _queries = Workload::spawn(
        &pair.a,
        Some(&client),
        &[
            "dns-query",
            "10.200.0.2:53",
            "shop.example",
            "60",
            "udp",
            "2000",
        ],
    );
    let (_idle_pod, _idle, idle_path) = idle_pod(&pair.a);
    std::thread::sleep(std::time::Duration::from_millis(500));

    let report = advise();
    let sick = advice_for(&report, in_cgroup(&client.path));
    assert_eq!(
        knobs(&sick),
        BTreeSet::from(["nodelocaldns".to_string()]),
        "{report:#}"
    );
    let a = sick[0];
    assert_eq!(
        (&a["current"], &a["recommended"]),
        (&"off".into(), &"on".into())
    );
    assert_eq!(a["scope"], "resolver");
    assert_eq!(a["evidence"]["measure"], "dns_latency_p99_ms");
    // Every answer waits 200 ms at the server: the p99 is that, within its bucket.
    let p99 = a["evidence"]["value"].as_f64().unwrap();
    assert!((150.0..=300.0).contains(&p99), "{a:#}");
    assert!(
        a["notes"][0].as_str().unwrap().contains("10.200.0.2"),
        "the resolver it asks: {a:#}"
    );
    assert!(
        advice_for(&report, in_cgroup(&idle_path)).is_empty(),
        "{report:#}"
    );
}

/// With only the idle and healthy workloads the suite leaves running, no advice at all.
/// Lab pods of another test run on the same machine (a developer running two suites at
/// once) are theirs, not this node's: they are left out.
#[test]
fn a_quiet_node_gets_no_advice() {
    let _one = one_at_a_time();
    let pair = NetnsPair::new();
    let (_p1, _w1, ours_a) = idle_pod(&pair.a);
    let (_p2, _w2, ours_b) = idle_pod(&pair.b);
    // A healthy exchange: a sink and a sender well within every limit.
    let mut sink = Workload::spawn(&pair.b, None, &["tcp-sink", "10.200.0.2:7300"]);
    assert_eq!(sink.read_line(), "ready");
    let _sender = Workload::spawn(
        &pair.a,
        None,
        &["tcp-send-loop", "10.200.0.2:7300", "65536", "50"],
    );
    let report = advise();
    let root = |path: &str| path.split('/').nth(1).map(str::to_string);
    let ours = [root(&ours_a), root(&ours_b)];
    let another_run = |w: &Value| {
        let path = w["cgroup_path"].as_str().unwrap_or_default();
        path.starts_with("/tuneprobe-test-") && !ours.contains(&root(path))
    };
    let advice: Vec<&Value> = report["advice"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| !a["workloads"].as_array().unwrap().iter().all(another_run))
        .collect();
    assert!(advice.is_empty(), "{advice:#?}");
    assert!(report["window_s"].as_f64().unwrap() >= 3.5, "{report:#}");
}

/// A UDP receiver that never reads, with a 4 KiB buffer, under 1,000 datagrams a
/// second: nearly every datagram is dropped at its full buffer (SOCKET_RCVBUFF). Both
/// node-wide buffer limits are named (tuneprobe cannot tell whether the application
/// asks for its buffer size); they are node-wide, so the test does not apply them.
#[test]
fn receive_buffer_drops_call_for_the_buffer_limits_for_that_pod_only() {
    let _one = one_at_a_time();
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let receiver = pod.container();
    let _sink = Workload::spawn(
        &pair.b,
        Some(&receiver),
        &["udp-sink", "10.200.0.2:7001", "4096"],
    );
    let mut sender = Workload::spawn(&pair.a, None, &["udp-pace", "10.200.0.2:7001", "1000"]);
    assert_eq!(sender.read_line(), "ready");
    let (_idle_pod, _idle, idle_path) = idle_pod(&pair.b);

    let report = advise();
    let sick = advice_for(&report, in_cgroup(&receiver.path));
    assert_eq!(
        knobs(&sick),
        BTreeSet::from([
            "net.core.rmem_default".to_string(),
            "net.core.rmem_max".to_string()
        ]),
        "{report:#}"
    );
    for a in &sick {
        assert_eq!(a["scope"], "node");
        assert_eq!(a["target"], Value::Null);
        assert_eq!(a["evidence"]["measure"], "rcvbuf_drop_ratio");
        assert!(a["evidence"]["value"].as_f64().unwrap() > 0.9, "{a:#}");
        assert!(a["evidence"]["load"].as_f64().unwrap() >= 3000.0, "{a:#}");
        let node = fs::read_to_string(format!(
            "/proc/sys/{}",
            a["knob"].as_str().unwrap().replace('.', "/")
        ))
        .unwrap();
        assert_eq!(a["current"], node.trim(), "the node's own value");
    }
    assert!(
        advice_for(&report, in_cgroup(&idle_path)).is_empty(),
        "{report:#}"
    );
}

/// Reads with an fsync after each on a `strictatime` mount of the test's own loop
/// device: every read writes the inode's access time. advise names `noatime` for that
/// mount, and the remount it plans (`verify --plan`) ends the writes, as predicted.
#[test]
fn writes_per_read_on_a_strictatime_mount_call_for_noatime() {
    let _one = one_at_a_time();
    let disk = tuneprobe_tests::LoopDevice::new(64);
    let mount = tuneprobe_tests::StrictatimeMount::new(&disk.device);
    let mut pod = PodCgroup::with_controllers(&["blkio"]);
    let reader = pod.container();
    let idle = pod.container();
    let mut reads = Workload::spawn_program(
        None,
        Some(&reader),
        &testload(),
        &["read-fsync", &mount.file().display().to_string(), "10"],
    );
    assert_eq!(reads.read_line(), "ready");
    let _idle = Workload::spawn_program(None, Some(&idle), &testload(), &["pause"]);

    let report = advise();
    let sick = advice_for(&report, in_cgroup(&reader.path));
    assert_eq!(
        knobs(&sick),
        BTreeSet::from(["noatime".to_string()]),
        "{report:#}"
    );
    let a = sick[0];
    let dir = mount.dir.display().to_string();
    assert_eq!(
        (a["current"].as_str(), a["recommended"].as_str()),
        (Some("off"), Some("on"))
    );
    assert_eq!(a["target"]["option"], "--mount");
    assert_eq!(a["target"]["value"], dir.as_str());
    assert!(a["evidence"]["value"].as_f64().unwrap() >= 0.9, "{a:#}");
    assert!(
        advice_for(&report, in_cgroup(&idle.path)).is_empty(),
        "{report:#}"
    );
    assert_as_predicted(&prove(a, &reader.path));
    let options = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = options.lines().find(|l| l.contains(&dir)).unwrap();
    assert!(!line.contains("noatime"), "reverted: {line}");
}
