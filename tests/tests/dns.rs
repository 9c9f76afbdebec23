//! DNS latency per workload and resolver: real dnsmasq and dig, plus a test server that
//! answers after a programmed delay, each in the test's own namespaces and cgroups.

use std::{path::Path, time::Duration};

use tuneprobe::{
    Collector, LoadOptions, Probe, Snapshot, report::Workload as Report, signals::dns::DnsReport,
    window::CollectorOptions,
};
use tuneprobe_tests::{ADDR_B, Container, NetnsPair, PodCgroup, Workload};

const WAIT: Duration = Duration::from_secs(30);

/// These tests judge latency to the millisecond on a 2-core machine: they run one at a
/// time, so that one test's processes do not stretch another's answers.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn start(dns_timeout: Duration) -> Collector {
    let probe = Probe::load(&LoadOptions::default()).unwrap_or_else(|e| panic!("load: {e:#}"));
    for status in probe
        .statuses()
        .iter()
        .filter(|s| s.name.starts_with("dns"))
    {
        assert!(
            status.attached,
            "{} did not attach: {:?}",
            status.name, status.error
        );
    }
    Collector::start_with(
        probe,
        CollectorOptions {
            dns_timeout,
            ..CollectorOptions::default()
        },
    )
    .unwrap()
}

fn dns_of<'a>(snapshot: &'a Snapshot, container: &Container) -> &'a DnsReport {
    workload(snapshot, container)
        .and_then(|w| w.signals.dns.as_ref())
        .unwrap_or_else(|| panic!("no DNS for {}: {:#?}", container.path, snapshot.workloads))
}

fn workload<'a>(snapshot: &'a Snapshot, container: &Container) -> Option<&'a Report> {
    snapshot
        .workloads
        .iter()
        .find(|w| w.identity.cgroup_id == Some(container.cgroup_id))
}

/// Starts `testload dns-server` on `addr`:53 in namespace B.
fn server(pair: &NetnsPair, addr: &str, delay_ms: u32, rcode: &str) -> Workload {
    let mut server = Workload::spawn(
        &pair.b,
        None,
        &[
            "dns-server",
            &format!("{addr}:53"),
            &delay_ms.to_string(),
            rcode,
        ],
    );
    assert_eq!(server.read_line(), "ready");
    server
}

/// What `testload dns-query` saw: answers, and their median and fastest latency at the
/// client.
struct ClientView {
    answered: u32,
    median_ms: f64,
    min_ms: f64,
}

fn client_view(out: &str) -> ClientView {
    let fields: Vec<&str> = out.split_whitespace().collect();
    match fields.as_slice() {
        ["answered", n, "median_ms", m, "min_ms", f] => ClientView {
            answered: n.parse().unwrap(),
            median_ms: m.parse().unwrap(),
            min_ms: f.parse().unwrap(),
        },
        _ => panic!("dns-query printed {out}"),
    }
}

/// `count` sequential queries from the container in namespace `ns`.
fn query_in(
    ns: &str,
    container: &Container,
    server: &str,
    name: &str,
    count: u32,
    transport: &str,
) -> ClientView {
    let out = Workload::spawn(
        ns,
        Some(container),
        &[
            "dns-query",
            server,
            name,
            &count.to_string(),
            transport,
            "2000",
        ],
    )
    .wait(WAIT);
    client_view(&out)
}

/// `count` sequential queries from the container in namespace A; returns how many were
/// answered.
fn query(
    pair: &NetnsPair,
    container: &Container,
    server: &str,
    name: &str,
    count: u32,
    transport: &str,
) -> u32 {
    query_in(&pair.a, container, server, name, count, transport).answered
}

