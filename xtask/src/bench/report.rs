//! Medians, ratios, targets, the printed table and the JSON report.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;
use serde_json::Value;

pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        f64::midpoint(sorted[mid - 1], sorted[mid])
    } else {
        sorted[mid]
    })
}

pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The JSON report (`target/bench/report.json`); its consumers are [`table`],
/// `tests/tests/bench.rs` and docs/benchmarks.md.
#[derive(Serialize)]
pub struct Report {
    pub smoke: bool,
    pub machine: Machine,
    pub config: Config,
    /// Per tuneprobe program, next to its bpftrace equivalent.
    pub kernel_cost: Vec<KernelCost>,
    pub workload_impact: Vec<WorkloadImpact>,
    pub agent_cost: AgentCosts,
    /// The build under test at each scale point.
    pub scale: Vec<ScaleRun>,
    /// `--baseline` at the same points, in the same run (empty without it).
    pub baseline_scale: Vec<ScaleRun>,
    /// RSS per workload added between the smallest and the largest scale point.
    pub growth: Growth,
    pub attach: Attach,
    pub targets: Vec<Target>,
    /// `{hook}_{program}_ns_per_event` and `{hook}_{program}_events` of the cheapest
    /// bpftrace programs (`floor_stage` in mod.rs).
    pub floor: BTreeMap<String, FloorValue>,
    pub duration_s: f64,
}

#[derive(Serialize)]
pub struct Machine {
    pub kernel: Option<String>,
    pub cpus: Option<usize>,
    pub cpu_model: Option<String>,
    pub memory_mib: Option<u64>,
    pub bpftrace: Option<String>,
    pub iperf3: Option<String>,
    pub fio: Option<String>,
}

/// The run's plan.
#[derive(Serialize)]
pub struct Config {
    pub rounds: usize,
    pub workload_secs: u32,
    pub mix_rounds: usize,
    pub mix_secs: u32,
    pub target_drops_per_s: f64,
    pub target_dns_qps: f64,
    pub target_block_iops: u32,
    pub scale: Vec<usize>,
    /// `--hold`: how long `serve` ran at each scale point before it was measured.
    pub hold_s: u64,
    /// `--only`: the one stage that ran (`null`: all of them).
    pub only: Option<String>,
}

/// Medians over the load-mix runs.
#[derive(Serialize)]
pub struct KernelCost {
    pub program: &'static str,
    pub count_only: bool,
    pub tuneprobe_ns_per_event: Option<f64>,
    pub tuneprobe_events: Option<f64>,
    pub bpftrace_probe: Option<&'static str>,
    pub bpftrace_ns_per_event: Option<f64>,
    pub bpftrace_events: Option<f64>,
    pub ratio: Option<f64>,
    /// The DNS programs only.
    pub tuneprobe_ns_per_dns_message: Option<f64>,
    pub bpftrace_ns_per_dns_message: Option<f64>,
}

/// One workload under the three modes: throughput, and work per busy CPU-second.
#[derive(Serialize)]
pub struct WorkloadImpact {
    pub workload: &'static str,
    pub unit: &'static str,
    #[serde(flatten)]
    pub throughput: Comparison,
    pub per_cpu_s: Comparison,
    pub samples: BySample,
    pub per_cpu_s_samples: BySample,
}

/// Medians per mode, ratios to nothing attached, and how far apart the bare runs are.
#[derive(Serialize)]
pub struct Comparison {
    pub nothing: Option<f64>,
    pub bpftrace: Option<f64>,
    pub tuneprobe: Option<f64>,
    pub bpftrace_ratio: Option<f64>,
    pub tuneprobe_ratio: Option<f64>,
    pub bare_spread: Option<f64>,
}

#[derive(Serialize)]
pub struct BySample {
    pub nothing: Vec<f64>,
    pub bpftrace: Vec<f64>,
    pub tuneprobe: Vec<f64>,
}

#[derive(Serialize)]
pub struct AgentCosts {
    /// The rates the mix achieved (medians over all its runs).
    pub load_mix: LoadMix,
    pub bpftrace: AgentCost,
    pub tuneprobe: AgentCost,
}

