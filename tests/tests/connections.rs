//! TCP connections per workload (`sock:inet_sock_set_state`, `tcp:tcp_send_reset`,
//! `tcp:tcp_receive_reset`), produced in the test's own namespaces and cgroups and
//! checked against the kernel's own counters and what the client itself saw, each with
//! a negative control: another container of the same pod doing nothing of the kind.

use std::time::Duration;

use tuneprobe::{Snapshot, signals::tcp_connections::ConnectionReport};
use tuneprobe_tests::{
    ADDR_B, NetnsPair, PodCgroup, Workload, finish_collector as finish, sh,
    start_collector as start,
};

const WAIT: Duration = Duration::from_secs(60);

/// The connections section of the workload with `cgroup_id`; empty if it has none.
fn connections(snapshot: &Snapshot, cgroup_id: u64) -> ConnectionReport {
    snapshot
        .workloads
        .iter()
        .find(|w| w.identity.cgroup_id == Some(cgroup_id))
        .and_then(|w| w.signals.connections.as_deref().cloned())
        .unwrap_or_default()
}

/// `connected C refused R noport P other O`, as testload prints it.
fn outcome(line: &str) -> [u64; 4] {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 8, "{line}");
    [1, 3, 5, 7].map(|i| words[i].parse().unwrap())
}

#[test]
fn connects_to_a_closed_port_are_refused_for_the_pod_as_tcp_attempt_fails_counts_them() {
    const N: u64 = 25;
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let client = pod.container();
    let idle = pod.container();
    let mut pause = Workload::spawn(&pair.a, Some(&idle), &["pause"]);
    assert_eq!(pause.read_line(), "ready");

    let collector = start();
    let fails_before = pair.counter(&pair.a, "snmp", "Tcp", "AttemptFails");
    let out = Workload::spawn(
        &pair.a,
        Some(&client),
        &[
            "tcp-connects",
            &format!("{ADDR_B}:6100"),
            &N.to_string(),
            "0",
        ],
    )
    .wait(WAIT);
    let attempt_fails = pair.counter(&pair.a, "snmp", "Tcp", "AttemptFails") - fails_before;
    let snapshot = finish(collector);

    assert_eq!(outcome(&out), [0, N, 0, 0], "the client's own view: {out}");
    assert_eq!(attempt_fails, N, "the kernel's TcpAttemptFails");
    let c = connections(&snapshot, client.cgroup_id);
    assert_eq!(c.failed.refused, attempt_fails, "{c:#?}");
    assert_eq!(c.connect_attempts, N, "{c:#?}");
    assert_eq!(
        c.connected + c.failed.timed_out + c.failed.port_exhaustion,
        0
    );
    // The RST that refused each SYN reached the socket.
    assert_eq!(c.resets_received, N, "{c:#?}");
    // Negative control: the pod's other container connected nowhere.
    assert_eq!(
        connections(&snapshot, idle.cgroup_id),
        ConnectionReport::default()
    );
}

