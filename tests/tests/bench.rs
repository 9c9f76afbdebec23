//! `cargo xtask bench --smoke`: the benchmark harness runs every stage end to end on the
//! real kernel (bpftrace, tuneprobe, iperf3, fio, dnsmasq) and writes a complete report,
//! so it cannot rot. Speed targets are not asserted here: the smoke loads are tiny and
//! the machine is shared; the numbers must only be present and plausible.

use std::{fs, path::Path, process::Command};

use serde_json::Value;
use tuneprobe_tests::{tuneprobe_binary, unique};

/// The smoke plan's paced load mix (xtask/src/bench/mod.rs, `Plan::smoke`).
const MIX_DROPS_PER_S: f64 = 5_000.0;
const MIX_DNS_QPS: f64 = 500.0;
const MIX_IOPS: f64 = 200.0;
const MIX_CONNECTS_PER_S: f64 = 100.0;
const SCALE_WORKLOADS: u64 = 50;

const PROGRAMS: &[&str] = &[
    "kfree_skb",
    "tcp_retransmit_skb",
    "block_rq_insert",
    "block_rq_issue",
    "block_rq_merge",
    "block_rq_complete",
    "sched_switch",
    "dns_egress",
    "dns_ingress",
    "inet_sock_set_state",
    "tcp_send_reset",
    "tcp_receive_reset",
];

fn number(value: &Value, what: &str) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"))
}

/// Leftovers of a bench run: its namespaces, cgroups and loop backing files.
fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    let netns = fs::read_dir("/run/netns").into_iter().flatten().flatten();
    let cgroups = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/cpu"]
        .into_iter()
        .flat_map(|dir| fs::read_dir(dir).into_iter().flatten().flatten());
    for entry in netns.chain(cgroups) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("tpbA")
            || name.starts_with("tpbB")
            || name.starts_with("tuneprobe-bench-")
        {
            found.push(entry.path().display().to_string());
        }
    }
    let loops = Command::new("losetup").arg("-a").output().expect("losetup");
    for line in String::from_utf8_lossy(&loops.stdout).lines() {
        if line.contains("tuneprobe-bench-") {
            found.push(line.to_string());
        }
    }
    found
}

