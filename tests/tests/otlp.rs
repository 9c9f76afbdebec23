//! `tuneprobe serve --otlp-endpoint` against a real OTLP receiver: every series pushed
//! comes back through a PromQL (MetricsQL) query with the value the agent's own
//! `/metrics` shows at that moment, the workload labels under their semantic-convention
//! names; and a receiver that is not there costs counted errors, never the agent.
//!
//! The receiver is Debian 13's VictoriaMetrics, which `cargo xtask setup` unpacks below
//! `~/.local/share/tuneprobe` (Debian 13's Prometheus is built without its OTLP
//! receiver: see `xtask/src/receiver.rs`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tuneprobe_tests::{
    ADDR_B, Container, NetnsPair, PodCgroup, Running, TempDir, Workload, dns_with_a_20ms_server,
    free_port, http_get, spawn_serve, tuneprobe_binary, url_encode,
};

const WAIT: Duration = Duration::from_secs(30);

/// A series: metric name and labels (empty values left out, as Prometheus does).
type Series = (String, BTreeMap<String, String>);
/// Series and their values.
type Values = BTreeMap<Series, f64>;
/// The resource attributes of each series the receiver holds.
type Resources = Vec<BTreeMap<String, String>>;

fn receiver_binary() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let path = home.join(".local/share/tuneprobe/victoria-metrics-trixie/usr/bin/victoria-metrics");
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// VictoriaMetrics on `port`, storing in `dir`; queries see samples as soon as they are
/// in (no latency offset).
fn start_receiver(port: u16, dir: &TempDir) -> Running {
    let receiver = Running(
        Command::new(receiver_binary())
            .arg(format!("-storageDataPath={}", dir.0.join("data").display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start victoria-metrics"),
    );
    let deadline = Instant::now() + WAIT;
    while http_get(port, "/health").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "victoria-metrics did not start");
        thread::sleep(Duration::from_millis(100));
    }
    receiver
}

/// A Prometheus text exposition as series and values (histograms as their `_bucket`,
/// `_sum` and `_count` series).
fn parse_exposition(text: &str) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("NAME VALUE");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        out.insert((name.to_string(), labels), parse_value(value));
    }
    out
}

/// `a="x",b="y\"z"` with the encoder's escapes; `le` as a number; empty values left out.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "{text}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => {}
                },
                c => value.push(c),
            }
        }
        if chars.peek() == Some(&',') {
            chars.next();
        }
        let name = name.trim().to_string();
        if !value.is_empty() {
            labels.insert(name.clone(), normalize(&name, value));
        }
    }
    labels
}

/// `le` bounds compared as numbers (`1` and `1.0`, `+Inf`).
fn normalize(name: &str, value: String) -> String {
    if name == "le" {
        format!("{}", parse_value(&value))
    } else {
        value
    }
}

fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().unwrap_or_else(|_| panic!("value {other}")),
    }
}

/// What the receiver holds: the last value of every `tuneprobe_*` series pushed within
/// the last `window`, with the attribute names mapped back to the exposition's labels;
/// and the resource attributes each carried.
fn query_receiver(
    port: u16,
    window: Duration,
) -> (BTreeMap<Series, f64>, Vec<BTreeMap<String, String>>) {
    let promql = format!(
        "last_over_time({{__name__=~\"tuneprobe_.*\"}}[{}ms])",
        window.as_millis()
    );
    let (status, body) = http_get(
        port,
        &format!("/api/v1/query?query={}&nocache=1", url_encode(&promql)),
    )
    .expect("the receiver answers");
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).expect("JSON");
    let mut series = BTreeMap::new();
    let mut resources = Vec::new();
    for result in json["data"]["result"].as_array().expect("a result list") {
        let mut labels = BTreeMap::new();
        let mut resource = BTreeMap::new();
        let mut name = String::new();
        for (key, value) in result["metric"].as_object().expect("labels") {
            let value = value.as_str().unwrap_or_default().to_string();
            let label = match key.as_str() {
                "__name__" => {
                    name = value;
                    continue;
                }
                "service.name" | "host.name" | "k8s.node.name" => {
                    resource.insert(key.clone(), value);
                    continue;
                }
                "k8s.namespace.name" => "namespace",
                "k8s.pod.name" => "pod",
                "k8s.container.name" => "container",
                other => other,
            };
            labels.insert(label.to_string(), normalize(label, value));
        }
        let value = parse_value(result["value"][1].as_str().expect("a value"));
        // Names the exposition uses for labels, so none can collide with the mapping.
        assert!(
            !series.contains_key(&(name.clone(), labels.clone())),
            "{name} {labels:?} twice"
        );
        series.insert((name, labels), value);
        resources.push(resource);
    }
    (series, resources)
}

/// The agent's `/metrics` now.
fn scrape(port: u16) -> BTreeMap<Series, f64> {
    let (status, body) = http_get(port, "/metrics").expect("serve answers");
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body)
}

