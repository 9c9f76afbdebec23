//! `cargo xtask soak`: a short run through the whole harness (every signal driven, cgroups
//! churned, the agent sampled), so the harness cannot rot. The 10-minute run is not part
//! of the tests; its result is in docs/benchmarks.md.

use std::{fs, path::Path, process::Command};

use serde_json::Value;
use tuneprobe_tests::{tuneprobe_binary, unique};

#[test]
fn a_short_soak_samples_the_agent_and_sees_no_growth() {
    let dir = std::env::temp_dir().join(unique("tuneprobe-soak-test-"));
    let out = dir.join("report.json");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["run", "--quiet", "--package", "xtask", "--", "soak"])
        .args([
            "--for",
            "15s",
            "--interval",
            "5s",
            "--grace",
            "3s",
            "--no-setup",
        ])
        .arg("--tuneprobe")
        .arg(tuneprobe_binary())
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run cargo xtask soak");
    let report: Value = serde_json::from_str(&fs::read_to_string(&out).expect("report written"))
        .expect("report is JSON");
    let _ = fs::remove_dir_all(&dir);
    assert!(status.success(), "cargo xtask soak: {status}: {report:#}");

    let samples = report["samples"].as_array().unwrap();
    assert!(samples.len() >= 4, "{report:#}");
    for s in samples {
        assert!(s["rss_kib"].as_u64().unwrap() > 1024, "{s}");
        assert_eq!(s["agent_errors"], 0.0, "{s}");
    }
    let last = &samples[samples.len() - 1];
    // The loads reached the agent: drops counted, kernel maps hold entries, and the
    // churned cgroups' entries were collected after the grace period.
    assert!(last["drops"].as_f64().unwrap() > 1000.0, "{last}");
    let entries: u64 = last["map_entries"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert!(entries > 0, "{last}");
    assert!(last["gc_deleted_entries"].as_f64().unwrap() > 0.0, "{last}");
    assert!(report["load"]["churned_cgroups"].as_u64().unwrap() >= 300);
    assert_eq!(report["verdict"]["no_growth"], true, "{report:#}");
    assert!(report["agent_cpu_percent"].as_f64().unwrap() > 0.0);
}
