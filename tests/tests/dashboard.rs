//! The Grafana dashboard (deploy/dashboards/tuneprobe.json) against a real Prometheus
//! scraping `tuneprobe serve`: every query of every panel, with the template variables
//! expanded the way Grafana expands them, must be accepted by Prometheus and return data
//! for the test's own pods while the test generates each panel's signal.
//!
//! Every panel has data here: the one cluster-only input, the `node` label that the
//! ServiceMonitor's relabeling adds, is added by the scrape config the same way. A panel
//! added later whose signal this test does not generate fails it, by name.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tuneprobe_tests::{
    ADDR_B, Container, LoopDevice, NetnsPair, NftTable, PodCgroup, Running, Workload, free_port,
    http_get, testload, tuneprobe_binary, unique,
};

/// Bound of every wait: serve getting ready, and the panels getting their data.
const WAIT: Duration = Duration::from_secs(60);
/// Prometheus's scrape interval in this test, and so the datasource's minimum interval
/// from which Grafana derives `$__interval` and `$__rate_interval`.
const SCRAPE_S: u64 = 1;

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One query of one panel.
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
    /// Grafana runs it as an instant query (tables) rather than over the time range.
    instant: bool,
}

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dashboards/tuneprobe.json");
    serde_json::from_str(&fs::read_to_string(&path).expect("read the dashboard"))
        .expect("the dashboard is JSON")
}

/// Every target of every panel, rows' nested panels included.
fn panel_queries(panels: &[Value], out: &mut Vec<PanelQuery>) {
    for panel in panels {
        if let Some(nested) = panel["panels"].as_array() {
            panel_queries(nested, out);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target without expr: {target}"));
            out.push(PanelQuery {
                panel: panel["title"].as_str().unwrap_or("?").to_string(),
                ref_id: target["refId"].as_str().unwrap_or("?").to_string(),
                expr: expr.to_string(),
                instant: target["instant"].as_bool().unwrap_or(false),
            });
        }
    }
}

/// Grafana's expansion of `$name` and `${name}`; a variable this test does not know is
/// an error rather than left in the query.
fn expand(expr: &str, vars: &[(&str, String)]) -> String {
    let mut vars: Vec<&(&str, String)> = vars.iter().collect();
    // `$__interval_ms` before `$__interval`: the longer name first.
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = expr.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    assert!(
        !out.contains('$') && !out.contains("[["),
        "a template variable this test does not expand: {out}"
    );
    out
}

/// Prometheus's answer to an API call: `Ok(data)`, or `Err(message)` when the query
/// is refused (a syntax error, an unknown function, a type mismatch).
fn prometheus_api(port: u16, path: &str) -> Result<Value, String> {
    let (status, body) = http_get(port, path).ok_or_else(|| format!("no response to {path}"))?;
    let json: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if json["status"] != "success" {
        return Err(format!(
            "{status}: {}: {}",
            json["errorType"], json["error"]
        ));
    }
    Ok(json["data"].clone())
}

/// The finite values of every series of a query's result (a matrix or a vector).
fn values(data: &Value) -> Vec<f64> {
    let mut out = Vec::new();
    for series in data["result"].as_array().into_iter().flatten() {
        let points: Vec<&Value> = match series["values"].as_array() {
            Some(points) => points.iter().collect(),
            None => vec![&series["value"]],
        };
        out.extend(
            points
                .iter()
                .filter_map(|p| p[1].as_str()?.parse::<f64>().ok())
                .filter(|v| v.is_finite()),
        );
    }
    out
}

fn set_quota(container: &Container, quota_us: u64, period_us: u64) {
    let dir = container.cpu_dir();
    if dir.join("cpu.max").exists() {
        fs::write(dir.join("cpu.max"), format!("{quota_us} {period_us}")).unwrap();
    } else {
        fs::write(dir.join("cpu.cfs_period_us"), period_us.to_string()).unwrap();
        fs::write(dir.join("cpu.cfs_quota_us"), quota_us.to_string()).unwrap();
    }
}