/// The probe's latencies against the client's own and the server's delay, by what
/// holds however loaded the machine is. The kernel sees each query leave after the
/// client started its clock and the answer arrive before the client stops it, and no
/// answer before the server's delay: so every probe sample lies between the delay and
/// the client's sample, and so do the fastest and the median. The client adds only its
/// own overhead, so on the fastest query (the one least stretched by scheduling) the two
/// agree to the millisecond. The median is estimated from buckets at most ~3% wide.
fn assert_median(dns: &DnsReport, client: &ClientView, delay_ms: f64) {
    let p50 = dns.latency_ms.p50.unwrap();
    let fastest_ns = dns
        .latency_series
        .iter()
        .filter(|series| series.histogram.count > 0)
        .map(|series| series.histogram.min_ns)
        .min()
        .unwrap();
    let fastest = fastest_ns as f64 / 1e6;
    eprintln!(
        "delay {delay_ms} ms; median: probe {p50} ms, client {} ms; fastest: probe {fastest} ms, client {} ms",
        client.median_ms, client.min_ms
    );
    assert!(
        fastest >= delay_ms,
        "probe saw an answer after {fastest} ms, before the server's {delay_ms} ms delay: {dns:?}"
    );
    assert!(
        fastest <= client.min_ms + 0.01 && client.min_ms - fastest <= 1.0,
        "fastest query: probe {fastest} ms, client {} ms: {dns:?}",
        client.min_ms
    );
    assert!(
        p50 >= delay_ms && p50 <= client.median_ms * 1.03 + 0.01,
        "probe median {p50} ms outside [delay {delay_ms} ms, client median {} ms]: {dns:?}",
        client.median_ms
    );
}

#[test]
fn median_latency_tracks_the_servers_delay_at_0_25_and_100_ms() {
    let _serial = serial();
    const N: u32 = 11;
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let client = pod.container();
    for delay_ms in [0u32, 25, 100] {
        let _server = server(&pair, ADDR_B, delay_ms, "0");
        let collector = start(Duration::from_secs(5));
        let client_saw = query_in(
            &pair.a,
            &client,
            &format!("{ADDR_B}:53"),
            "svc.test",
            N,
            "udp",
        );
        let snapshot = collector.finish().unwrap();
        assert_eq!(client_saw.answered, N);
        let dns = dns_of(&snapshot, &client);
        assert_eq!(dns.queries, u64::from(N), "{dns:?}");
        assert_eq!(dns.responses, u64::from(N), "{dns:?}");
        assert_eq!(dns.by_rcode.get("NOERROR"), Some(&u64::from(N)), "{dns:?}");
        assert_eq!(dns.by_qtype.get("A"), Some(&u64::from(N)), "{dns:?}");
        assert_eq!((dns.timeouts, dns.malformed), (0, 0));
        assert_median(dns, &client_saw, f64::from(delay_ms));
        let resolver = &dns.by_resolver[ADDR_B];
        assert_eq!(
            (resolver.queries, resolver.responses),
            (u64::from(N), u64::from(N))
        );
    }
}

