//! `tuneprobe fleet verify` against a real Prometheus (Debian's `prometheus`):
//!
//! - statistics on series written into Prometheus's TSDB with `promtool tsdb
//!   create-blocks-from openmetrics`, with known effects: a throttling shift on the canary
//!   nodes only, a shift on every node, and twenty repeats without any shift; the
//!   network knobs judged by `--knob` alone, by receive-buffer drops per datagram and
//!   listen overflows per connection attempt over the exported loads;
//! - end to end: two `tuneprobe serve` agents with their own `--node-name`, each scoped
//!   with `--cgroup-scope` to its own pod, scraped by Prometheus; one "node"'s pod gets a
//!   raised cpu quota;
//! - the same through VictoriaMetrics (Debian's `victoria-metrics`): the synthetic
//!   series imported with their timestamps, the agents scraped by it and remote-written
//!   into it by Prometheus, against Prometheus's verdicts.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tuneprobe_tests::{
    Container, PodCgroup, Running, TempDir, Workload, free_port, http_get, testload,
    tuneprobe_binary, unique,
};

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A private Prometheus on a free port over `tsdb`, with `config` (YAML); waits until it
/// answers `/-/ready`.
fn prometheus(dir: &Path, config: &str) -> (Running, u16) {
    let port = free_port();
    let config_file = dir.join("prometheus.yml");
    fs::write(&config_file, config).unwrap();
    let running = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=30d")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(port, "/-/ready").is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "prometheus never got ready");
        thread::sleep(Duration::from_millis(200));
    }
    (running, port)
}