/// Equal for counts; VictoriaMetrics keeps 12 significant decimal digits of other
/// values (it stores them as decimals), so fractions are held to that.
fn same(exposition: f64, received: f64) -> bool {
    if exposition.fract() == 0.0 || exposition.is_infinite() {
        return exposition == received;
    }
    (exposition - received).abs() <= exposition.abs() * 1e-11
}

/// The gauge a push takes from the previous scrape, as the next scrape shows it.
const SCRAPE_DURATION: &str = "tuneprobe_scrape_duration_seconds";

/// Scrape, let pushes land, query the receiver over exactly the time since the scrape,
/// scrape again. The pushes in between carried what the second scrape shows wherever
/// nothing moved between the two (the scrape duration included: a push sends the
/// previous scrape's, as the second scrape does), and for a counter that moved (node-wide
/// ones, other tests' IO) a value between the two. Returns both scrapes, the receiver's
/// series and their resources; `None` while the scrapes have different series.
fn bracketed(metrics_port: u16, receiver_port: u16) -> Option<(Values, Values, Values, Resources)> {
    let first = scrape(metrics_port);
    let after_first = Instant::now();
    thread::sleep(Duration::from_secs(4));
    let (received, resources) = query_receiver(receiver_port, after_first.elapsed());
    let second = scrape(metrics_port);
    if first.keys().ne(second.keys()) {
        eprintln!("series came or went between the scrapes; again");
        return None;
    }
    Some((first, second, received, resources))
}

/// Counters, and the parts of histograms, only grow.
fn monotonic(name: &str) -> bool {
    ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    let labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    (name.to_string(), labels)
}

/// Kubelet-style pod log directories that name `pod`'s containers `shop/api-1/NAME`.
fn name_pod(logs: &Path, pod: &PodCgroup, containers: &[(&str, &Container)]) {
    fs::create_dir_all(logs.join("containers")).unwrap();
    for (name, container) in containers {
        fs::create_dir_all(logs.join(format!("pods/shop_api-1_{}/{name}", pod.uid))).unwrap();
        let id = &container.container_id;
        fs::write(
            logs.join(format!("containers/api-1_shop_{name}-{id}.log")),
            "",
        )
        .unwrap();
    }
}