/// The kubelet's log layout, from which serve names pods without a Kubernetes API:
/// `pods/NS_POD_UID/CONTAINER/` and `containers/POD_NS_CONTAINER-ID.log`.
fn pod_logs(logs: &Path, namespace: &str, pod: &str, uid: &str, container: &str, id: &str) {
    fs::create_dir_all(logs.join(format!("pods/{namespace}_{pod}_{uid}/{container}"))).unwrap();
    fs::create_dir_all(logs.join("containers")).unwrap();
    fs::write(
        logs.join(format!("containers/{pod}_{namespace}_{container}-{id}.log")),
        "",
    )
    .unwrap();
}

#[test]
fn every_panel_query_returns_data_from_a_real_prometheus() {
    let dir = tuneprobe_tests::TempDir::new("tuneprobe-dashboard-");

    // Names of this test's own: the panels are filtered to them, so other tests' traffic
    // running beside this one cannot give a panel its data.
    let node = unique("node-");
    let namespace = unique("dash");
    let pair = NetnsPair::new();

    // One pod per signal family.
    let mut server_pod = PodCgroup::new();
    let server = server_pod.container();
    let mut client_pod = PodCgroup::new();
    let client = client_pod.container();
    let mut disk_pod = PodCgroup::with_controllers(&["blkio"]);
    let reader = disk_pod.container();
    let mut batch_pod = PodCgroup::with_controllers(&["cpu", "cpuacct"]);
    let worker = batch_pod.container();
    let mut conn_pod = PodCgroup::new();
    let dialer = conn_pod.container();
    let pods = [
        ("api-1", &server_pod, "server", &server),
        ("web-1", &client_pod, "client", &client),
        ("disk-1", &disk_pod, "reader", &reader),
        ("batch-1", &batch_pod, "worker", &worker),
        ("conn-1", &conn_pod, "dialer", &dialer),
    ];
    for (pod, cgroup, container, c) in &pods {
        pod_logs(
            &dir.0,
            &namespace,
            pod,
            &cgroup.uid,
            container,
            &c.container_id,
        );
    }

    // Knob settings made before serve starts, so that they are its starting point and
    // not changes: a tight quota for the worker, a scheduler on the test's own loop
    // device (queue time), and somaxconn inside namespace B only (a per-namespace
    // sysctl, below the guides' 65535: a deviation owned by the server pod).
    set_quota(&worker, 20_000, 100_000);
    let mut disk = LoopDevice::new(64);
    disk.set_scheduler("mq-deadline");
    pair.exec(
        &pair.b,
        &["sh", "-c", "echo 1024 > /proc/sys/net/core/somaxconn"],
    );

    // Sustained signals: a per-workload counter is exported from its first non-zero
    // value on, so a one-off burst would be the series' first sample and invisible to
    // rate(); these keep going for the whole test.
    // Retransmits for the client: a flow through a rule dropping 1 in 10 segments,
    // which are also drops (NETFILTER_DROP) in the server pod's namespace.
    let mut sink = Workload::spawn(
        &pair.b,
        Some(&server),
        &["tcp-sink", &format!("{ADDR_B}:5001")],
    );
    assert_eq!(sink.read_line(), "ready");
    let _nft = NftTable::with_rule(
        &pair,
        &pair.b,
        "input",
        "tcp dport 5001 numgen random mod 10 == 0 counter drop",
    );
    let mut flow = Workload::spawn(
        &pair.a,
        Some(&client),
        &["tcp-flow", &format!("{ADDR_B}:5001"), "65536", "20"],
    );
    assert_eq!(flow.read_line(), "ready");
    // DNS for the client: a server answering SERVFAIL (rcode 2) after 20 ms, and one
    // that never answers (a timeout per second, with serve's --dns-timeout of 1 s).
    let resolver = format!("{ADDR_B}:53");
    let mut dns_server = Workload::spawn(&pair.b, None, &["dns-server", &resolver, "20", "2"]);
    assert_eq!(dns_server.read_line(), "ready");
    let _dns_queries = Workload::spawn(
        &pair.a,
        Some(&client),
        &[
            "dns-query",
            &resolver,
            "shop.test",
            "1000000",
            "udp",
            "1000",
        ],
    );
    let silent = "10.200.0.3:53";
    pair.add_address_b("10.200.0.3");
    let mut silent_server = Workload::spawn(&pair.b, None, &["dns-server", silent, "0", "never"]);
    assert_eq!(silent_server.read_line(), "ready");
    let _unanswered = Workload::spawn(
        &pair.a,
        Some(&client),
        &["dns-query", silent, "shop.test", "1000000", "udp", "1000"],
    );
    // Connections for the dialer, each kind every 100-200 ms: connects to a server that
    // accepts and resets (resets received, connections that end with a round-trip time
    // and a duration), connects to a closed port (failures, refused), and short
    // transfers to the sink that the dialer closes first (its sockets in TIME_WAIT).
    let reset_server = format!("{ADDR_B}:5002");
    let mut resets = Workload::spawn(&pair.b, None, &["tcp-reset-server", &reset_server]);
    assert_eq!(resets.read_line(), "ready");
    let _reset_connects = Workload::spawn(
        &pair.a,
        Some(&dialer),
        &["tcp-connect-loop", &reset_server, "100"],
    );
    let _refused_connects = Workload::spawn(
        &pair.a,
        Some(&dialer),
        &["tcp-connect-loop", &format!("{ADDR_B}:5003"), "100"],
    );
    let _transfers = Workload::spawn(
        &pair.a,
        Some(&dialer),
        &["tcp-send-loop", &format!("{ADDR_B}:5001"), "4096", "200"],
    );
    // Block IO for the reader: direct reads of the loop device, paced so as not to load
    // the machine (the process is killed at the end of the test).
    let _fio = Workload::spawn_program(
        None,
        Some(&reader),
        Path::new("fio"),
        &[
            "--name=dashboard",
            &format!("--filename={}", disk.device),
            "--direct=1",
            "--rw=randread",
            "--bs=4k",
            "--iodepth=1",
            "--ioengine=psync",
            "--rate_iops=200",
            "--runtime=600",
            "--time_based",
            "--output-format=json",
        ],
    );
    // CPU throttling for the worker: a busy loop under the 20 ms / 100 ms quota.
    let _busy = Workload::spawn_program(None, Some(&worker), &testload(), &["busy", "600000"]);

    let metrics_port = free_port();
    let mut serve = Command::new(tuneprobe_binary())
        .args(["serve", "--kube-api", "none", "--verify-window", "5s"])
        // Advice within seconds: the worker is throttled until its quota is raised.
        .args(["--advice-window", "6s"])
        .args(["--dns-timeout", "1s"])
        .arg("--pod-logs-dir")
        .arg(dir.0.join("pods"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tuneprobe serve");
    let stderr = serve.stderr.take().expect("stderr piped");
    let _serve = Running(serve);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("tuneprobe serve did not get ready");
        if line.contains("ready") {
            break;
        }
    }

    // The `node` label as the ServiceMonitor's relabeling adds it, and honor_labels as
    // it sets (honorLabels): the workloads' namespace/pod/container labels are kept.
    let prometheus_port = free_port();
    let config = dir.0.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S}s\nscrape_configs:\n  - job_name: tuneprobe\n    honor_labels: true\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n        labels:\n          node: {node}\n"
        ),
    )
    .unwrap();
    let start = now_s();
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

    // A tuning change for the changes and verdict panels: the worker's quota raised once
    // serve has a full 5 s before window (its first samples need two ticks).
    thread::sleep(Duration::from_secs(9));
    set_quota(&worker, 100_000, 100_000);

    // Grafana's values: `$pod` as "All of the test's pods" selected in a multi-value
    // variable, `$__interval` the scrape interval (the datasource's minimum, which a
    // range of a few minutes does not exceed), `$__rate_interval` Grafana's
    // max($__interval + scrape interval, 4 * scrape interval).
    let pod_names: Vec<&str> = pods.iter().map(|p| p.0).collect();
    let pod_regex = format!("({})", pod_names.join("|"));
    let variable_values = |range_s: u64| {
        vec![
            ("node", node.clone()),
            ("namespace", namespace.clone()),
            ("pod", pod_regex.clone()),
            ("__interval", format!("{SCRAPE_S}s")),
            ("__interval_ms", (SCRAPE_S * 1000).to_string()),
            (
                "__rate_interval",
                format!("{}s", (2 * SCRAPE_S).max(4 * SCRAPE_S)),
            ),
            ("__range", format!("{range_s}s")),
            ("__range_s", range_s.to_string()),
            ("__range_ms", (range_s * 1000).to_string()),
        ]
    };

    let dashboard = dashboard();
    let mut queries = Vec::new();
    panel_queries(
        dashboard["panels"].as_array().expect("panels"),
        &mut queries,
    );
    assert!(queries.len() >= 25, "{} queries", queries.len());

    // Poll every query until each has a positive value (every panel's signal is a count,
    // rate, latency or 1-valued gauge that is above zero while its signal has data), or
    // the deadline passes; a refused query fails at once.
    let deadline = Instant::now() + WAIT;
    let mut missing: Vec<String>;
    loop {
        let end = now_s();
        let range_s = (end - start).ceil() as u64;
        let vars = variable_values(range_s);
        missing = Vec::new();
        for q in &queries {
            let promql = expand(&q.expr, &vars);
            let path = if q.instant {
                format!(
                    "/api/v1/query?query={}&time={end}",
                    tuneprobe_tests::url_encode(&promql)
                )
            } else {
                format!(
                    "/api/v1/query_range?query={}&start={start}&end={end}&step={SCRAPE_S}",
                    tuneprobe_tests::url_encode(&promql)
                )
            };
            match prometheus_api(prometheus_port, &path) {
                Err(error) if error.contains("bad_data") || error.contains("execution") => {
                    panic!(
                        "{} ({}): Prometheus refuses {promql}: {error}",
                        q.panel, q.ref_id
                    )
                }
                Err(error) => missing.push(format!("{} ({}): {error}", q.panel, q.ref_id)),
                Ok(data) => {
                    let found = values(&data);
                    if !found.iter().any(|v| *v > 0.0) {
                        missing.push(format!(
                            "{} ({}): no positive value in {} points of {promql}: {}",
                            q.panel,
                            q.ref_id,
                            found.len(),
                            data["result"]
                        ));
                    }
                }
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_secs(1));
    }
    assert!(
        missing.is_empty(),
        "panels without data after {WAIT:?}:\n{}",
        missing.join("\n")
    );
    eprintln!(
        "{} queries of {} panels have data",
        queries.len(),
        queries
            .iter()
            .map(|q| &q.panel)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );

    // The verdicts table shows the quota change's verdict for the worker, by pod name.
    let verdicts = queries
        .iter()
        .find(|q| q.expr.contains("tuneprobe_tuning_verdict"))
        .expect("a verdict panel");
    let data = prometheus_api(
        prometheus_port,
        &format!(
            "/api/v1/query?query={}",
            tuneprobe_tests::url_encode(&expand(&verdicts.expr, &variable_values(60)))
        ),
    )
    .expect("the verdict query");
    assert!(
        data["result"].as_array().unwrap().iter().any(|s| {
            let m = &s["metric"];
            m["pod"] == "batch-1"
                && m["container"] == "worker"
                && m["namespace"] == namespace.as_str()
                && m["knob"] == "cpu.max"
                && m["signal"] == "cpu_throttled_ratio"
        }),
        "no verdict for batch-1/worker: {data}"
    );

    // The template variables' own queries list the test's node, namespace and pods, as
    // Grafana asks Prometheus for them (label values of the series matching a selector).
    let vars = variable_values(60);
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"].as_str().expect("a variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not label_values(SELECTOR, LABEL): {query}"));
        let (selector, label) = inner.rsplit_once(',').expect("SELECTOR, LABEL");
        let selector = expand(selector.trim(), &vars);
        let label = label.trim();
        let listed = prometheus_api(
            prometheus_port,
            &format!(
                "/api/v1/label/{label}/values?match[]={}&start={start}",
                tuneprobe_tests::url_encode(&selector)
            ),
        )
        .unwrap_or_else(|e| panic!("variable {}: {e}", variable["name"]));
        let expected: Vec<&str> = match variable["name"].as_str() {
            Some("node") => vec![node.as_str()],
            Some("namespace") => vec![namespace.as_str()],
            Some("pod") => pod_names.clone(),
            other => panic!("variable {other:?}: no expected values in this test"),
        };
        for value in expected {
            assert!(
                listed.as_array().unwrap().iter().any(|v| v == value),
                "variable {}: {value} not in {listed}",
                variable["name"]
            );
        }
    }
}