/// A private VictoriaMetrics (Debian's `victoria-metrics`) on a free port over
/// `dir/name`, with `args` besides; waits until it answers `/health`.
fn victoria_metrics(dir: &Path, name: &str, args: &[String]) -> (Running, u16) {
    let port = free_port();
    let running = Running(
        Command::new("victoria-metrics")
            .arg(format!("-storageDataPath={}", dir.join(name).display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-retentionPeriod=100y")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start victoria-metrics"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(port, "/health").is_none_or(|(status, _)| status != 200) {
        assert!(
            Instant::now() < deadline,
            "victoria-metrics never got ready"
        );
        thread::sleep(Duration::from_millis(200));
    }
    (running, port)
}

/// The OpenMetrics samples (timestamps in seconds) in the Prometheus text format
/// VictoriaMetrics imports (timestamps in milliseconds), without the comments.
fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::new();
    for line in openmetrics.lines().filter(|l| !l.starts_with('#')) {
        let (sample, seconds) = line.rsplit_once(' ').unwrap();
        let seconds: i64 = seconds.parse().unwrap();
        let _ = writeln!(out, "{sample} {}", seconds * 1000);
    }
    out
}

/// Imports `openmetrics` into the VictoriaMetrics on `port` with its own timestamps
/// (`/api/v1/import/prometheus`), and waits until every one of its `samples` samples
/// can be queried.
fn import(dir: &Path, port: u16, openmetrics: &str, samples: usize) {
    let file = dir.join("import.prom");
    fs::write(&file, prometheus_text(openmetrics)).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://127.0.0.1:{port}/api/v1/import/prometheus"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = "sum(count_over_time({__name__=~\"tuneprobe_.*\"}[1d]))";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let _ = http_get(port, "/internal/force_flush");
        let found = http_get(
            port,
            &format!(
                "/api/v1/query?nocache=1&query={}",
                tuneprobe_tests::url_encode(count)
            ),
        )
        .and_then(|(_, body)| {
            let json: Value = serde_json::from_str(&body).ok()?;
            json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
        });
        if found == Some(samples) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{found:?} of {samples} imported samples can be queried"
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// A Prometheus serving `openmetrics` (written to `file` in `dir`), turned into TSDB
/// blocks by `promtool tsdb create-blocks-from openmetrics`.
fn prometheus_with_blocks(dir: &Path, file: &str, openmetrics: &str) -> (Running, u16) {
    let input = dir.join(file);
    fs::write(&input, openmetrics).unwrap();
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(&input)
        .arg(dir.join("tsdb"))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    prometheus(dir, "global:\n  scrape_interval: 10s\n")
}

/// `tuneprobe fleet verify ARGS --json` against the Prometheus on `port`.
fn fleet_verify(port: u16, args: &[&str]) -> Value {
    fleet_verify_at(&format!("http://127.0.0.1:{port}"), args)
}

/// `tuneprobe fleet verify ARGS --json` against the query API at `url`.
fn fleet_verify_at(url: &str, args: &[&str]) -> Value {
    fleet_json("verify", url, args)
}

/// `tuneprobe fleet SUBCOMMAND --prometheus URL ARGS --json`, its JSON.
fn fleet_json(subcommand: &str, url: &str, args: &[&str]) -> Value {
    let out = Command::new(tuneprobe_binary())
        .args(["fleet", subcommand, "--prometheus", url])
        .args(args)
        .arg("--json")
        .output()
        .expect("run tuneprobe fleet");
    assert!(
        out.status.success(),
        "fleet {subcommand} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("fleet printed JSON")
}

fn overall(report: &Value) -> &Value {
    &report["overall"][0]
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// A fixed LCG in [0, 1): the same noise on every run.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The synthetic fleet's time line: samples every `STEP_S` over `POINTS` steps from
/// `start`, the canary's knob changing at `start + CHANGE_S`.
const STEP_S: i64 = 10;
const POINTS: i64 = 240;
const CHANGE_S: i64 = 1200;

/// One scenario's nodes: `canary` of them change `cpu.max`, all run the same workload.
struct Scenario {
    prefix: String,
    canary: usize,
    control: usize,
    /// Throttled share before, and its shift after the change on canary and control.
    base: f64,
    canary_shift: f64,
    control_shift: f64,
    seed: u64,
    /// The canary's throttling counters end at the change (its pods or its agent went
    /// away with the rollout): nothing to judge after it.
    canary_silent_after: bool,
}

/// OpenMetrics for every scenario, one metric family at a time (as the format wants):
/// each node's agent up for the whole range, cumulative CFS periods (100 per 10 s) and
/// throttled periods (the share plus uniform noise of +-0.1; a silent canary's up to the
/// change only), and the change counter appearing on canary nodes at the change, as
/// `serve` exports it.
fn openmetrics(scenarios: &[Scenario], start: i64) -> String {
    struct Node {
        name: String,
        canary: bool,
        periods: Vec<u64>,
        throttled: Vec<u64>,
        pod: String,
        /// Steps with throttling counters exported.
        exported: usize,
    }
    let mut nodes = Vec::new();
    for s in scenarios {
        let mut noise = Noise(s.seed);
        for i in 0..s.canary + s.control {
            let canary = i < s.canary;
            let shift = if canary {
                s.canary_shift
            } else {
                s.control_shift
            };
            let (mut periods, mut throttled) = (0u64, 0u64);
            let mut node = Node {
                name: format!(
                    "{}-{}-{i}",
                    s.prefix,
                    if canary { "canary" } else { "control" }
                ),
                canary,
                periods: Vec::new(),
                throttled: Vec::new(),
                // A Deployment's pods: the same template hash, their own suffixes.
                pod: format!(
                    "api-5d8f7c9b6-{}",
                    ["bxq2z", "k7mnp", "w4rts", "zz9vb"][i % 4]
                ),
                exported: if canary && s.canary_silent_after {
                    (CHANGE_S / STEP_S) as usize + 1
                } else {
                    POINTS as usize
                },
            };
            for step in 0..POINTS {
                if step > 0 {
                    let after = step * STEP_S > CHANGE_S;
                    let share =
                        s.base + if after { shift } else { 0.0 } + 0.2 * (noise.next() - 0.5);
                    periods += 100;
                    throttled += (share.clamp(0.0, 1.0) * 100.0).round() as u64;
                }
                node.periods.push(periods);
                node.throttled.push(throttled);
            }
            nodes.push(node);
        }
    }
    let mut out = String::new();
    let labels = |n: &Node| {
        format!(
            "node=\"{}\",namespace=\"shop\",pod=\"{}\",container=\"server\",cgroup=\"\"",
            n.name, n.pod
        )
    };
    out.push_str("# TYPE tuneprobe_probe_attached gauge\n");
    for n in &nodes {
        for step in 0..POINTS {
            let _ = writeln!(
                out,
                "tuneprobe_probe_attached{{node=\"{}\",probe=\"sched_switch\",signal=\"cpu_throttle\"}} 1 {}",
                n.name,
                start + step * STEP_S
            );
        }
    }
    for (family, pick) in [
        (
            "tuneprobe_cpu_periods",
            (|n: &Node| &n.periods) as fn(&Node) -> &Vec<u64>,
        ),
        ("tuneprobe_cpu_throttled_periods", |n: &Node| &n.throttled),
    ] {
        let _ = writeln!(out, "# TYPE {family} counter");
        for n in &nodes {
            for (step, value) in pick(n).iter().enumerate().take(n.exported) {
                let _ = writeln!(
                    out,
                    "{family}_total{{{}}} {value} {}",
                    labels(n),
                    start + step as i64 * STEP_S
                );
            }
        }
    }
    out.push_str("# TYPE tuneprobe_tuning_changes counter\n");
    for n in nodes.iter().filter(|n| n.canary) {
        for step in (CHANGE_S / STEP_S)..POINTS {
            let _ = writeln!(
                out,
                "tuneprobe_tuning_changes_total{{node=\"{}\",knob=\"cpu.max\",scope=\"cgroup\"}} 1 {}",
                n.name,
                start + step * STEP_S
            );
        }
    }
    out.push_str("# EOF\n");
    out
}

fn scenario_args(prefix: &str) -> Vec<String> {
    let selector = format!("node=~\"{prefix}-.*\"");
    // The scenarios write the throttled share only (periods and throttled periods), so
    // they are judged on it alone: `cpu.max` is also judged on throttled time per
    // period and the stall p99, which the real agents of the end-to-end test export.
    [
        "--knob",
        "cpu.max",
        "--signal",
        "cpu_throttled_ratio",
        "--canary",
        &selector,
        "--control",
        &selector,
        "--before",
        "15m",
        "--after",
        "15m",
        "--interval",
        "10s",
    ]
    .into_iter()
    .map(str::to_string)
    .collect()
}

#[test]
fn known_effects_written_into_the_tsdb() {
    let dir = TempDir::new("tuneprobe-fleet-tsdb-");
    // Two hours ago, on the step grid: old enough to be plain blocks, inside the
    // default --since of 6 h.
    let start = ((now_s() as i64 - 3 * 3600) / 3600) * 3600;
    let mut scenarios = vec![
        Scenario {
            prefix: "only".into(),
            canary: 2,
            control: 2,
            base: 0.6,
            canary_shift: -0.4,
            control_shift: 0.0,
            seed: 1,
            canary_silent_after: false,
        },
        Scenario {
            prefix: "everywhere".into(),
            canary: 2,
            control: 2,
            base: 0.6,
            canary_shift: -0.4,
            control_shift: -0.4,
            seed: 2,
            canary_silent_after: false,
        },
    ];
    for repeat in 0..20 {
        scenarios.push(Scenario {
            prefix: format!("null{repeat:02}"),
            canary: 2,
            control: 2,
            base: 0.6,
            canary_shift: 0.0,
            control_shift: 0.0,
            seed: 1000 + repeat,
            canary_silent_after: false,
        });
    }
    let (_prometheus, port) =
        prometheus_with_blocks(&dir.0, "fleet.om", &openmetrics(&scenarios, start));

    // The canary's throttled share falls by 0.4, the control's stays: improved, by 0.4.
    let report = fleet_verify(
        port,
        &scenario_args("only")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let nodes: Vec<&str> = report["canary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["only-canary-0", "only-canary-1"], "{report:#}");
    assert_eq!(
        report["control"],
        serde_json::json!(["only-control-2", "only-control-3"])
    );
    for c in report["canary"].as_array().unwrap() {
        // Found within one step of the change.
        let at = num(&c["changed_at"]);
        assert!(
            (at - (start + CHANGE_S) as f64).abs() <= STEP_S as f64,
            "change at {at}, made at {}",
            start + CHANGE_S
        );
    }
    let all = overall(&report);
    let effect = num(&all["effect"]);
    eprintln!(
        "canary only: effect {effect:.4} ci95 {} p {:.2e} canary {} -> {}, control {} -> {}",
        all["ci95"],
        num(&all["p_value"]),
        all["canary"]["before"],
        all["canary"]["after"],
        all["control"]["before"],
        all["control"]["after"]
    );
    assert_eq!(all["verdict"], "improved", "{all:#}");
    assert!((effect + 0.4).abs() < 0.05, "{all:#}");
    assert!(
        num(&all["ci95"][0]) < -0.4 && -0.4 < num(&all["ci95"][1]),
        "{all:#}"
    );
    assert!(num(&all["p_value"]) < 0.001, "{all:#}");
    assert_eq!(
        all["control"]["shift"]["verdict"], "no significant change",
        "{all:#}"
    );
    assert_eq!(all["control_moved"], false);
    assert_eq!(all["canary_pods"], 2);
    assert_eq!(all["control_pods"], 2);
    // Per pod, matched across nodes by namespace, workload and container.
    let verdicts = report["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 2, "{report:#}");
    for v in verdicts {
        assert_eq!(v["workload"], "api");
        assert_eq!(v["verdict"], "improved", "{v:#}");
        assert_eq!(
            v["control_nodes"],
            serde_json::json!(["only-control-2", "only-control-3"])
        );
    }

    // Every node's share falls by 0.4: the canary alone would say improved, the fleet
    // verdict says the load changed everywhere.
    let report = fleet_verify(
        port,
        &scenario_args("everywhere")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let all = overall(&report);
    eprintln!(
        "everywhere: effect {:.4} p {:.3} canary shift {} control shift {}",
        num(&all["effect"]),
        num(&all["p_value"]),
        all["canary"]["shift"]["effect"],
        all["control"]["shift"]["effect"]
    );
    assert_eq!(all["verdict"], "no significant change", "{all:#}");
    assert_eq!(all["canary"]["shift"]["verdict"], "improved", "{all:#}");
    assert_eq!(all["control_moved"], true, "{all:#}");
    assert!(
        all["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("the load changed everywhere")),
        "{all:#}"
    );

    // No shift anywhere: at most 2 claims in 20 repeats (fixed seeds, so the count is
    // the same on every run).
    let mut claims = Vec::new();
    for repeat in 0..20 {
        let prefix = format!("null{repeat:02}");
        let report = fleet_verify(
            port,
            &scenario_args(&prefix)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let all = overall(&report);
        eprintln!(
            "{prefix}: {} effect {:.4} p {:.3}",
            all["verdict"],
            num(&all["effect"]),
            num(&all["p_value"])
        );
        if all["verdict"] != "no significant change" {
            claims.push(format!("{prefix}: {all}"));
        }
    }
    eprintln!("no shift: {} claims in 20 repeats", claims.len());
    assert!(
        claims.len() <= 2,
        "{} claims:\n{}",
        claims.len(),
        claims.join("\n")
    );
}

/// `tuneprobe fleet verify ARGS --json` against the Prometheus on `port`: its exit code,
/// stdout and stderr.
fn fleet_verify_status(port: u16, args: &[&str]) -> (i32, String, String) {
    fleet_verify_status_at(&format!("http://127.0.0.1:{port}"), args)
}

/// `tuneprobe fleet verify ARGS --json` against the query API at `url`: its exit code,
/// stdout and stderr.
fn fleet_verify_status_at(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tuneprobe_binary())
        .args(["fleet", "verify", "--prometheus", url])
        .args(args)
        .arg("--json")
        .output()
        .expect("run tuneprobe fleet verify");
    (
        out.status.code().expect("fleet verify exited"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `fleet verify --fail-on` as a rollout's gate on known effects written into the TSDB:
/// every exit code, the one line on stderr, and stdout the same report as without the
/// gate. The throttled share of the canary nodes falls by 0.4 (`better`), rises by 0.3
/// (`worse`), stays (`same`), or falls by 0.4 while the canary's counters end at the
/// change (`dark`: the rollout took its agents' data away); the control's stays.
#[test]
fn a_gate_exits_with_the_code_of_each_outcome() {
    let dir = TempDir::new("tuneprobe-fleet-gate-");
    let start = ((now_s() as i64 - 3 * 3600) / 3600) * 3600;
    let scenario = |prefix: &str, canary_shift: f64, seed: u64, silent: bool| Scenario {
        prefix: prefix.into(),
        canary: 2,
        control: 2,
        base: 0.6,
        canary_shift,
        control_shift: 0.0,
        seed,
        canary_silent_after: silent,
    };
    let scenarios = [
        scenario("better", -0.4, 11, false),
        scenario("worse", 0.3, 12, false),
        scenario("same", 0.0, 1000, false),
        scenario("dark", -0.4, 13, true),
    ];
    let (_prometheus, port) =
        prometheus_with_blocks(&dir.0, "gate.om", &openmetrics(&scenarios, start));

    // (scenario, its overall verdict, the exit code with --fail-on regressed and with
    // --fail-on not-improved, the reason on stderr)
    for (prefix, verdict, regressed, not_improved, why) in [
        (
            "better",
            "improved",
            0,
            0,
            "cpu_throttled_ratio: improved overall, DiD -0.3950 (95% CI [-0.4100, -0.3750], \
             p < 0.0001); by pod: 2 of 2 improved",
        ),
        (
            "worse",
            "regressed",
            3,
            3,
            "cpu_throttled_ratio: regressed overall, DiD +0.3150 (95% CI [0.3000, 0.3300], \
             p < 0.0001); by pod: 2 of 2 regressed",
        ),
        // A shift of 0.02 with p = 0.029: under the 10% floor, so no claim.
        (
            "same",
            "no significant change",
            0,
            4,
            "cpu_throttled_ratio: no significant change overall, DiD -0.0200 (95% CI \
             [-0.0350, -0.0000], p = 0.0292); by pod: 2 of 2 no significant change",
        ),
        // Before: 90 intervals of 10 s in the 15 min window; after: none.
        (
            "dark",
            "insufficient data",
            5,
            5,
            "cpu_throttled_ratio: insufficient data overall, 90 paired interval(s) before \
             the change and 0 after (5 needed on each side) from 2 canary pod(s); by pod: 2 \
             of 2 insufficient data",
        ),
    ] {
        let args = scenario_args(prefix);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, report, stderr) = fleet_verify_status(port, &args);
        assert_eq!((code, stderr.as_str()), (0, ""), "{prefix} without a gate");
        let json: Value = serde_json::from_str(&report).unwrap();
        assert_eq!(overall(&json)["verdict"], verdict, "{prefix}: {json:#}");
        for (fail_on, expected) in [("regressed", regressed), ("not-improved", not_improved)] {
            let gated: Vec<&str> = args.iter().copied().chain(["--fail-on", fail_on]).collect();
            let (code, stdout, stderr) = fleet_verify_status(port, &gated);
            eprintln!("{prefix} --fail-on {fail_on}: exit {code}: {stderr}");
            assert_eq!(code, expected, "{prefix} --fail-on {fail_on}: {stderr}");
            // The report is the one without the gate, byte for byte.
            assert_eq!(stdout, report, "{prefix} --fail-on {fail_on}");
            let passed = if expected == 0 { "passed" } else { "failed" };
            assert_eq!(
                stderr,
                format!("tuneprobe: gate {passed} (--fail-on {fail_on}): {why}\n"),
                "{prefix}"
            );
        }
    }

    // Nothing to judge with: no canary node matches, or no Prometheus answers. Either
    // fails the gate as missing data (5); without a gate it is an error (1).
    let nowhere = free_port();
    for (port, canary, reason) in [
        (
            port,
            "node=~\"nosuch-.*\"",
            "no canary node: no node with a change of cpu.max matching --canary".to_string(),
        ),
        (
            nowhere,
            "node=~\"better-.*\"",
            format!("http://127.0.0.1:{nowhere}/api/v1/query: "),
        ),
    ] {
        let args = ["--knob", "cpu.max", "--canary", canary];
        let (code, stdout, stderr) = fleet_verify_status(port, &args);
        assert_eq!(code, 1, "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            stderr.starts_with(&format!("tuneprobe: error: {reason}")),
            "{stderr}"
        );
        for fail_on in ["regressed", "not-improved"] {
            let gated: Vec<&str> = args.iter().copied().chain(["--fail-on", fail_on]).collect();
            let (code, stdout, stderr) = fleet_verify_status(port, &gated);
            eprintln!("{canary} on port {port} --fail-on {fail_on}: exit {code}: {stderr}");
            assert_eq!(code, 5, "{stderr}");
            assert!(stdout.is_empty(), "{stdout}");
            assert!(
                stderr.starts_with(&format!(
                    "tuneprobe: gate failed (--fail-on {fail_on}): could not judge: {reason}"
                )),
                "{stderr}"
            );
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
}

/// The same series in Prometheus (blocks made by promtool) and in VictoriaMetrics
/// (imported with their timestamps), judged through each: the same report, number for
/// number, and the same gate. VictoriaMetrics is asked under its `/prometheus` prefix,
/// as Mimir serves the API. A `--before` of 31 h at 10 s is more than a store answers
/// at once (11,000 points): asked in pieces, it gives the verdict of the 20 minutes the
/// data holds before the change.
#[test]
fn the_same_verdicts_from_victoria_metrics() {
    let dir = TempDir::new("tuneprobe-fleet-vm-");
    let start = ((now_s() as i64 - 3 * 3600) / 3600) * 3600;
    let scenario =
        |prefix: &str, canary_shift: f64, control_shift: f64, seed: u64, silent| Scenario {
            prefix: prefix.into(),
            canary: 2,
            control: 2,
            base: 0.6,
            canary_shift,
            control_shift,
            seed,
            canary_silent_after: silent,
        };
    let scenarios = [
        scenario("only", -0.4, 0.0, 1, false),
        scenario("everywhere", -0.4, -0.4, 2, false),
        scenario("worse", 0.3, 0.0, 12, false),
        scenario("same", 0.0, 0.0, 1000, false),
        scenario("dark", -0.4, 0.0, 13, true),
    ];
    let openmetrics = openmetrics(&scenarios, start);
    let (_prometheus, port) = prometheus_with_blocks(&dir.0, "fleet.om", &openmetrics);
    let (_vm, vm_port) = victoria_metrics(&dir.0, "vm", &[]);
    let samples = openmetrics.lines().filter(|l| !l.starts_with('#')).count();
    import(&dir.0, vm_port, &openmetrics, samples);
    let prometheus_url = format!("http://127.0.0.1:{port}");
    let vm_url = format!("http://127.0.0.1:{vm_port}/prometheus");

    // The report without the store's address.
    let judged = |url: &str, args: &[&str]| {
        let mut report = fleet_verify_at(url, args);
        report.as_object_mut().unwrap().remove("prometheus");
        report
    };
    for (prefix, verdict) in [
        ("only", "improved"),
        ("everywhere", "no significant change"),
        ("worse", "regressed"),
        ("same", "no significant change"),
        ("dark", "insufficient data"),
    ] {
        let args = scenario_args(prefix);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let from_prometheus = judged(&prometheus_url, &args);
        let from_vm = judged(&vm_url, &args);
        let (p, v) = (overall(&from_prometheus), overall(&from_vm));
        eprintln!(
            "{prefix}: prometheus {} effect {} p {}; victoria-metrics {} effect {} p {}",
            p["verdict"], p["effect"], p["p_value"], v["verdict"], v["effect"], v["p_value"]
        );
        assert_eq!(p["verdict"], verdict, "{from_prometheus:#}");
        assert_eq!(from_vm, from_prometheus, "{prefix}");
        assert_eq!(from_vm["partial"], serde_json::json!([]), "{prefix}");
        // The gate's code and line too.
        let gated: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--fail-on", "not-improved"])
            .collect();
        let (p_code, _, p_why) = fleet_verify_status_at(&prometheus_url, &gated);
        let (v_code, _, v_why) = fleet_verify_status_at(&vm_url, &gated);
        eprintln!("{prefix} --fail-on not-improved: {p_code} / {v_code}: {v_why}");
        assert_eq!((v_code, v_why), (p_code, p_why), "{prefix}");
    }

    // `--at` the change, 20 min before it (all the data there is) against 31 h.
    let at = (start + CHANGE_S).to_string();
    let windowed = |before: &str| {
        [
            "--at",
            &at,
            "--signal",
            "cpu_throttled_ratio",
            "--canary",
            "node=~\"only-canary-.*\"",
            "--control",
            "node=~\"only-control-.*\"",
            "--before",
            before,
            "--after",
            "15m",
            "--interval",
            "10s",
        ]
        .map(str::to_string)
    };
    let short = windowed("20m");
    let short: Vec<&str> = short.iter().map(String::as_str).collect();
    let long = windowed("31h");
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    let reference = judged(&prometheus_url, &short);
    assert_eq!(overall(&reference)["verdict"], "improved", "{reference:#}");
    assert_eq!(
        overall(&reference)["samples"]["difference"]["before"]
            .as_array()
            .unwrap()
            .len(),
        120
    );
    for url in [&prometheus_url, &vm_url] {
        let report = judged(url, &long);
        assert_eq!(report["windows"]["before_s"], 31.0 * 3600.0);
        assert_eq!(report["overall"], reference["overall"], "{url}");
        assert_eq!(report["verdicts"], reference["verdicts"], "{url}");
    }
}

/// The network knobs' scenarios, written into one TSDB: on `rcv-*` nodes the canary's
/// receive-buffer drops go away when `net.core.rmem_default` changes (`SOCKET_RCVBUFF`
/// drops per datagram from about 0.02 to 0), on `lst-*` nodes the canary's listen overflows go away
/// when `net.core.somaxconn` changes (from about 0.3 of the connection attempts to 0);
/// the control nodes stay as they were. The series are what `serve` exports: the loads
/// on every step, the buffer drops and the overflows (drop reasons, beside
/// other reasons the ratio must leave out) from their first non-zero value on.
fn network_openmetrics(start: i64) -> String {
    struct Node {
        name: String,
        canary: bool,
        listen: bool,
        pod: String,
        /// (the load, the part) cumulative per step; a part of 0 is not exported.
        counts: Vec<(u64, u64)>,
    }
    let mut nodes = Vec::new();
    let mut noise = Noise(7);
    for listen in [false, true] {
        for i in 0..4 {
            let canary = i < 2;
            let (mut load, mut part) = (0u64, 0u64);
            let mut counts = Vec::new();
            for step in 0..POINTS {
                if step > 0 {
                    let after = step * STEP_S > CHANGE_S;
                    if listen {
                        // 200 connection attempts a step, overflowing or accepted.
                        let share = if canary && after {
                            0.0
                        } else {
                            0.3 + 0.1 * (noise.next() - 0.5)
                        };
                        let overflows = (share * 200.0).round() as u64;
                        part += overflows;
                        load += 200 - overflows;
                    } else {
                        // 5000 sent segments a step.
                        let share = if canary && after {
                            0.0
                        } else {
                            0.02 + 0.01 * (noise.next() - 0.5)
                        };
                        part += (share * 5000.0).round() as u64;
                        load += 5000;
                    }
                }
                counts.push((load, part));
            }
            nodes.push(Node {
                name: format!(
                    "{}-{}-{i}",
                    if listen { "lst" } else { "rcv" },
                    if canary { "canary" } else { "control" }
                ),
                canary,
                listen,
                pod: format!("api-5d8f7c9b6-{}", ["bxq2z", "k7mnp", "w4rts", "zz9vb"][i]),
                counts,
            });
        }
    }
    let labels = |n: &Node| {
        format!(
            "node=\"{}\",namespace=\"shop\",pod=\"{}\",container=\"server\",cgroup=\"\"",
            n.name, n.pod
        )
    };
    let at = |step: usize| start + step as i64 * STEP_S;
    let mut out = String::from("# TYPE tuneprobe_probe_attached gauge\n");
    for n in &nodes {
        for step in 0..POINTS as usize {
            let _ = writeln!(
                out,
                "tuneprobe_probe_attached{{node=\"{}\",probe=\"tcp_retransmit_skb\",signal=\"tcp_retransmit\"}} 1 {}",
                n.name,
                at(step)
            );
        }
    }
    // (family, the listen nodes' or the receive-buffer nodes', the load or the part, extra
    // labels)
    // A family's samples must be contiguous in OpenMetrics: the two drop rows follow
    // each other, and its TYPE line comes once.
    let families: [(&str, bool, bool, &str); 4] = [
        ("tuneprobe_udp_received_datagrams", false, false, ""),
        ("tuneprobe_tcp_passive_opens", true, false, ""),
        (
            "tuneprobe_packet_drops",
            false,
            true,
            ",reason=\"SOCKET_RCVBUFF\"",
        ),
        (
            "tuneprobe_packet_drops",
            true,
            true,
            ",reason=\"TCP_LISTEN_OVERFLOW\"",
        ),
    ];
    let mut typed = std::collections::BTreeSet::new();
    for (family, listen, part, extra) in families {
        if typed.insert(family) {
            let _ = writeln!(out, "# TYPE {family} counter");
        }
        for n in nodes.iter().filter(|n| n.listen == listen) {
            for (step, &(load, p)) in n.counts.iter().enumerate() {
                let value = if part { p } else { load };
                if value > 0 {
                    let _ = writeln!(
                        out,
                        "{family}_total{{{}{extra}}} {value} {}",
                        labels(n),
                        at(step)
                    );
                }
            }
            if family == "tuneprobe_packet_drops" {
                // Another reason, many times the overflows or the buffer drops, on every
                // node alike: neither ratio counts it.
                for step in 0..POINTS as usize {
                    let _ = writeln!(
                        out,
                        "{family}_total{{{},reason=\"NO_SOCKET\"}} {} {}",
                        labels(n),
                        step * 1000,
                        at(step)
                    );
                }
            }
        }
    }
    out.push_str("# TYPE tuneprobe_tuning_changes counter\n");
    for n in nodes.iter().filter(|n| n.canary) {
        let knob = if n.listen {
            "net.core.somaxconn"
        } else {
            "net.core.rmem_default"
        };
        for step in (CHANGE_S / STEP_S)..POINTS {
            let _ = writeln!(
                out,
                "tuneprobe_tuning_changes_total{{node=\"{}\",knob=\"{knob}\",scope=\"node\"}} 1 {}",
                n.name,
                start + step * STEP_S
            );
        }
    }
    out.push_str("# EOF\n");
    out
}

/// `--knob` alone judges the network knobs by their own ratios, over the exported loads.
#[test]
fn network_knobs_judged_by_their_ratios_from_the_tsdb() {
    let dir = TempDir::new("tuneprobe-fleet-net-");
    let start = ((now_s() as i64 - 3 * 3600) / 3600) * 3600;
    let (_prometheus, port) = prometheus_with_blocks(&dir.0, "net.om", &network_openmetrics(start));

    for (prefix, knob, signal, load, before, tolerance) in [
        (
            "rcv",
            "net.core.rmem_default",
            "rcvbuf_drop_ratio",
            "received_datagrams",
            0.02,
            0.003,
        ),
        (
            "lst",
            "net.core.somaxconn",
            "listen_overflow_ratio",
            "connection_attempts",
            0.3,
            0.03,
        ),
    ] {
        let selector = format!("node=~\"{prefix}-.*\"");
        let report = fleet_verify(
            port,
            &[
                "--knob",
                knob,
                "--canary",
                &selector,
                "--control",
                &selector,
                "--before",
                "15m",
                "--after",
                "15m",
                "--interval",
                "10s",
            ],
        );
        assert_eq!(report["signals"], serde_json::json!([signal]), "{report:#}");
        assert_eq!(
            report["control"],
            serde_json::json!([format!("{prefix}-control-2"), format!("{prefix}-control-3")]),
            "{report:#}"
        );
        let all = overall(&report);
        let effect = num(&all["effect"]);
        eprintln!(
            "{knob}: {signal} {} effect {effect:.4} ci95 {} p {:.2e} canary {} -> {}, control {} -> {} (shift {})",
            all["verdict"],
            all["ci95"],
            num(&all["p_value"]),
            all["canary"]["before"],
            all["canary"]["after"],
            all["control"]["before"],
            all["control"]["after"],
            all["control"]["shift"]["verdict"]
        );
        assert_eq!(all["signal"], signal, "{all:#}");
        assert_eq!(all["load"], load, "{all:#}");
        assert_eq!(all["verdict"], "improved", "{all:#}");
        // The canary's ratio fell from about `before` to 0 (the counter flat, its load
        // going on), the control's stayed: the difference in differences is -before.
        assert!((effect + before).abs() < tolerance, "{all:#}");
        assert!(
            num(&all["ci95"][0]) <= -before + tolerance
                && -before - tolerance <= num(&all["ci95"][1]),
            "{all:#}"
        );
        assert!(num(&all["p_value"]) < 0.001, "{all:#}");
        assert!(
            (num(&all["canary"]["before"]) - before).abs() < tolerance,
            "{all:#}"
        );
        assert_eq!(num(&all["canary"]["after"]), 0.0, "{all:#}");
        assert!(
            (num(&all["control"]["after"]) - before).abs() < tolerance,
            "{all:#}"
        );
        assert_eq!(
            all["control"]["shift"]["verdict"], "no significant change",
            "{all:#}"
        );
        assert_eq!(all["control_moved"], false, "{all:#}");
        assert_eq!(all["load_changed"], false, "{all:#}");
        assert_eq!(all["canary_pods"], 2, "{all:#}");
        assert_eq!(all["control_pods"], 2, "{all:#}");
        assert_eq!(report["notes"], serde_json::json!([]), "{report:#}");
    }
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

/// One "node": a pod with a busy container under a 20 ms / 100 ms quota, named through
/// its own pod log directory, and an agent scoped to it.
struct FakeNode {
    name: String,
    pod_name: String,
    container: Container,
    _busy: Workload,
    _serve: Running,
    port: u16,
    _pod: PodCgroup,
}

fn fake_node(dir: &Path, name: &str, namespace: &str, suffix: &str) -> FakeNode {
    let mut pod = PodCgroup::with_controllers(&["cpu"]);
    let container = pod.container();
    let pod_name = format!("busy-7c9f6d8b5-{suffix}");
    let logs = dir.join(name);
    fs::create_dir_all(logs.join(format!("pods/{namespace}_{pod_name}_{}/worker", pod.uid)))
        .unwrap();
    fs::create_dir_all(logs.join("containers")).unwrap();
    fs::write(
        logs.join(format!(
            "containers/{pod_name}_{namespace}_worker-{}.log",
            container.container_id
        )),
        "",
    )
    .unwrap();
    set_quota(&container, 20_000, 100_000);
    let busy = Workload::spawn_program(None, Some(&container), &testload(), &["busy", "600000"]);
    let port = free_port();
    let serve = Running(
        Command::new(tuneprobe_binary())
            .args(["serve", "--kube-api", "none", "--cri-socket", "none"])
            .args(["--verify-window", "5s", "--node-name", name])
            .arg("--cgroup-scope")
            .arg(&pod.pod_path)
            .arg("--pod-logs-dir")
            .arg(logs.join("pods"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tuneprobe serve"),
    );
    FakeNode {
        name: name.to_string(),
        pod_name,
        container,
        _busy: busy,
        _serve: serve,
        port,
        _pod: pod,
    }
}

/// An instant query's result.
fn query(port: u16, promql: &str) -> Vec<Value> {
    let (_, body) = http_get(
        port,
        &format!(
            "/api/v1/query?query={}",
            tuneprobe_tests::url_encode(promql)
        ),
    )
    .expect("prometheus answers");
    let json: Value = serde_json::from_str(&body).unwrap();
    json["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn two_scoped_agents_a_raised_quota_on_one_node() {
    let dir = TempDir::new("tuneprobe-fleet-e2e-");
    let namespace = unique("fleet");
    let canary = fake_node(&dir.0, &unique("fleet-a-"), &namespace, "bxq2z");
    let control = fake_node(&dir.0, &unique("fleet-b-"), &namespace, "k7mnp");
    let mut config =
        String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
    for node in [&canary, &control] {
        let _ = write!(
            config,
            "  - job_name: {name}\n    honor_labels: true\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n        labels:\n          node: {name}\n",
            name = node.name,
            port = node.port
        );
    }
    // VictoriaMetrics twice: scraping the agents itself, and fed by Prometheus's remote
    // write.
    let vm_config = dir.0.join("vm-scrape.yml");
    fs::write(&vm_config, &config).unwrap();
    let (_vm_scraping, vm_scraping) = victoria_metrics(
        &dir.0,
        "vm-scraping",
        &[format!("-promscrape.config={}", vm_config.display())],
    );
    let (_vm_written, vm_written) = victoria_metrics(&dir.0, "vm-written", &[]);
    let _ = write!(
        config,
        "remote_write:\n  - url: http://127.0.0.1:{vm_written}/api/v1/write\n"
    );
    let (_prometheus, port) = prometheus(&dir.0, &config);

    // Both pods' throttling in Prometheus, by name, each from its own agent only.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let series = query(
            port,
            &format!("tuneprobe_cpu_throttled_periods_total{{namespace=\"{namespace}\"}}"),
        );
        let found: Vec<(String, String)> = series
            .iter()
            .map(|s| {
                (
                    s["metric"]["node"].as_str().unwrap_or("").to_string(),
                    s["metric"]["pod"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        if found.len() == 2 {
            let mut expected = vec![
                (canary.name.clone(), canary.pod_name.clone()),
                (control.name.clone(), control.pod_name.clone()),
            ];
            expected.sort();
            let mut found = found;
            found.sort();
            assert_eq!(found, expected, "each agent exports its own pod only");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pods' throttling never reached Prometheus: {series:?}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    // Nothing of any other workload on this machine: the scope holds.
    let others = query(
        port,
        &format!(
            "count(tuneprobe_cpu_periods_total{{node=~\"{}|{}\",namespace!=\"{namespace}\"}}) or count(tuneprobe_packet_drops_total{{node=~\"{}|{}\"}})",
            canary.name, control.name, canary.name, control.name
        ),
    );
    assert!(others.is_empty(), "series outside the scopes: {others:?}");

    // A before window, the change on the canary only, an after window and a margin for
    // the last scrapes.
    thread::sleep(Duration::from_secs(28));
    set_quota(&canary.container, 200_000, 100_000);
    thread::sleep(Duration::from_secs(30));

    let selector = format!("node=~\"{}|{}\"", canary.name, control.name);
    let report = fleet_verify(
        port,
        &[
            "--knob",
            "cpu.max",
            "--canary",
            &selector,
            "--control",
            &selector,
            "--before",
            "20s",
            "--after",
            "20s",
            "--interval",
            "2s",
            "--since",
            "10m",
        ],
    );
    assert_eq!(
        report["canary"][0]["node"],
        canary.name.as_str(),
        "{report:#}"
    );
    assert_eq!(report["canary"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(
        report["control"],
        serde_json::json!([control.name]),
        "{report:#}"
    );
    // `cpu.max` is judged on the throttled share, the throttled time per period and the
    // stall p99: one verdict each for the pod (the stall p99 only while stalls remain).
    assert_eq!(
        report["signals"],
        serde_json::json!([
            "cpu_throttled_ratio",
            "cpu_throttled_ms_per_period",
            "cpu_stall_p99_ms"
        ]),
        "{report:#}"
    );
    let verdicts = report["verdicts"].as_array().unwrap();
    let of = |signal: &str| {
        verdicts
            .iter()
            .find(|v| v["signal"] == signal)
            .unwrap_or_else(|| panic!("no {signal} verdict: {report:#}"))
    };
    let time = of("cpu_throttled_ms_per_period");
    assert_eq!(time["verdict"], "improved", "{time:#}");
    assert_eq!(num(&time["canary"]["after"]), 0.0, "{time:#}");
    let v = of("cpu_throttled_ratio");
    eprintln!(
        "end to end: {} effect {:.4} ci95 {} p {:.2e}; canary {} -> {}; control {} -> {} ({})",
        v["verdict"],
        num(&v["effect"]),
        v["ci95"],
        num(&v["p_value"]),
        v["canary"]["before"],
        v["canary"]["after"],
        v["control"]["before"],
        v["control"]["after"],
        v["control"]["shift"]["verdict"]
    );
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    assert_eq!(v["pod"], canary.pod_name.as_str());
    assert_eq!(v["workload"], "busy");
    assert_eq!(v["container"], "worker");
    assert_eq!(v["verdict"], "improved", "{v:#}");
    // Throttled in most periods before, never after (two CPUs' quota).
    assert!(num(&v["canary"]["before"]) > 0.5, "{v:#}");
    assert_eq!(num(&v["canary"]["after"]), 0.0, "{v:#}");
    assert!(num(&v["effect"]) < -0.5, "{v:#}");
    // The control's identical pod: no change.
    assert_eq!(
        v["control"]["shift"]["verdict"], "no significant change",
        "{v:#}"
    );
    assert!(num(&v["control"]["before"]) > 0.5, "{v:#}");
    assert_eq!(v["control_nodes"], serde_json::json!([control.name]));
    for window in ["before", "after"] {
        let n = v["samples"]["difference"][window].as_array().unwrap().len();
        assert!(n >= 8, "{n} intervals {window}: {v:#}");
    }
    assert_eq!(overall(&report)["verdict"], "improved");

    // The table and the picture.
    let svg = dir.0.join("fleet.svg");
    let out = Command::new(tuneprobe_binary())
        .args(["fleet", "verify", "--prometheus"])
        .arg(format!("http://127.0.0.1:{port}"))
        .args([
            "--knob",
            "cpu.max",
            "--canary",
            &selector,
            "--control",
            &selector,
        ])
        .args([
            "--before",
            "20s",
            "--after",
            "20s",
            "--interval",
            "2s",
            "--since",
            "10m",
        ])
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{table}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.lines().any(
            |l| l.starts_with(&format!("{namespace}/{}/worker@", canary.pod_name))
                && l.ends_with("improved")
        ),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("overall") && l.ends_with("improved")),
        "{table}"
    );
    let picture = fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg ") && picture.contains("control after"));
    // Canary and control, before and after, a point per interval, in two panels.
    assert!(picture.matches("<circle").count() >= 4 * 8 * 2, "{picture}");

    same_verdicts_from_victoria_metrics(
        &report,
        port,
        [vm_scraping, vm_written],
        (&canary.name, &control.name),
    );
}

/// The end-to-end run's verdicts through VictoriaMetrics, scraping the agents itself
/// (`vm_ports[0]`) and fed by Prometheus's remote write (`vm_ports[1]`), against the
/// `report` from Prometheus on `port`; and a run right at the end of the after window,
/// which VictoriaMetrics does not show yet (its `-search.latencyOffset`, 30 s): partial,
/// so a gate fails.
fn same_verdicts_from_victoria_metrics(
    report: &Value,
    port: u16,
    vm_ports: [u16; 2],
    (canary, control): (&str, &str),
) {
    let selector = format!("node=~\"{canary}|{control}\"");
    let args = [
        "--knob",
        "cpu.max",
        "--canary",
        &selector,
        "--control",
        &selector,
        "--before",
        "20s",
        "--after",
        "20s",
        "--interval",
        "2s",
        "--since",
        "10m",
    ];
    // The after window's last interval, 30 s for the latency offset and 5 s for
    // Prometheus's remote write to send its last batch.
    let changed_at = num(&report["canary"][0]["changed_at"]);
    let visible = changed_at + 20.0 + 3.0 * 2.0 + 30.0 + 5.0;
    thread::sleep(Duration::from_secs_f64((visible - now_s()).max(0.0)));
    let verdicts = |report: &Value| -> Vec<(String, String)> {
        report["overall"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["signal"].to_string(), v["verdict"].to_string()))
            .collect()
    };
    for (store, vm_port) in ["scraping", "remote-written"].into_iter().zip(vm_ports) {
        let from_vm = fleet_verify_at(&format!("http://127.0.0.1:{vm_port}"), &args);
        let v = from_vm["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["signal"] == "cpu_throttled_ratio")
            .unwrap();
        eprintln!(
            "victoria-metrics {store}: {:?}; cpu_throttled_ratio effect {:.4} p {:.2e}, canary {} -> {}, control {} -> {}",
            verdicts(&from_vm),
            num(&v["effect"]),
            num(&v["p_value"]),
            v["canary"]["before"],
            v["canary"]["after"],
            v["control"]["before"],
            v["control"]["after"]
        );
        assert_eq!(from_vm["canary"][0]["node"], canary, "{store}: {from_vm:#}");
        assert_eq!(from_vm["control"], serde_json::json!([control]), "{store}");
        assert_eq!(verdicts(&from_vm), verdicts(report), "{store}: {from_vm:#}");
        assert_eq!(from_vm["partial"], serde_json::json!([]), "{store}");
        assert_eq!(v["verdict"], "improved", "{store}: {v:#}");
        assert_eq!(num(&v["canary"]["after"]), 0.0, "{store}: {v:#}");
        assert!(num(&v["canary"]["before"]) > 0.5, "{store}: {v:#}");
        assert!(num(&v["control"]["after"]) > 0.5, "{store}: {v:#}");
        for window in ["before", "after"] {
            let n = v["samples"]["difference"][window].as_array().unwrap().len();
            assert!(n >= 8, "{store}: {n} intervals {window}: {v:#}");
        }
    }

    // An after window that ended 8 s ago: Prometheus has it (both pods as they have
    // been since the change: the gate passes), VictoriaMetrics not yet. On the
    // interval's grid, so that each window has its 10 intervals.
    let at = (((now_s() - 30.0) / 2.0).floor() * 2.0).to_string();
    let args = [
        "--at",
        &at,
        "--signal",
        "cpu_throttled_ratio",
        "--canary",
        &format!("node=\"{canary}\""),
        "--control",
        &format!("node=\"{control}\""),
        "--before",
        "20s",
        "--after",
        "20s",
        "--interval",
        "2s",
        "--fail-on",
        "regressed",
    ];
    let (code, stdout, stderr) = fleet_verify_status(port, &args);
    let from_prometheus: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        from_prometheus["partial"],
        serde_json::json!([]),
        "{stderr}"
    );
    assert_eq!(
        overall(&from_prometheus)["verdict"],
        "no significant change",
        "{from_prometheus:#}"
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) =
        fleet_verify_status_at(&format!("http://127.0.0.1:{}", vm_ports[0]), &args);
    eprintln!("victoria-metrics at the end of the after window: exit {code}: {stderr}");
    let from_vm: Value = serde_json::from_str(&stdout).unwrap();
    let partial = from_vm["partial"].as_array().unwrap();
    assert_eq!(partial.len(), 1, "{from_vm:#}");
    assert!(
        partial[0]
            .as_str()
            .unwrap()
            .starts_with("the store has not caught up: its newest sample is at "),
        "{partial:?}"
    );
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.starts_with(
            "tuneprobe: gate failed (--fail-on regressed): partial data (the store has not caught up"
        ),
        "{stderr}"
    );
}

/// deploy/prometheus/fleet-rules.yaml, run by `promtool test rules`: the recorded
/// samples carry the workload name fleet verify matches pods by.
#[test]
fn recording_rules_name_workloads_as_fleet_verify_does() {
    let dir = TempDir::new("tuneprobe-fleet-rules-");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/fleet-rules.yaml");
    let pods = [
        "api-5d8f7c9b6-bxq2z",
        "node-exporter-zx7vb",
        "web-0",
        "cache-redis",
    ];
    let mut input = String::new();
    let mut expected = String::new();
    for pod in pods {
        let labels = format!("node=\"n1\",namespace=\"shop\",pod=\"{pod}\",container=\"c\"");
        let _ = write!(
            input,
            "      - series: 'tuneprobe_cpu_periods_total{{{labels}}}'\n        values: '0+300x20'\n      - series: 'tuneprobe_cpu_throttled_periods_total{{{labels}}}'\n        values: '0+150x20'\n"
        );
        let workload = tuneprobe::fleet::did::workload_name(pod);
        let _ = write!(
            expected,
            "          - labels: 'tuneprobe:cpu_throttled_ratio:1m{{{labels},workload=\"{workload}\"}}'\n            value: 0.5\n"
        );
    }
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 30s\ntests:\n  - interval: 30s\n    input_series:\n{input}    promql_expr_test:\n      - expr: tuneprobe:cpu_throttled_ratio:1m\n        eval_time: 5m\n        exp_samples:\n{expected}      - expr: node_workload:tuneprobe_cpu_throttled_ratio:median1m{{workload=\"api\"}}\n        eval_time: 5m\n        exp_samples:\n          - labels: 'node_workload:tuneprobe_cpu_throttled_ratio:median1m{{node=\"n1\",namespace=\"shop\",workload=\"api\",container=\"c\"}}'\n            value: 0.5\n",
        rules.display()
    );
    promtool_test_rules(&dir, &test);
}

/// Input series for one counter of a declaration: `per_step` more every 30 s, with the
/// label value the declaration narrows it to.
fn rule_input(name: &str, only: Option<(&str, &[&str])>, per_step: u64, labels: &str) -> String {
    let extra = only.map_or(String::new(), |(label, values)| {
        format!(",{label}=\"{}\"", values[0])
    });
    format!("      - series: '{name}{{{labels}{extra}}}'\n        values: '0+{per_step}x20'\n")
}

/// Every judged measure's recording rule, run by `promtool test rules` on series made from
/// its own declaration: ratios come out as part per load (with the declared unit),
/// means as sum per count in ms, p99s inside the one bucket every observation is in
/// (each to 1e-9: a quantile's interpolation rounds in its last digit).
#[test]
fn recording_rules_compute_each_measure_as_declared() {
    use tuneprobe::signals::{declaration::Exported, measure::Measure};
    let dir = TempDir::new("tuneprobe-fleet-rules-all-");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/fleet-rules.yaml");
    let mut tests = String::new();
    for (i, measure) in Measure::judged().enumerate() {
        // One pod per measure, so the inputs of two measures never add up.
        let pod = format!("web-{i}");
        let labels = format!("node=\"n1\",namespace=\"shop\",pod=\"{pod}\",container=\"c\"");
        let (input, record, value) = match measure.declared().exported {
            Exported::Ratio {
                part,
                whole,
                whole_adds_part,
                scale,
            } => {
                let input = rule_input(part.name, part.only, 30, &labels)
                    + &rule_input(whole.name, whole.only, 90, &labels);
                let load = if whole_adds_part { 120.0 } else { 90.0 };
                (
                    input,
                    format!("tuneprobe:{}:1m", measure.name()),
                    scale * 30.0 / load,
                )
            }
            Exported::Histogram { of, quantile } => {
                let only = of.only;
                let mut input = rule_input(&format!("{}_count", of.name), only, 10, &labels)
                    + &rule_input(&format!("{}_sum", of.name), only, 1, &labels);
                for (le, n) in [("0.005", 0), ("0.01", 10), ("+Inf", 10)] {
                    let bucket = format!("{}_bucket", of.name);
                    input += &rule_input(&bucket, only, n, &format!("{labels},le=\"{le}\""));
                }
                match quantile {
                    // 0.1 s per observation.
                    None => (input, format!("tuneprobe:{}:mean1m", measure.name()), 100.0),
                    // Interpolated inside (5 ms, 10 ms].
                    Some(q) => (
                        input,
                        format!("tuneprobe:{}:1m", measure.name()),
                        5.0 + 5.0 * q,
                    ),
                }
            }
            // A count's increase over a minute is extrapolated by Prometheus: checked by
            // the rule's presence only (promtool parses every rule).
            Exported::Count(_) => continue,
        };
        let _ = write!(
            tests,
            "  - interval: 30s\n    input_series:\n{input}    promql_expr_test:\n      - expr: 'abs({record} - {value}) < bool 1e-9'\n        eval_time: 5m\n        exp_samples:\n          - labels: '{{{labels},workload=\"web\"}}'\n            value: 1\n"
        );
    }
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 30s\ntests:\n{tests}",
        rules.display()
    );
    promtool_test_rules(&dir, &test);
}

/// Runs `promtool test rules` on the unit test `test` (written into `dir`); fails with
/// promtool's report and the test.
fn promtool_test_rules(dir: &TempDir, test: &str) {
    let file = dir.0.join("rules-test.yaml");
    fs::write(&file, test).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool test rules: {}{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Six pods of one workload on six nodes, connecting 100 or 300 times a step (the same
/// swing for all, at the same moments): `api-wide-*` fail 5% of their connects,
/// `api-narrow-*` 30% (a 10-port local range), `api-twin-*` 30% too.
fn ab_openmetrics(start: i64) -> String {
    let mut noise = Noise(11);
    let mut out = String::new();
    let mut rows = (Vec::new(), Vec::new());
    for (group, share) in [("wide", 0.05), ("narrow", 0.30), ("twin", 0.30)] {
        for i in 0..2 {
            let labels = format!(
                "node=\"node-{group}-{i}\",namespace=\"shop\",pod=\"api-{group}-{i}\",container=\"app\",cgroup=\"\""
            );
            let (mut attempts, mut failed) = (0u64, 0u64);
            for step in 0..POINTS {
                let swing = if (step / 30) % 2 == 0 { 100 } else { 300 };
                attempts += swing;
                let rate = share * (1.0 + 0.2 * (noise.next() - 0.5));
                failed += (rate * swing as f64).round() as u64;
                let at = start + step * STEP_S;
                rows.0.push(format!(
                    "tuneprobe_tcp_connect_attempts_total{{{labels}}} {attempts} {at}"
                ));
                rows.1.push(format!(
                    "tuneprobe_tcp_connect_failures_total{{{labels},cause=\"port_exhaustion\"}} {failed} {at}"
                ));
            }
        }
    }
    out.push_str("# TYPE tuneprobe_tcp_connect_attempts counter\n");
    out.push_str(&rows.0.join("\n"));
    out.push_str("\n# TYPE tuneprobe_tcp_connect_failures counter\n");
    out.push_str(&rows.1.join("\n"));
    out.push_str("\n# EOF\n");
    out
}

/// `tuneprobe fleet ab ARGS --json` against the Prometheus on `port`.
fn fleet_ab(port: u16, args: &[&str]) -> Value {
    fleet_json("ab", &format!("http://127.0.0.1:{port}"), args)
}

/// Two groups of pods across nodes side by side: the wide range improves connect
/// failures against the narrow one, through a load swing they share; two groups with
/// the same value are no significant change.
#[test]
fn two_groups_of_pods_side_by_side_across_nodes() {
    let dir = TempDir::new("tuneprobe-fleet-ab-");
    let start = ((now_s() as i64 - 3 * 3600) / 3600) * 3600;
    let (_prometheus, port) = prometheus_with_blocks(&dir.0, "ab.om", &ab_openmetrics(start));
    let end = (start + (POINTS - 1) * STEP_S).to_string();
    let compare = |treated: &str, control: &str| {
        let report = fleet_ab(
            port,
            &[
                "--treated",
                treated,
                "--control",
                control,
                "--signal",
                "connect_failure_ratio",
                "--window",
                "30m",
                "--end",
                &end,
                "--interval",
                "1m",
            ],
        );
        report["verdicts"][0].clone()
    };
    let v = compare(r#"pod=~"api-wide-.*""#, r#"pod=~"api-narrow-.*""#);
    eprintln!("fleet ab, wide against narrow: {v}");
    assert_eq!(v["verdict"], "improved", "{v:#}");
    assert_eq!(
        (
            v["treated_containers"].as_u64(),
            v["control_containers"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert!(v["intervals"].as_u64().unwrap() >= 28, "{v}");
    assert!((num(&v["treated"]) - 0.05).abs() < 0.01, "{v}");
    assert!((num(&v["control"]) - 0.30).abs() < 0.03, "{v}");
    assert!(num(&v["ci95"][1]) < 0.0, "{v}");
    let null = compare(r#"pod=~"api-twin-.*""#, r#"pod=~"api-narrow-.*""#);
    eprintln!("fleet ab, twin against narrow: {null}");
    assert_eq!(null["verdict"], "no significant change", "{null:#}");
}
