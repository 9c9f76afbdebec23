//! The agent at its series cap stays under the DaemonSet's memory limit, with margin:
//! `tuneprobe serve` with as many workloads as deploy/daemonset.yaml lets it export
//! (`--max-workloads`), each with a packet drop, measured in its steady state (the change
//! watcher's 60 s of samples and the adviser's snapshots all held) by the benchmark's
//! scale stage, `cargo xtask bench --only scale --hold`, on the real kernel. About two
//! minutes.

use std::{fs, path::Path, process::Command};

use serde_json::Value;
use tuneprobe_tests::{tuneprobe_binary, unique};

/// The share of the limit the agent may reach at its peak: the manifest's limit is twice
/// the peak measured here, the rest for what the benchmark's workloads do not carry
/// (pods' names and labels, several signals and histograms per workload).
const PEAK_OF_LIMIT: f64 = 0.5;

/// How long `serve` runs with every workload before it is measured: the change watcher's
/// before window (60 s) filled, and the adviser's snapshots over `--advice-window 60s`.
const HOLD_S: u64 = 75;

/// What deploy/daemonset.yaml gives the agent.
struct Manifest {
    request_mib: f64,
    limit_mib: f64,
    max_workloads: usize,
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A Kubernetes memory quantity (`96Mi`, `1Gi`) in MiB.
fn mebibytes(quantity: &str) -> f64 {
    let (number, unit) = quantity.split_at(quantity.find(|c: char| c.is_alphabetic()).unwrap());
    let number: f64 = number.parse().expect("a memory quantity");
    match unit {
        "Mi" => number,
        "Gi" => number * 1024.0,
        other => panic!("memory in {other}: the test reads Mi and Gi"),
    }
}

/// serve's default `--max-workloads`, from its help.
fn default_max_workloads() -> usize {
    let out = Command::new(tuneprobe_binary())
        .args(["serve", "--help"])
        .output()
        .expect("tuneprobe serve --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let at = help
        .find("--max-workloads")
        .expect("--max-workloads in the help");
    let rest = &help[at..];
    let default = &rest[rest.find("[default: ").expect("its default") + 10..];
    default[..default.find(']').unwrap()].parse().unwrap()
}

fn manifest() -> Manifest {
    let text = fs::read_to_string(repo().join("deploy/daemonset.yaml")).unwrap();
    let ds: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let memory = |kind: &str| {
        let quantity = container["resources"][kind]["memory"].as_str();
        mebibytes(quantity.unwrap_or_else(|| panic!("no {kind}.memory in the DaemonSet")))
    };
    let max_workloads = container["args"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(serde_norway::Value::as_str)
        .find_map(|arg| arg.strip_prefix("--max-workloads="))
        .map_or_else(default_max_workloads, |n| n.parse().unwrap());
    Manifest {
        request_mib: memory("requests"),
        limit_mib: memory("limits"),
        max_workloads,
    }
}

/// `cargo xtask bench --only scale` at `workloads`, held; its one scale row.
fn scale_run(workloads: usize) -> Value {
    let dir = std::env::temp_dir().join(unique("tuneprobe-memory-test-"));
    let out = dir.join("report.json");
    let status = Command::new(env!("CARGO"))
        .current_dir(repo())
        .args(["run", "--quiet", "--package", "xtask", "--", "bench"])
        .args(["--only", "scale", "--no-setup", "--scale"])
        .arg(workloads.to_string())
        .args(["--hold", &HOLD_S.to_string(), "--tuneprobe"])
        .arg(tuneprobe_binary())
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run cargo xtask bench");
    let report = fs::read_to_string(&out);
    let _ = fs::remove_dir_all(&dir);
    assert!(status.success(), "cargo xtask bench --only scale: {status}");
    let report: Value = serde_json::from_str(&report.expect("report written")).unwrap();
    assert_eq!(report["config"]["hold_s"].as_u64(), Some(HOLD_S));
    report["scale"][0].clone()
}

#[test]
fn the_agent_at_its_series_cap_stays_under_the_daemonset_memory_limit() {
    let manifest = manifest();
    assert!(manifest.request_mib <= manifest.limit_mib);
    let row = scale_run(manifest.max_workloads);
    let cap = manifest.max_workloads;
    assert_eq!(row["workloads"].as_u64(), Some(cap as u64));
    assert_eq!(row["snapshot_workloads"].as_u64(), Some(cap as u64));
    // Every workload has its own series, but for the few of this machine's own that
    // took a place first (the host's, a test's): the agent ran at its cap.
    let series = row["drop_series"].as_u64().unwrap() as usize;
    assert!(
        (cap - 20..=cap).contains(&series),
        "{series} of {cap} workloads with series"
    );
    let rss = row["rss_mib"].as_f64().unwrap();
    let peak = row["peak_rss_mib"].as_f64().unwrap();
    assert!(
        peak <= manifest.limit_mib * PEAK_OF_LIMIT,
        "peak RSS {peak:.1} MiB at {cap} workloads: above {PEAK_OF_LIMIT} of the \
         DaemonSet's {} MiB limit",
        manifest.limit_mib
    );
    assert!(
        rss <= manifest.request_mib,
        "RSS {rss:.1} MiB at {cap} workloads: above the DaemonSet's {} MiB request",
        manifest.request_mib
    );
}