#[test]
fn smoke_run_reports_every_section_and_cleans_up() {
    let before = leftovers();
    let dir = std::env::temp_dir().join(unique("tuneprobe-bench-test-"));
    let out = dir.join("report.json");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "bench",
            "--smoke",
            "--no-setup",
        ])
        .arg("--tuneprobe")
        .arg(tuneprobe_binary())
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run cargo xtask bench");
    assert!(status.success(), "cargo xtask bench --smoke: {status}");
    let report: Value = serde_json::from_str(&fs::read_to_string(&out).expect("report written"))
        .expect("report is JSON");
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(report["smoke"], true);
    assert!(number(&report["duration_s"], "duration") < 300.0);

    // Kernel cost: every tuneprobe program is listed; those the mix exercises ran, at a
    // plausible cost, next to their bpftrace equivalent.
    let costs = report["kernel_cost"].as_array().expect("kernel_cost");
    let names: Vec<&str> = costs.iter().filter_map(|c| c["program"].as_str()).collect();
    assert_eq!(names, PROGRAMS);
    for cost in costs {
        let name = cost["program"].as_str().unwrap_or_default();
        // Random 4 KiB reads never merge; a 2 s window may see no retransmit.
        if name == "block_rq_merge" || name == "tcp_retransmit_skb" {
            continue;
        }
        for tool in ["tuneprobe", "bpftrace"] {
            let events = number(
                &cost[format!("{tool}_events")],
                &format!("{tool} {name} events"),
            );
            let ns = number(
                &cost[format!("{tool}_ns_per_event")],
                &format!("{tool} {name} ns/event"),
            );
            assert!(events >= 1.0, "{tool} {name}: {events} events");
            assert!(ns > 0.0 && ns < 100_000.0, "{tool} {name}: {ns} ns/event");
        }
        let ratio = number(&cost["ratio"], "ratio");
        assert!(ratio > 0.0, "{name}: ratio {ratio}");
    }
    let merge = costs
        .iter()
        .find(|c| c["program"] == "block_rq_merge")
        .unwrap();
    assert!(
        merge["bpftrace_probe"].is_null(),
        "bpftrace has no merge probe"
    );

    // The floor: the cheapest programs on the two hottest hooks, measured (and on the
    // rare retransmit hook when the short window had any).
    for hook in ["kfree_skb", "sched_switch", "tcp_retransmit_skb"] {
        for label in ["empty", "count", "keyed_count"] {
            let key = format!("{hook}_{label}_ns_per_event");
            let runs = report["floor"][format!("{hook}_{label}_events")].as_u64();
            if hook == "tcp_retransmit_skb" && runs == Some(0) {
                continue;
            }
            assert!(runs > Some(0), "{key}: no events");
            let ns = number(&report["floor"][&key], &key);
            assert!(ns > 0.0 && ns < 100_000.0, "{key}: {ns}");
        }
    }

    // Workload impact: five workloads, each measured in all three modes.
    let impact = report["workload_impact"]
        .as_array()
        .expect("workload_impact");
    let workloads: Vec<&str> = impact
        .iter()
        .filter_map(|w| w["workload"].as_str())
        .collect();
    assert_eq!(workloads, ["tcp", "udp_drops", "dns", "block", "connect"]);
    for row in impact {
        for mode in ["nothing", "bpftrace", "tuneprobe"] {
            let value = number(&row[mode], &format!("{} {mode}", row["workload"]));
            assert!(value > 0.0, "{} {mode}: {value}", row["workload"]);
            assert_eq!(row["samples"][mode].as_array().map(Vec::len), Some(1));
            // The same work per busy CPU-second: at least the rate over the CPU
            // count, since no more CPUs than there are were busy for the whole run,
            // and at most a hundred times it (a little of one). /proc/stat counts in
            // 10 ms ticks, sampled: over a 1 s smoke window on a fully busy machine
            // (other builds beside it) the busy time reads a few ticks above
            // CPUs x elapsed, hence the 5%.
            let per_cpu = number(
                &row["per_cpu_s"][mode],
                &format!("{} {mode} per CPU-s", row["workload"]),
            );
            let cpus =
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
            assert!(
                (value / (cpus * 1.05)..value * 100.0).contains(&per_cpu),
                "{} {mode}: {value}/s, {per_cpu} per busy CPU-s",
                row["workload"]
            );
        }
        assert!(number(&row["tuneprobe_ratio"], "ratio") > 0.0);
        assert!(number(&row["per_cpu_s"]["tuneprobe_ratio"], "per-CPU ratio") > 0.0);
    }

    // The paced mix hits its rates (the generators are part of what is tested).
    let mix = &report["agent_cost"]["load_mix"];
    let drops = number(&mix["drops_per_s"], "drops/s");
    assert!(
        (0.9 * MIX_DROPS_PER_S..=1.02 * MIX_DROPS_PER_S).contains(&drops),
        "drops/s {drops}"
    );
    let dns = number(&mix["dns_qps"], "dns qps");
    assert!(
        (0.8 * MIX_DNS_QPS..=1.02 * MIX_DNS_QPS).contains(&dns),
        "DNS qps {dns}"
    );
    let connects = number(&mix["connects_per_s"], "connects/s");
    assert!(
        (0.8 * MIX_CONNECTS_PER_S..=1.05 * MIX_CONNECTS_PER_S).contains(&connects),
        "connections/s {connects}"
    );
    let iops = number(&mix["block_iops"], "iops");
    assert!(
        (0.8 * MIX_IOPS..=1.05 * MIX_IOPS).contains(&iops),
        "IOPS {iops}"
    );
    for agent in ["bpftrace", "tuneprobe"] {
        let cpu = number(&report["agent_cost"][agent]["cpu_percent"], "cpu");
        let rss = number(&report["agent_cost"][agent]["peak_rss_mib"], "rss");
        assert!((0.0..200.0).contains(&cpu), "{agent} cpu {cpu}%");
        assert!(rss > 1.0 && rss < 1024.0, "{agent} peak RSS {rss} MiB");
        let attach = number(&report["attach"][agent]["median_ms"], "attach");
        assert!(
            attach > 0.0 && attach < 60_000.0,
            "{agent} attach {attach} ms"
        );
    }

    // Scale: every cgroup the bench created shows up, in /metrics and in the snapshot.
    let scale = report["scale"].as_array().expect("scale");
    assert_eq!(scale.len(), 1);
    let row = &scale[0];
    assert_eq!(row["workloads"].as_u64(), Some(SCALE_WORKLOADS));
    assert_eq!(row["drop_series"].as_u64(), Some(SCALE_WORKLOADS));
    assert_eq!(row["snapshot_workloads"].as_u64(), Some(SCALE_WORKLOADS));
    for key in ["rss_mib", "metrics_ms", "snapshot_ms", "attach_ms"] {
        assert!(number(&row[key], key) > 0.0, "{key}: {}", row[key]);
    }

    // Targets are evaluated (met or not), never silently dropped.
    let targets = report["targets"].as_array().expect("targets");
    assert!(targets.len() >= 10);
    assert!(
        targets
            .iter()
            .all(|t| t["target"].is_string() && t["measured"].is_string())
    );

    // Everything the run created is gone.
    let after: Vec<String> = leftovers()
        .into_iter()
        .filter(|l| !before.contains(l))
        .collect();
    assert!(after.is_empty(), "left behind: {after:?}");
}
