//! `tuneprobe serve` scraped by a real Prometheus server: per-pod values come back
//! through PromQL with the pod's namespace, pod and container names, and `promtool`
//! accepts the exposition.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tuneprobe_tests::{
    ADDR_B, NetnsPair, NftTable, PodCgroup, Running, Workload, free_port, http_get,
    tuneprobe_binary, unique,
};

const WAIT: Duration = Duration::from_secs(30);

/// `promtool check metrics` finds no problem in an exposition.
fn promtool_check(exposition: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    promtool
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let lint = promtool.wait_with_output().expect("promtool finishes");
    assert!(
        lint.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
}

/// The value of a PromQL instant query with one result, once Prometheus has it.
fn query_until(port: u16, promql: &str, accept: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((200, body)) = http_get(
            port,
            &format!(
                "/api/v1/query?query={}",
                tuneprobe_tests::url_encode(promql)
            ),
        ) {
            let json: Value = serde_json::from_str(&body).unwrap_or_default();
            let value = json["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok());
            if let Some(v) = value {
                if accept(v) {
                    return v;
                }
                last = Some(v);
            }
        }
        thread::sleep(Duration::from_millis(250));
    }
    panic!("{promql}: last value {last:?}");
}

#[test]
fn prometheus_scrapes_per_pod_values_by_name() {
    const N: u64 = 30;
    let pair = NetnsPair::new();
    // The receiving pod in namespace B, the sending pod in namespace A.
    let mut server_pod = PodCgroup::new();
    let server_app = server_pod.container();
    let mut client_pod = PodCgroup::new();
    let client_app = client_pod.container();
    let mut sink = Workload::spawn(
        &pair.b,
        Some(&server_app),
        &["tcp-sink", &format!("{ADDR_B}:5001")],
    );
    assert_eq!(sink.read_line(), "ready");
    let _nft = NftTable::with_rule(
        &pair,
        &pair.b,
        "input",
        "tcp dport 5001 meta length > 200 limit rate 1/hour burst 1 packets counter drop",
    );

    pair.exec(
        &pair.b,
        &["sh", "-c", "echo 2048 > /proc/sys/net/core/somaxconn"],
    );
    let logs = std::env::temp_dir().join(unique("tuneprobe-prom-"));
    for (pod, ns, uid, container, id) in [
        (
            "api-1",
            "shop",
            &server_pod.uid,
            "server",
            &server_app.container_id,
        ),
        (
            "web-1",
            "shop",
            &client_pod.uid,
            "client",
            &client_app.container_id,
        ),
    ] {
        fs::create_dir_all(logs.join(format!("pods/{ns}_{pod}_{uid}/{container}"))).unwrap();
        fs::create_dir_all(logs.join("containers")).unwrap();
        fs::write(
            logs.join(format!("containers/{pod}_{ns}_{container}-{id}.log")),
            "",
        )
        .unwrap();
    }

    let metrics_port = free_port();
    let mut serve = Command::new(tuneprobe_binary())
        .args([
            "serve",
            "--bpf-stats",
            "--listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--pod-logs-dir",
        ])
        .arg(logs.join("pods"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tuneprobe serve");
    let stderr = serve.stderr.take().expect("stderr piped");
    let serve = Running(serve);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx.recv_timeout(WAIT).expect("tuneprobe serve said nothing");
    assert!(ready.contains("ready"), "{ready}");
    assert_eq!(http_get(metrics_port, "/readyz").map(|r| r.0), Some(200));
    assert_eq!(http_get(metrics_port, "/healthz").map(|r| r.0), Some(200));

    let prometheus_port = free_port();
    let config = logs.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tuneprobe\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .unwrap();
    let prometheus = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                logs.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

    // Traffic: socketless drops for the server pod, a retransmit for the client.
    Workload::spawn(
        &pair.a,
        None,
        &["udp-send", &format!("{ADDR_B}:9"), &N.to_string(), "50"],
    )
    .wait(WAIT);
    let segs_before = pair.counter(&pair.a, "snmp", "Tcp", "RetransSegs");
    Workload::spawn(
        &pair.a,
        Some(&client_app),
        &["tcp-send", &format!("{ADDR_B}:5001"), "1000000"],
    )
    .wait(WAIT);
    let segs = pair.counter(&pair.a, "snmp", "Tcp", "RetransSegs") - segs_before;
    assert!(segs >= 1);

    let drops = query_until(
        prometheus_port,
        "tuneprobe_packet_drops_total{namespace=\"shop\",pod=\"api-1\",container=\"\",reason=\"NO_SOCKET\"}",
        |v| v >= N as f64,
    );
    assert_eq!(drops, N as f64);
    let retransmitted = query_until(
        prometheus_port,
        "tuneprobe_tcp_retransmitted_segments_total{namespace=\"shop\",pod=\"web-1\",container=\"client\"}",
        |v| v >= segs as f64,
    );
    assert_eq!(retransmitted, segs as f64);
    // The tuning inventory: namespace B's own somaxconn, attributed to the pod in it.
    let somaxconn = query_until(
        prometheus_port,
        &format!(
            "tuneprobe_tuning_value{{knob=\"net.core.somaxconn\",scope=\"netns:{}\",owner=\"{}\"}}",
            NetnsPair::inode(&pair.b),
            server_pod.pod_path
        ),
        |v| v == 2048.0,
    );
    assert_eq!(somaxconn, 2048.0);

    // --bpf-stats: the kernel's own accounting of the drop program's runs.
    let runs = query_until(
        prometheus_port,
        "tuneprobe_program_runs_total{probe=\"kfree_skb\"}",
        |v| v >= N as f64,
    );
    assert!(runs >= N as f64, "{runs}");
    let attached = query_until(prometheus_port, "sum(tuneprobe_probe_attached)", |v| {
        v > 0.0
    });
    assert!(attached >= 9.0, "{attached}");

    // The exposition itself passes promtool's lint.
    let (status, body) = http_get(metrics_port, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    promtool_check(&body);
    drop(serve);
    drop(prometheus);
    let _ = fs::remove_dir_all(Path::new(&logs));
}

#[test]
fn promtool_accepts_escaped_label_values_and_the_folded_series() {
    use tuneprobe::{
        report::{Snapshot, Workload as Report},
        views::metrics::Exporter,
    };
    let workload = |path: &str| {
        let mut report = Report::default();
        report.identity.cgroup_path = Some(path.to_string());
        report.signals.drops.add("NO_SOCKET", 1);
        report
    };
    let snapshot = Snapshot {
        duration_s: 1.0,
        probes: vec![],
        map_overflows: Default::default(),
        gc_deleted_entries: Default::default(),
        program_stats: vec![],
        workloads: vec![
            workload("/system.slice/a\\x2db.service"),
            workload("/quote\"d/new\nline"),
            workload("/third"),
        ],
    };
    // A cap of two: the third workload folds into cgroup="other".
    let text = Exporter::new(2, &[]).render(&snapshot, 0.0);
    assert!(
        text.contains(r#"cgroup="/system.slice/a\\x2db.service""#),
        "{text}"
    );
    assert!(text.contains(r#"cgroup="/quote\"d/new\nline""#), "{text}");
    assert!(
        text.contains(r#"cgroup="other""#) && text.contains("tuneprobe_folded_workloads 1"),
        "{text}"
    );
    promtool_check(&text);
}

#[test]
fn serve_judges_a_quota_change_and_exports_it() {
    // A busy container throttled by a 20 ms quota; raised to 100 ms while serve runs,
    // which predicted that the share of throttled periods would at least halve.
    let mut pod = PodCgroup::with_controllers(&["cpu"]);
    let app = pod.container();
    let dir = app.cpu_dir().to_path_buf();
    let (file, tight, generous) = if dir.join("cpu.max").exists() {
        ("cpu.max", "20000 100000", "100000 100000")
    } else {
        fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
        ("cpu.cfs_quota_us", "20000", "100000")
    };
    fs::write(dir.join(file), tight).unwrap();
    let _busy = Workload::spawn_program(
        None,
        Some(&app),
        &tuneprobe_tests::testload(),
        &["busy", "60000"],
    );

    let port = free_port();
    let mut serve = Command::new(tuneprobe_binary())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--verify-window",
            "5s",
            "--kube-api",
            "none",
            "--expect",
            "cpu_throttled_ratio:lower:50%",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tuneprobe serve");
    let stderr = serve.stderr.take().expect("stderr piped");
    let _serve = Running(serve);
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    assert!(lines.any(|l| l.contains("ready")), "serve never got ready");
    thread::spawn(move || lines.for_each(drop));

    // A full before window (the first samples need two ticks with the quota seen),
    // then the change; the verdict is final 5 s later.
    thread::sleep(Duration::from_secs(9));
    fs::write(dir.join(file), generous).unwrap();
    let deadline = Instant::now() + WAIT;
    let report = loop {
        let (status, body) = http_get(port, "/changes").expect("GET /changes");
        assert_eq!(status, 200);
        let changes: Value = serde_json::from_str(&body).unwrap();
        let ours =
            changes.as_array().unwrap().iter().find(|c| {
                c["change"]["scope"] == format!("cgroup:{}", app.path) && c["final"] == true
            });
        if let Some(report) = ours {
            break report.clone();
        }
        assert!(Instant::now() < deadline, "no final verdict: {changes:#}");
        thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(report["change"]["knob"], "cpu.max");
    assert_eq!(report["change"]["old"], "20000 100000");
    assert_eq!(report["change"]["new"], "100000 100000");
    let verdict = report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["cgroup_path"] == app.path.as_str() && v["signal"] == "cpu_throttled_ratio")
        .unwrap_or_else(|| panic!("no verdict for the container: {report:#}"));
    assert_eq!(verdict["verdict"], "improved", "{verdict:#}");
    assert_eq!(
        verdict["prediction"]["outcome"], "as predicted",
        "{verdict:#}"
    );
    assert_eq!(verdict["exploratory"], false);
    let time = report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| {
            v["cgroup_path"] == app.path.as_str() && v["signal"] == "cpu_throttled_ms_per_period"
        })
        .unwrap_or_else(|| panic!("no throttled time verdict: {report:#}"));
    assert_eq!(time["exploratory"], true, "not predicted: {time:#}");

    let (_, metrics) = http_get(port, "/metrics").expect("GET /metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "tuneprobe_tuning_changes_total{knob=\"cpu.max\",scope=\"cgroup\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tuneprobe_tuning_verdict{")
                && l.contains(&format!("pod=\"{}\"", pod.uid))
                && l.contains(&format!("container=\"{}\"", &app.container_id[..12]))
                && l.contains("signal=\"cpu_throttled_ratio\"")
                && l.contains("verdict=\"improved\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tuneprobe_tuning_prediction{")
                && l.contains(&format!("pod=\"{}\"", pod.uid))
                && l.contains("signal=\"cpu_throttled_ratio\"")
                && l.contains("direction=\"lower\"")
                && l.contains("outcome=\"as predicted\"")
                && l.contains("final=\"true\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    promtool_check(&metrics);
}

/// `openssl ARGS` in `dir`, which must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a key and certificate it signs for `name` with these extensions.
fn issue(dir: &Path, ca: &str, name: &str, extensions: &str) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    let ext = format!("{name}.ext");
    fs::write(dir.join(&ext), extensions).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ],
    );
}

fn new_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
}

/// `curl` against the HTTPS endpoint; returns the HTTP status, or `None` when no
/// response came (refused handshake).
fn curl(dir: &Path, url: &str, extra: &[&str]) -> Option<u16> {
    let out = Command::new("curl")
        .current_dir(dir)
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
        ])
        .args(["--max-time", "10", "--cacert", "ca.pem"])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code != 0).then_some(code)
}

#[test]
fn serve_over_mutual_tls_with_a_bearer_token_scraped_by_prometheus() {
    let dir = std::env::temp_dir().join(unique("tuneprobe-tls-"));
    fs::create_dir_all(&dir).unwrap();
    new_ca(&dir, "ca");
    new_ca(&dir, "rogue-ca");
    issue(
        &dir,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    issue(&dir, "ca", "prometheus", "extendedKeyUsage=clientAuth\n");
    issue(
        &dir,
        "rogue-ca",
        "intruder",
        "extendedKeyUsage=clientAuth\n",
    );
    fs::write(dir.join("token"), "s3cret-scrape-token\n").unwrap();

    let port = free_port();
    let mut serve = Command::new(tuneprobe_binary())
        .current_dir(&dir)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", "server.pem", "--tls-key", "server.key"])
        .args(["--tls-client-ca", "ca.pem", "--auth-token-file", "token"])
        .args(["--kube-api", "none"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tuneprobe serve");
    let stderr = serve.stderr.take().expect("stderr piped");
    let _serve = Running(serve);
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    let ready = lines.by_ref().find(|l| l.contains("ready")).expect("ready");
    assert!(
        ready.contains(&format!("https://127.0.0.1:{port}/metrics")),
        "{ready}"
    );
    thread::spawn(move || lines.for_each(drop));

    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let client = ["--cert", "prometheus.pem", "--key", "prometheus.key"];
    let bearer = ["--header", "Authorization: Bearer s3cret-scrape-token"];
    let with_both: Vec<&str> = client.iter().chain(&bearer).copied().collect();
    assert_eq!(curl(&dir, &url("/metrics"), &with_both), Some(200));
    assert_eq!(curl(&dir, &url("/changes"), &with_both), Some(200));
    // The token is required for data, not for the kubelet's probes.
    assert_eq!(curl(&dir, &url("/metrics"), &client), Some(401));
    let wrong = ["--header", "Authorization: Bearer s3cret-scrape-tokeN"];
    let with_wrong: Vec<&str> = client.iter().chain(&wrong).copied().collect();
    assert_eq!(curl(&dir, &url("/metrics"), &with_wrong), Some(401));
    assert_eq!(curl(&dir, &url("/healthz"), &client), Some(200));
    // No certificate, or one the CA did not sign: no TLS session, no response at all.
    assert_eq!(curl(&dir, &url("/healthz"), &bearer), None);
    let intruder = ["--cert", "intruder.pem", "--key", "intruder.key"];
    assert_eq!(curl(&dir, &url("/healthz"), &intruder), None);
    // Plain HTTP on the TLS port gets nothing either.
    assert_eq!(http_get(port, "/healthz"), None);

    // A real Prometheus scrapes it with its client certificate and the token.
    let prometheus_port = free_port();
    fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tuneprobe\n    scheme: https\n    authorization:\n      credentials_file: {d}/token\n    tls_config:\n      ca_file: {d}/ca.pem\n      cert_file: {d}/prometheus.pem\n      key_file: {d}/prometheus.key\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let up = query_until(prometheus_port, "up{job=\"tuneprobe\"}", |v| v == 1.0);
    assert_eq!(up, 1.0);
    let attached = query_until(
        prometheus_port,
        "count(tuneprobe_probe_attached{job=\"tuneprobe\"})",
        |v| v > 0.0,
    );
    assert!(attached >= 1.0);
    drop(_prometheus);
    let _ = fs::remove_dir_all(&dir);
}