/// `serve` exporting only `scope`, pushing every second to the receiver on
/// `receiver_port`; ready once `/metrics` answers.
fn serve_pushing(metrics_port: u16, receiver_port: u16, logs: &Path, scope: &str) -> Running {
    let serve = Running(
        Command::new(tuneprobe_binary())
            .args(["serve", "--kube-api", "none", "--pod-logs-dir"])
            .arg(logs.join("pods"))
            .args(["--cgroup-scope", scope])
            .args(["--otlp-interval", "1s", "--otlp-endpoint"])
            .arg(format!("http://127.0.0.1:{receiver_port}/opentelemetry"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tuneprobe serve"),
    );
    tuneprobe_tests::wait_for_metrics(metrics_port, "tuneprobe_probe_attached");
    serve
}

/// Waits until the receiver holds `value` for `wanted`.
fn wait_until_received(receiver_port: u16, wanted: &Series, value: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (received, _) = query_receiver(receiver_port, Duration::from_secs(5));
        if received.get(wanted) == Some(&value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{wanted:?} never reached {value}: {:?}",
            received.get(wanted)
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// Holds the receiver to the scrapes around its query (see [`bracketed`]): the same
/// series, equal values where nothing moved. Returns the series that moved.
fn compare<'a>(first: &Values, second: &'a Values, received: &Values) -> Vec<&'a Series> {
    let missing: Vec<&Series> = second
        .keys()
        .filter(|s| !received.contains_key(*s))
        .collect();
    let extra: Vec<&Series> = received
        .keys()
        .filter(|s| !second.contains_key(*s))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing: {missing:#?}\nextra: {extra:#?}"
    );
    let moved: Vec<&Series> = second
        .iter()
        .filter(|(series, value)| first[*series] != **value && series.0 != SCRAPE_DURATION)
        .map(|(series, _)| series)
        .collect();
    let differ: Vec<(&Series, f64, f64, f64)> = second
        .iter()
        .filter(|(series, value)| {
            let got = received[*series];
            if moved.contains(series) {
                !(monotonic(&series.0) && first[*series] <= got && got <= **value)
            } else {
                !same(**value, got)
            }
        })
        .map(|(series, value)| (series, first[series], *value, received[series]))
        .collect();
    assert!(
        differ.is_empty(),
        "(series, first scrape, second scrape, received): {differ:#?}"
    );
    moved
}

/// Says how many series compared and how.
fn summarize(exposition: &Values, received: &Values, moved: &[&Series]) {
    let families: BTreeSet<&str> = exposition.keys().map(|(name, _)| name.as_str()).collect();
    let steady = |(series, _): &(&Series, &f64)| !moved.contains(series);
    let counts = exposition
        .iter()
        .filter(steady)
        .filter(|(_, v)| v.fract() == 0.0)
        .count();
    let fractions_exact = exposition
        .iter()
        .filter(steady)
        .filter(|(series, v)| v.fract() != 0.0 && received[*series] == **v)
        .count();
    eprintln!(
        "{} series of {} names in /metrics and the receiver: {} equal ({counts} of them \
         counts, exact; {fractions_exact} fractions bit-equal), {} node-wide counters moved \
         between the scrapes and were pushed with a value between them: {moved:?}",
        exposition.len(),
        families.len(),
        exposition.len() - moved.len(),
        moved.len()
    );
}

#[test]
fn every_pushed_series_comes_back_with_the_value_of_metrics() {
    const N: u64 = 25;
    let dir = TempDir::new("tuneprobe-otlp-");
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let server = pod.container();
    let client = pod.container();
    let logs = dir.0.join("logs");
    name_pod(&logs, &pod, &[("server", &server), ("client", &client)]);
    // The server container owns namespace B, where the datagrams find no socket.
    let mut sink = Workload::spawn(
        &pair.b,
        Some(&server),
        &["tcp-sink", &format!("{ADDR_B}:5001")],
    );
    assert_eq!(sink.read_line(), "ready");
    let receiver_port = free_port();
    let _receiver = start_receiver(receiver_port, &dir);
    let metrics_port = free_port();
    let _serve = serve_pushing(metrics_port, receiver_port, &logs, &pod.pod_path);

    // Load: socketless datagrams into namespace B, DNS with 20 ms answers from A.
    Workload::spawn(
        &pair.a,
        None,
        &["udp-send", &format!("{ADDR_B}:9"), &N.to_string(), "50"],
    )
    .wait(WAIT);
    {
        let (_dns_server, _dns_client) = dns_with_a_20ms_server(&pair, &client);
        thread::sleep(Duration::from_secs(2));
    }
    // The known count arrives through the push.
    let drops = series(
        "tuneprobe_packet_drops_total",
        &[
            ("namespace", "shop"),
            ("pod", "api-1"),
            ("reason", "NO_SOCKET"),
        ],
    );
    wait_until_received(receiver_port, &drops, N as f64);
    // Queries cut off by the client's end time out after --dns-timeout (5 s).
    thread::sleep(Duration::from_secs(6));

    let (first, exposition, received, resources) = (0..5)
        .find_map(|_| bracketed(metrics_port, receiver_port))
        .expect("/metrics kept changing its series for five tries");
    let moved = compare(&first, &exposition, &received);
    summarize(&exposition, &received, &moved);
    // The pod's own series never move once the load is over: all exact.
    assert!(
        moved.iter().all(|(_, labels)| !labels.contains_key("pod")),
        "{moved:?}"
    );
    assert_eq!(exposition.get(&drops), Some(&(N as f64)));
    // The kinds all came through: a counter, a histogram and gauges of the pod.
    let names: BTreeSet<&str> = exposition.keys().map(|(name, _)| name.as_str()).collect();
    for name in [
        "tuneprobe_dns_queries_total",
        "tuneprobe_dns_latency_seconds_bucket",
        "tuneprobe_dns_latency_seconds_count",
        "tuneprobe_dns_latency_seconds_sum",
        "tuneprobe_folded_workloads",
    ] {
        assert!(names.contains(name), "no {name} in {names:?}");
    }
    let pushes_failed = series("tuneprobe_agent_errors_total", &[("stage", "otlp_push")]);
    assert_eq!(exposition.get(&pushes_failed), Some(&0.0));
    // Every series carries the node's resource attributes.
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let hostname = hostname.trim();
    let node = series(
        "",
        &[
            ("service.name", "tuneprobe"),
            ("host.name", hostname),
            ("k8s.node.name", hostname),
        ],
    )
    .1;
    assert!(resources.iter().all(|r| *r == node), "{resources:?}");
}

/// The negative control: with nothing listening at the endpoint every push fails, is
/// counted under `otlp_push`, and `serve` goes on serving.
#[test]
fn a_receiver_that_is_not_there_costs_counted_errors_not_the_agent() {
    let nowhere = free_port();
    let port = free_port();
    let _serve = spawn_serve(
        port,
        &[
            "--otlp-interval",
            "1s",
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{nowhere}"),
            "--cgroup-scope",
            "/tuneprobe-otlp-nothing-here",
        ],
    );
    tuneprobe_tests::wait_for_metrics(port, "tuneprobe_probe_attached");
    let failed = || {
        scrape(port)
            .get(&series(
                "tuneprobe_agent_errors_total",
                &[("stage", "otlp_push")],
            ))
            .copied()
    };
    let deadline = Instant::now() + WAIT;
    while failed().unwrap_or_default() < 3.0 {
        assert!(
            Instant::now() < deadline,
            "pushes never counted as failed: {:?}",
            failed()
        );
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    // The other stages stayed clean: only the push failed.
    for stage in ["collect", "render"] {
        let errors = series("tuneprobe_agent_errors_total", &[("stage", stage)]);
        assert_eq!(scrape(port).get(&errors), Some(&0.0), "{stage}");
    }
}