#[derive(Serialize)]
pub struct LoadMix {
    pub drops_per_s: Option<f64>,
    pub dns_qps: Option<f64>,
    pub block_iops: Option<f64>,
    pub retransmits_per_s: Option<f64>,
    pub connects_per_s: Option<f64>,
}

#[derive(Serialize)]
pub struct AgentCost {
    pub cpu_percent: Option<f64>,
    pub cpu_percent_samples: Vec<f64>,
    pub bpf_cpu_percent: Option<f64>,
    pub bpf_cpu_percent_samples: Vec<f64>,
    pub peak_rss_mib: Option<f64>,
}

/// The scale stage: the build under test at each point, `--baseline`'s beside it.
#[derive(Default)]
pub struct ScaleStage {
    pub tuneprobe: Vec<ScaleRun>,
    pub baseline: Vec<ScaleRun>,
}

impl ScaleStage {
    /// Fills in each run's growth since the point before.
    pub fn with_growth(mut self) -> Self {
        for runs in [&mut self.tuneprobe, &mut self.baseline] {
            for i in 1..runs.len() {
                runs[i].kib_per_added_workload = kib_per_workload(&runs[i - 1], &runs[i]);
            }
        }
        self
    }

    pub fn growth(&self) -> Growth {
        let over = |runs: &[ScaleRun]| match (runs.first(), runs.last()) {
            (Some(first), Some(last)) => kib_per_workload(first, last),
            _ => None,
        };
        Growth {
            from_workloads: self.tuneprobe.first().map(|r| r.workloads),
            to_workloads: self.tuneprobe.last().map(|r| r.workloads),
            tuneprobe_kib_per_workload: over(&self.tuneprobe),
            baseline_kib_per_workload: over(&self.baseline),
        }
    }
}

/// The RSS each workload added from `a` to `b` costs, in KiB.
fn kib_per_workload(a: &ScaleRun, b: &ScaleRun) -> Option<f64> {
    let added = b.workloads.checked_sub(a.workloads).filter(|&n| n > 0)?;
    Some((b.rss_mib - a.rss_mib) * 1024.0 / added as f64)
}

/// RSS per added workload, from the smallest to the largest scale point.
#[derive(Serialize)]
pub struct Growth {
    pub from_workloads: Option<usize>,
    pub to_workloads: Option<usize>,
    pub tuneprobe_kib_per_workload: Option<f64>,
    pub baseline_kib_per_workload: Option<f64>,
}

/// One size of the scale stage.
#[derive(Serialize)]
pub struct ScaleRun {
    pub workloads: usize,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// RSS added per workload since the point before, in KiB (`null` at the first).
    pub kib_per_added_workload: Option<f64>,
    pub metrics_ms: Option<f64>,
    pub metrics_ms_samples: Vec<f64>,
    pub metrics_bytes: usize,
    pub drop_series: usize,
    pub snapshot_ms: f64,
    pub snapshot_workloads: usize,
    pub attach_ms: f64,
}

#[derive(Serialize)]
pub struct Attach {
    pub bpftrace: AttachTimes,
    pub tuneprobe: AttachTimes,
}

#[derive(Serialize)]
pub struct AttachTimes {
    pub median_ms: Option<f64>,
    pub samples_ms: Vec<f64>,
}

/// A value of the floor: an event count, or nanoseconds per event (none without events).
#[derive(Serialize)]
#[serde(untagged)]
pub enum FloorValue {
    Events(u64),
    NsPerEvent(Option<f64>),
}

/// One target of the issue, checked against this run's numbers.
#[derive(Serialize)]
pub struct Target {
    #[serde(rename = "target")]
    pub name: String,
    pub met: Option<bool>,
    #[serde(rename = "measured")]
    pub detail: String,
}

impl Target {
    pub fn new(name: &str, met: Option<bool>, detail: String) -> Self {
        Self {
            name: name.to_string(),
            met,
            detail,
        }
    }
}

pub fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

/// The report as text: one block per stage, from the JSON so the two always agree.
pub fn table(report: &Value) -> String {
    let mut out = String::new();
    // `--only scale` ran the scale stage alone: the others have nothing to show.
    if report["config"]["only"].is_null() {
        kernel_cost_table(&mut out, report);
        floor_table(&mut out, report);
        workload_table(&mut out, report);
        agent_table(&mut out, report);
    }
    scale_table(&mut out, report);
    targets_table(&mut out, report);
    out
}