#[test]
fn response_codes_from_dnsmasq_and_timeouts_only_after_the_timeout() {
    let _serial = serial();
    let pair = NetnsPair::new();
    let (servfail_addr, silent_addr) = ("10.200.0.3", "10.200.0.4");
    pair.add_address_b(servfail_addr);
    pair.add_address_b(silent_addr);
    let mut pod = PodCgroup::new();
    let client = pod.container();
    let mut dnsmasq = Workload::spawn_program(
        Some(&pair.b),
        None,
        Path::new("dnsmasq"),
        &[
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--bind-interfaces",
            &format!("--listen-address={ADDR_B}"),
            "--address=/test.local/1.2.3.4",
            // An empty address answers NXDOMAIN for the domain.
            "--address=/nx.local/",
        ],
    );
    let _servfail = server(&pair, servfail_addr, 0, "2");
    let _silent = server(&pair, silent_addr, 0, "never");
    // dnsmasq prints nothing when ready: ask until it answers (outside the window).
    let ready = (0..50).any(|_| {
        query(
            &pair,
            &client,
            &format!("{ADDR_B}:53"),
            "test.local",
            1,
            "udp",
        ) == 1
    });
    assert!(ready, "dnsmasq never answered");
    let _ = &mut dnsmasq;

    let timeout = Duration::from_secs(2);
    let mut collector = start(timeout);
    assert_eq!(
        query(
            &pair,
            &client,
            &format!("{ADDR_B}:53"),
            "test.local",
            5,
            "udp"
        ),
        5
    );
    assert_eq!(
        query(
            &pair,
            &client,
            &format!("{ADDR_B}:53"),
            "nx.local",
            3,
            "udp"
        ),
        3
    );
    assert_eq!(
        query(
            &pair,
            &client,
            &format!("{servfail_addr}:53"),
            "svc.test",
            4,
            "udp"
        ),
        4
    );
    // The client gives up after 2000 ms per query... too slow here: send and leave.
    let silent = Workload::spawn(
        &pair.a,
        Some(&client),
        &[
            "dns-query",
            &format!("{silent_addr}:53"),
            "svc.test",
            "3",
            "udp",
            "100",
        ],
    );
    assert_eq!(client_view(&silent.wait(WAIT)).answered, 0);

    let early = collector.report().unwrap();
    let dns = dns_of(&early, &client);
    assert_eq!(
        dns.timeouts, 0,
        "no query is older than the timeout yet: {dns:?}"
    );
    assert_eq!(dns.queries, 15);

    std::thread::sleep(timeout + Duration::from_millis(500));
    let snapshot = collector.finish().unwrap();
    let dns = dns_of(&snapshot, &client);
    assert_eq!(dns.queries, 15, "{dns:?}");
    assert_eq!(dns.responses, 12, "{dns:?}");
    assert_eq!(dns.by_rcode.get("NOERROR"), Some(&5), "{dns:?}");
    assert_eq!(dns.by_rcode.get("NXDOMAIN"), Some(&3), "{dns:?}");
    assert_eq!(dns.by_rcode.get("SERVFAIL"), Some(&4), "{dns:?}");
    assert_eq!(dns.timeouts, 3, "{dns:?}");
    assert_eq!(dns.by_resolver[silent_addr].timeouts, 3);
    assert_eq!(dns.by_resolver[ADDR_B].timeouts, 0);
    assert_eq!(dns.by_resolver[servfail_addr].responses, 4);
}

#[test]
fn dns_over_tcp_is_measured_like_udp() {
    let _serial = serial();
    const N: u32 = 7;
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let client = pod.container();
    let _server = server(&pair, ADDR_B, 25, "0");

    let collector = start(Duration::from_secs(5));
    // dig, as users run it: each lookup on its own TCP connection.
    for _ in 0..3 {
        let out = Workload::spawn_program(
            Some(&pair.a),
            Some(&client),
            Path::new("dig"),
            &[
                "+tcp",
                "+tries=1",
                "+time=2",
                &format!("@{ADDR_B}"),
                "svc.test",
                "A",
            ],
        )
        .wait(WAIT);
        assert!(out.contains("status: NOERROR"), "{out}");
    }
    let dig_only = collector.finish().unwrap();
    let dns = dns_of(&dig_only, &client);
    assert_eq!(
        (dns.queries, dns.responses, dns.malformed),
        (3, 3, 0),
        "{dns:?}"
    );
    assert_eq!(dns.by_rcode.get("NOERROR"), Some(&3), "{dns:?}");

    // Latency against the client's own clock.
    let collector = start(Duration::from_secs(5));
    let client_saw = query_in(
        &pair.a,
        &client,
        &format!("{ADDR_B}:53"),
        "svc.test",
        N,
        "tcp",
    );
    assert_eq!(client_saw.answered, N);
    let snapshot = collector.finish().unwrap();
    let dns = dns_of(&snapshot, &client);
    assert_eq!(
        (dns.queries, dns.responses, dns.malformed),
        (u64::from(N), u64::from(N), 0),
        "{dns:?}"
    );
    assert_median(dns, &client_saw, 25.0);
}