#[test]
fn a_narrow_local_port_range_with_its_ports_held_is_port_exhaustion_as_the_client_saw_it() {
    const N: u64 = 30;
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let client = pod.container();
    let control = pod.container();
    // Per namespace: the host's range is untouched.
    pair.exec(
        &pair.a,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40009"],
    );
    let mut sink = Workload::spawn(&pair.b, None, &["tcp-sink", &format!("{ADDR_B}:6200")]);
    assert_eq!(sink.read_line(), "ready");
    let mut other_sink = Workload::spawn(&pair.b, None, &["tcp-sink", &format!("{ADDR_B}:6201")]);
    assert_eq!(other_sink.read_line(), "ready");
    // The client container lives on in its namespace (its connects come and go), so
    // that the namespace is known as its and its counters are read through it.
    let mut pause = Workload::spawn(&pair.a, Some(&client), &["pause"]);
    assert_eq!(pause.read_line(), "ready");

    let collector = start();
    let out = Workload::spawn(
        &pair.a,
        Some(&client),
        &[
            "tcp-connects",
            &format!("{ADDR_B}:6200"),
            &N.to_string(),
            "1",
        ],
    )
    .wait(WAIT);
    // Negative control: a few connects from the same range to another destination, where
    // the kernel may reuse the busy local ports (a connection is its four-tuple).
    let control_out = Workload::spawn(
        &pair.a,
        Some(&control),
        &["tcp-connects", &format!("{ADDR_B}:6201"), "5", "0"],
    )
    .wait(WAIT);
    // Every connection either client closed waits in TIME_WAIT for a minute; let the
    // last closes finish their handshakes (the count stops changing) before the window
    // reads it.
    let time_wait = || -> u64 {
        let sockstat = pair.exec(&pair.a, &["cat", "/proc/net/sockstat"]);
        sockstat
            .lines()
            .find_map(|l| l.strip_prefix("TCP:"))
            .and_then(|l| l.split_whitespace().skip_while(|w| *w != "tw").nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no tw in {sockstat}"))
    };
    let mut settled = time_wait();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let now = time_wait();
        if now == settled {
            break;
        }
        settled = now;
    }
    let snapshot = finish(collector);
    let time_wait = time_wait();

    let [connected, refused, noport, other] = outcome(&out);
    assert_eq!((refused, other), (0, 0), "{out}");
    assert!(noport > 0 && connected > 0, "{out}");
    assert_eq!(connected + noport, N);
    let c = connections(&snapshot, client.cgroup_id);
    assert_eq!(
        c.failed.port_exhaustion, noport,
        "EADDRNOTAVAIL as the client saw it: {c:#?}"
    );
    assert_eq!(c.connected, connected, "{c:#?}");
    assert_eq!(c.connect_attempts, N, "{c:#?}");
    assert_eq!(c.failed.refused + c.failed.timed_out + c.failed.other, 0);
    // The held connections and the control's, less any the kernel ended otherwise.
    assert!(
        (connected..=connected + 5).contains(&time_wait),
        "{time_wait} in TIME_WAIT"
    );
    assert_eq!(
        c.time_wait,
        Some(time_wait),
        "the namespace's TIME_WAIT sockets"
    );
    assert_eq!(outcome(&control_out), [5, 0, 0, 0]);
    let control = connections(&snapshot, control.cgroup_id);
    assert_eq!(control.failed.port_exhaustion, 0, "{control:#?}");
    assert_eq!(control.connected, 5, "{control:#?}");
}

#[test]
fn a_server_that_resets_gives_resets_sent_to_it_and_received_to_its_client() {
    const N: u64 = 12;
    let pair = NetnsPair::new();
    let mut client_pod = PodCgroup::new();
    let client = client_pod.container();
    let mut server_pod = PodCgroup::new();
    let server = server_pod.container();
    let bystander = server_pod.container();
    let mut pause = Workload::spawn(&pair.b, Some(&bystander), &["pause"]);
    assert_eq!(pause.read_line(), "ready");
    let mut resetter = Workload::spawn(
        &pair.b,
        Some(&server),
        &["tcp-reset-server", &format!("{ADDR_B}:6300")],
    );
    assert_eq!(resetter.read_line(), "ready");

    let collector = start();
    let rsts_before = pair.counter(&pair.b, "snmp", "Tcp", "OutRsts");
    let out = Workload::spawn(
        &pair.a,
        Some(&client),
        &[
            "tcp-connects",
            &format!("{ADDR_B}:6300"),
            &N.to_string(),
            "1",
        ],
    )
    .wait(WAIT);
    // Let the last resets arrive.
    std::thread::sleep(Duration::from_millis(500));
    let out_rsts = pair.counter(&pair.b, "snmp", "Tcp", "OutRsts") - rsts_before;
    let snapshot = finish(collector);

    assert_eq!(outcome(&out), [N, 0, 0, 0], "{out}");
    assert_eq!(out_rsts, N, "the server namespace's OutRsts");
    let s = connections(&snapshot, server.cgroup_id);
    assert_eq!(s.resets_sent, out_rsts, "{s:#?}");
    assert_eq!(s.accepted, N, "{s:#?}");
    let c = connections(&snapshot, client.cgroup_id);
    assert_eq!(c.resets_received, N, "{c:#?}");
    assert_eq!(c.connected, N, "{c:#?}");
    assert_eq!(
        c.closed, N,
        "every reset ends an established connection: {c:#?}"
    );
    assert_eq!(c.resets_sent, 0, "{c:#?}");
    assert_eq!(
        connections(&snapshot, bystander.cgroup_id),
        ConnectionReport::default()
    );
}