/// A JSON number with `decimals` decimals, `-` when it is not one.
fn num(v: &Value, decimals: usize) -> String {
    fmt(v.as_f64(), decimals)
}

/// Each program's kernel cost next to its bpftrace equivalent, and per DNS message.
fn kernel_cost_table(out: &mut String, report: &Value) {
    let _ = writeln!(
        out,
        "\nKernel cost per event (run_time_ns / run_cnt, median of {} load-mix runs each)",
        report["config"]["mix_rounds"]
    );
    let _ = writeln!(
        out,
        "{:<19} {:>10} {:>10}  {:<17} {:>10} {:>10} {:>7}",
        "tuneprobe program", "ns/event", "events", "bpftrace probe", "ns/event", "events", "ratio"
    );
    for row in report["kernel_cost"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<19} {:>10} {:>10}  {:<17} {:>10} {:>10} {:>7}",
            row["program"].as_str().unwrap_or_default(),
            num(&row["tuneprobe_ns_per_event"], 0),
            num(&row["tuneprobe_events"], 0),
            row["bpftrace_probe"].as_str().unwrap_or("-"),
            num(&row["bpftrace_ns_per_event"], 0),
            num(&row["bpftrace_events"], 0),
            num(&row["ratio"], 2),
        );
    }
    for row in report["kernel_cost"].as_array().into_iter().flatten() {
        if row["tuneprobe_ns_per_dns_message"].is_null() {
            continue;
        }
        let _ = writeln!(
            out,
            "Per DNS message (all runs' time / queries answered): {} {} ns, {} {} ns",
            row["program"].as_str().unwrap_or_default(),
            num(&row["tuneprobe_ns_per_dns_message"], 0),
            row["bpftrace_probe"].as_str().unwrap_or("-"),
            num(&row["bpftrace_ns_per_dns_message"], 0),
        );
    }
}

/// The cheapest bpftrace programs on this machine's hooks.
fn floor_table(out: &mut String, report: &Value) {
    let floor = &report["floor"];
    let _ = writeln!(
        out,
        "Floor here (bpftrace, ns per event): {:<19} {:>6} {:>6} {:>12}",
        "hook", "empty", "count", "keyed count"
    );
    for hook in ["kfree_skb", "sched_switch", "tcp_retransmit_skb"] {
        let cell = |label: &str| num(&floor[format!("{hook}_{label}_ns_per_event")], 0);
        let _ = writeln!(
            out,
            "{:<36} {:<19} {:>6} {:>6} {:>12}",
            "",
            hook,
            cell("empty"),
            cell("count"),
            cell("keyed_count"),
        );
    }
}

/// What each observer does to each workload.
fn workload_table(out: &mut String, report: &Value) {
    let _ = writeln!(
        out,
        "\nWorkload impact (median of {} interleaved rounds; ratio to nothing attached; \
         spread: of the bare runs)",
        report["config"]["rounds"]
    );
    let _ = writeln!(
        out,
        "{:<30} {:>12} {:>12} {:>12} {:>9} {:>9} {:>7}",
        "workload", "nothing", "bpftrace", "tuneprobe", "bpftrace", "tuneprobe", "spread"
    );
    for row in report["workload_impact"].as_array().into_iter().flatten() {
        let name = row["workload"].as_str().unwrap_or_default();
        let unit = row["unit"].as_str().unwrap_or_default();
        // Throughput, then the same work per busy CPU-second (see `Rate` in mod.rs).
        for (label, values) in [
            (format!("{name} ({unit})"), row),
            (
                format!(
                    "  per busy CPU-s ({})",
                    unit.strip_suffix("/s").unwrap_or("IOs")
                ),
                &row["per_cpu_s"],
            ),
        ] {
            let _ = writeln!(
                out,
                "{:<30} {:>12} {:>12} {:>12} {:>8}% {:>8}% {:>6}%",
                label,
                num(&values["nothing"], 0),
                num(&values["bpftrace"], 0),
                num(&values["tuneprobe"], 0),
                fmt(values["bpftrace_ratio"].as_f64().map(|r| r * 100.0), 1),
                fmt(values["tuneprobe_ratio"].as_f64().map(|r| r * 100.0), 1),
                fmt(values["bare_spread"].as_f64().map(|r| r * 100.0), 0),
            );
        }
    }
}