#[test]
fn ipv6_queries_are_measured_like_ipv4() {
    let _serial = serial();
    const N: u32 = 7;
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let client = pod.container();
    // Server and client share namespace B and talk over ::1.
    let mut server = Workload::spawn(&pair.b, None, &["dns-server", "[::1]:53", "25", "3"]);
    assert_eq!(server.read_line(), "ready");

    let collector = start(Duration::from_secs(5));
    let client_saw = query_in(&pair.b, &client, "[::1]:53", "v6.test", N, "udp");
    assert_eq!(client_saw.answered, N);
    let snapshot = collector.finish().unwrap();
    let dns = dns_of(&snapshot, &client);
    assert_eq!(
        (dns.queries, dns.responses),
        (u64::from(N), u64::from(N)),
        "{dns:?}"
    );
    assert_eq!(dns.by_rcode.get("NXDOMAIN"), Some(&u64::from(N)));
    assert!(dns.by_resolver.contains_key("::1"), "{dns:?}");
    assert_median(dns, &client_saw, 25.0);
}

#[test]
fn garbage_on_port_53_is_malformed_and_measuring_goes_on() {
    let _serial = serial();
    const N: u32 = 20;
    let pair = NetnsPair::new();
    let silent_addr = "10.200.0.4";
    pair.add_address_b(silent_addr);
    let mut pod = PodCgroup::new();
    let client = pod.container();
    let _silent = server(&pair, silent_addr, 0, "never");
    let _server = server(&pair, ADDR_B, 0, "0");

    let collector = start(Duration::from_secs(5));
    let out = Workload::spawn(
        &pair.a,
        Some(&client),
        &["dns-garbage", &format!("{silent_addr}:53"), &N.to_string()],
    )
    .wait(WAIT);
    assert_eq!(out.trim(), format!("sent {}", 2 * N));
    assert_eq!(
        query(
            &pair,
            &client,
            &format!("{ADDR_B}:53"),
            "after.test",
            4,
            "udp"
        ),
        4
    );
    let snapshot = collector.finish().unwrap();

    let dns = dns_of(&snapshot, &client);
    assert_eq!(dns.malformed, u64::from(2 * N), "{dns:?}");
    assert_eq!((dns.queries, dns.responses), (4, 4), "{dns:?}");
    assert!(dns.latency_ms.p50.is_some());
}

#[test]
fn two_workloads_on_two_resolvers_are_kept_apart() {
    let _serial = serial();
    let pair = NetnsPair::new();
    let second = "10.200.0.3";
    pair.add_address_b(second);
    let mut pod_a = PodCgroup::new();
    let fast_client = pod_a.container();
    let mut pod_b = PodCgroup::new();
    let slow_client = pod_b.container();
    let _fast = server(&pair, ADDR_B, 0, "0");
    let _slow = server(&pair, second, 25, "0");

    let collector = start(Duration::from_secs(5));
    assert_eq!(
        query(
            &pair,
            &fast_client,
            &format!("{ADDR_B}:53"),
            "a.test",
            4,
            "udp"
        ),
        4
    );
    let slow_saw = query_in(
        &pair.a,
        &slow_client,
        &format!("{second}:53"),
        "b.test",
        7,
        "udp",
    );
    assert_eq!(slow_saw.answered, 7);
    let snapshot = collector.finish().unwrap();

    let fast = dns_of(&snapshot, &fast_client);
    assert_eq!((fast.queries, fast.responses), (4, 4), "{fast:?}");
    assert_eq!(fast.by_resolver.keys().collect::<Vec<_>>(), vec![ADDR_B]);
    assert!(fast.latency_ms.p50.unwrap() < 1.0, "{fast:?}");
    let slow = dns_of(&snapshot, &slow_client);
    assert_eq!((slow.queries, slow.responses), (7, 7), "{slow:?}");
    assert_eq!(slow.by_resolver.keys().collect::<Vec<_>>(), vec![second]);
    assert_median(slow, &slow_saw, 25.0);
    assert_eq!(
        workload(&snapshot, &slow_client)
            .unwrap()
            .identity
            .pod_uid
            .as_deref(),
        Some(pod_b.uid.as_str())
    );
}