/// Three namespaces in a row, `a` - `middle` - `b`, with `testload delay-bridge` in the
/// middle holding every frame `DELAY_MS` each way: a link whose round trip is known
/// (netem is absent here). Deleted, with its links, on drop (the bridge first).
struct DelayedLink {
    _bridge: Workload,
    namespaces: Namespaces,
}

/// Network namespaces deleted on drop.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

const DELAY_MS: f64 = 20.0;
const DELAYED_B: &str = "10.209.0.2";

fn shell(command: &str) {
    sh(&["sh", "-c", command]);
}

impl DelayedLink {
    fn new() -> Self {
        let id = tuneprobe_lab::unique("");
        let (a, middle, b) = (format!("tda{id}"), format!("tdm{id}"), format!("tdb{id}"));
        let mut namespaces = Namespaces(Vec::new());
        for ns in [&a, &middle, &b] {
            shell(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
            namespaces.0.push(ns.clone());
        }
        shell(&format!(
            "ip link add xa{id} netns {a} type veth peer name xm{id} netns {middle} && \
             ip link add xn{id} netns {middle} type veth peer name xb{id} netns {b} && \
             ip -n {a} addr add 10.209.0.1/24 dev xa{id} && \
             ip -n {b} addr add {DELAYED_B}/24 dev xb{id} && \
             ip -n {a} link set xa{id} up && ip -n {b} link set xb{id} up && \
             ip -n {middle} link set xm{id} up && ip -n {middle} link set xn{id} up"
        ));
        let mut bridge = Workload::spawn(
            &middle,
            None,
            &[
                "delay-bridge",
                &format!("xm{id}"),
                &format!("xn{id}"),
                &DELAY_MS.to_string(),
            ],
        );
        assert_eq!(bridge.read_line(), "ready");
        Self {
            _bridge: bridge,
            namespaces,
        }
    }

    fn a(&self) -> &str {
        &self.namespaces.0[0]
    }

    fn b(&self) -> &str {
        &self.namespaces.0[2]
    }
}

#[test]
fn rtt_through_a_link_with_a_known_delay_is_measured_within_10_percent() {
    let link = DelayedLink::new();
    let direct = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let delayed_client = pod.container();
    let direct_client = pod.container();
    let mut sink = Workload::spawn(link.b(), None, &["tcp-sink", &format!("{DELAYED_B}:7500")]);
    assert_eq!(sink.read_line(), "ready");
    let mut direct_sink =
        Workload::spawn(&direct.b, None, &["tcp-sink", &format!("{ADDR_B}:7500")]);
    assert_eq!(direct_sink.read_line(), "ready");

    let collector = start();
    let delayed = Workload::spawn(
        link.a(),
        Some(&delayed_client),
        &[
            "tcp-send-loop",
            &format!("{DELAYED_B}:7500"),
            "300000",
            "50",
        ],
    );
    // Negative control: the same transfers over a link without delay.
    let undelayed = Workload::spawn(
        &direct.a,
        Some(&direct_client),
        &["tcp-send-loop", &format!("{ADDR_B}:7500"), "300000", "50"],
    );
    std::thread::sleep(Duration::from_secs(4));
    drop((delayed, undelayed));
    let snapshot = finish(collector);

    let rtt = 2.0 * DELAY_MS;
    let c = connections(&snapshot, delayed_client.cgroup_id);
    assert!(c.closed >= 10, "{c:#?}");
    let srtt = c.srtt_ms.p50.unwrap();
    assert!(
        (srtt - rtt).abs() <= 0.1 * rtt,
        "srtt p50 {srtt} ms for a {rtt} ms link: {c:#?}"
    );
    let min_rtt = c.min_rtt_ms.p50.unwrap();
    assert!(
        (min_rtt - rtt).abs() <= 0.1 * rtt,
        "min rtt p50 {min_rtt} ms for a {rtt} ms link: {c:#?}"
    );
    let d = connections(&snapshot, direct_client.cgroup_id);
    eprintln!(
        "{rtt} ms link: srtt p50 {srtt} ms, min rtt p50 {min_rtt} ms over {} connections; \
         direct: srtt p50 {:?} ms over {}",
        c.closed, d.srtt_ms.p50, d.closed
    );
    assert!(d.closed >= 10, "{d:#?}");
    assert!(d.srtt_ms.p50.unwrap() < 0.1 * rtt, "{d:#?}");
}