/// The agents' own cost over the load mix.
fn agent_table(out: &mut String, report: &Value) {
    let mix = &report["agent_cost"]["load_mix"];
    let _ = writeln!(
        out,
        "\nAgent cost over the load mix ({} drops/s, {} DNS queries/s, {} block IOPS, \
         {} retransmits/s, throttled busy loop; medians)",
        num(&mix["drops_per_s"], 0),
        num(&mix["dns_qps"], 0),
        num(&mix["block_iops"], 0),
        num(&mix["retransmits_per_s"], 0),
    );
    let _ = writeln!(
        out,
        "{:<10} {:>14} {:>18} {:>14} {:>12}",
        "agent", "CPU % of core", "programs % of core", "peak RSS MiB", "attach ms"
    );
    for mode in ["bpftrace", "tuneprobe"] {
        let row = &report["agent_cost"][mode];
        let _ = writeln!(
            out,
            "{:<10} {:>14} {:>18} {:>14} {:>12}",
            mode,
            num(&row["cpu_percent"], 2),
            num(&row["bpf_cpu_percent"], 2),
            num(&row["peak_rss_mib"], 1),
            num(&report["attach"][mode]["median_ms"], 0),
        );
    }
}

/// Memory, /metrics and snapshot at each scale, the baseline's beside them.
fn scale_table(out: &mut String, report: &Value) {
    let _ = writeln!(
        out,
        "\nScale (cgroups created by the benchmark, one drop each; serve measured {} s after \
         the last was exported)",
        report["config"]["hold_s"]
    );
    let _ = writeln!(
        out,
        "{:>10} {:<9} {:>9} {:>9} {:>8} {:>11} {:>11} {:>9} {:>13} {:>10} {:>10}",
        "workloads",
        "build",
        "RSS MiB",
        "peak MiB",
        "KiB/wl",
        "/metrics ms",
        "/metrics KB",
        "series",
        "snapshot ms",
        "in JSON",
        "attach ms"
    );
    let baseline = report["baseline_scale"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for row in report["scale"].as_array().into_iter().flatten() {
        let before = baseline.iter().find(|b| b["workloads"] == row["workloads"]);
        for (build, row) in before
            .map(|b| ("baseline", b))
            .into_iter()
            .chain([("tuneprobe", row)])
        {
            let _ = writeln!(
                out,
                "{:>10} {:<9} {:>9} {:>9} {:>8} {:>11} {:>11} {:>9} {:>13} {:>10} {:>10}",
                num(&row["workloads"], 0),
                build,
                num(&row["rss_mib"], 1),
                num(&row["peak_rss_mib"], 1),
                num(&row["kib_per_added_workload"], 1),
                num(&row["metrics_ms"], 1),
                num(&row["metrics_bytes"].as_f64().map(|b| b / 1000.0).into(), 0),
                num(&row["drop_series"], 0),
                num(&row["snapshot_ms"], 0),
                num(&row["snapshot_workloads"], 0),
                num(&row["attach_ms"], 0),
            );
        }
    }
    let growth = &report["growth"];
    let _ = writeln!(
        out,
        "RSS per added workload, {} to {} workloads: tuneprobe {} KiB, baseline {} KiB",
        num(&growth["from_workloads"], 0),
        num(&growth["to_workloads"], 0),
        num(&growth["tuneprobe_kib_per_workload"], 1),
        num(&growth["baseline_kib_per_workload"], 1),
    );
}

/// Each target and its verdict.
fn targets_table(out: &mut String, report: &Value) {
    let _ = writeln!(out, "\nTargets");
    for target in report["targets"].as_array().into_iter().flatten() {
        let verdict = match target["met"].as_bool() {
            Some(true) => "met   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        let _ = writeln!(
            out,
            "  {verdict} {}: {}",
            target["target"].as_str().unwrap_or_default(),
            target["measured"].as_str().unwrap_or_default()
        );
    }
}
