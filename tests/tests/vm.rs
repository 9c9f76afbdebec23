//! tuneprobe on a second kernel: Debian 12's 6.1 under QEMU (`cargo xtask vm-test`).
//!
//! The guest has no per-task throttle flag (the cfs_rq's `throttle_count` is used), no
//! `rx_sk` in `kfree_skb` and no `err` in `tcp_retransmit_skb`, and an older verifier.
//! The full run (boot, load, attach, every signal the guest can produce, checked against
//! the guest kernel's counters) takes about a minute under software emulation, so it is
//! the test, not a subset.

use std::{path::Path, process::Command};

use serde_json::Value;

#[test]
fn debian_6_1_loads_attaches_and_agrees_with_its_own_counters() {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xtask");
    assert!(
        xtask.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        xtask.display()
    );
    let out = Command::new(&xtask)
        .arg("vm-test")
        .arg("--json")
        .arg("--tuneprobe")
        .arg(tuneprobe_tests::tuneprobe_binary())
        .arg("--testload")
        .arg(tuneprobe_tests::testload())
        .output()
        .expect("run xtask vm-test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON result from vm-test:\n{stdout}\n{stderr}"));
    assert!(out.status.success(), "vm-test failed: {result:#}\n{stderr}");
    assert!(
        result["kernel"].as_str().unwrap().starts_with("6.1."),
        "{result}"
    );
    // On 6.1 every program loads and attaches (none is merely reported unavailable).
    let probes = result["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 9, "{probes:?}");
    for probe in probes {
        assert_eq!(probe["attached"], Value::Bool(true), "{probe}");
    }
    let checks: Vec<&str> = result["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["ok"], Value::Bool(true), "{c}");
            c["name"].as_str().unwrap()
        })
        .collect();
    for expected in [
        "drops_no_socket_equal_udp_noports",
        "no_drops_in_the_retransmit_netns",
        "retransmitted_segments_equal_tcp_retranssegs",
        "no_retransmits_for_the_drops_cgroup",
        "dns_queries_and_responses_equal_udp_indatagrams",
        "cpu_throttle_events_match_nr_throttled",
        "no_throttling_without_a_quota",
    ] {
        assert!(checks.contains(&expected), "{expected} not in {checks:?}");
    }
    // Exact values, as the guest kernel counted them.
    let check = |name: &str| {
        result["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(check("drops_no_socket_equal_udp_noports")["observed"], 50);
    let dns = check("dns_queries_and_responses_equal_udp_indatagrams");
    assert_eq!(dns["observed"]["queries"], 20);
    assert_eq!(dns["observed"]["responses"], 20);
    assert_eq!(dns["expected"]["udp_indatagrams"], 40);
    let retrans = check("retransmitted_segments_equal_tcp_retranssegs");
    assert_eq!(retrans["expected"]["nft_dropped"], 1);
    assert_eq!(
        retrans["observed"]["segments"],
        retrans["expected"]["tcp_retranssegs"]
    );
}
