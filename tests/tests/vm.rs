//! tuneprobe on the kernels clusters run: Debian 11's 5.10, Debian 12's 6.1 and Debian
//! 13's 6.12 under QEMU (`cargo xtask vm-test`).
//!
//! 6.1 and 6.12 have no per-task throttle flag (the cfs_rq's `throttle_count` is used)
//! and an older verifier; 6.1 has no `rx_sk` in `kfree_skb`, neither has `err` in
//! `tcp_retransmit_skb`. 5.10 has no drop reason in `kfree_skb` (drops are named by the
//! function that dropped them, `at:__udp4_lib_rcv`), keeps the socket's cgroup in
//! `sock_cgroup_data.val` and the request's disk in `request.rq_disk`, and its loop
//! devices take no IO scheduler (no queue time). Every program attaches and every check
//! passes on every kernel of the matrix. The full run (boot, load, attach, every signal
//! the guest can produce, checked against the guest kernel's counters) takes about a
//! minute per kernel under software emulation, so it is the test, not a subset: the
//! whole matrix fits in `cargo xtask test`.

use std::{path::Path, process::Command, sync::Mutex};

use serde_json::Value;

/// One guest at a time: two emulated guests on two cores would starve each other's
/// timed workloads.
static ONE_GUEST: Mutex<()> = Mutex::new(());

#[test]
fn debian_6_1_and_6_12_load_attach_and_agree_with_their_own_counters() {
    matrix(&["6.1", "6.12"]);
}

/// 5.10: drops by the function that dropped them (no drop reason before 5.17), the
/// socket's cgroup from `sock_cgroup_data.val`, the disk from `request.rq_disk`.
#[test]
fn debian_5_10_loads_attaches_and_agrees_with_its_own_counters() {
    matrix(&["5.10"]);
}

/// Runs vm-test on `kernels` and checks each kernel's result.
fn matrix(kernels: &[&str]) {
    let _one = ONE_GUEST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xtask");
    assert!(
        xtask.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        xtask.display()
    );
    let out = Command::new(&xtask)
        .arg("vm-test")
        .arg("--json")
        .arg("--kernel")
        .arg(kernels.join(","))
        .arg("--tuneprobe")
        .arg(tuneprobe_tests::tuneprobe_binary())
        .arg("--testload")
        .arg(tuneprobe_tests::testload())
        .output()
        .expect("run xtask vm-test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The per-kernel summary, where a failing `cargo xtask test` shows it.
    eprintln!("{stderr}");
    let results: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let series: Vec<&str> = results
        .iter()
        .map(|r| r["series"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(series, kernels, "one JSON line per kernel:\n{stdout}");
    for result in &results {
        check_kernel(result);
    }
    assert!(out.status.success(), "vm-test failed");
}

fn check_kernel(result: &Value) {
    let series = result["series"].as_str().unwrap();
    assert!(result["error"].is_null(), "{series}: {}", result["error"]);
    agrees_with_its_record(series, result);
    assert!(
        result["kernel"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{series}.")),
        "{result}"
    );
    let checks = result["checks"].as_array().unwrap();
    let check = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{series}: no check {name} in {checks:?}"))
    };
    // Every check of the matrix ran and passed.
    for c in checks {
        assert_eq!(c["status"], "passed", "{series}: {c}");
    }
    for name in [
        &format!("kernel_is_{series}")[..],
        "tuneprobe_ran",
        "every_program_attached_or_explained",
        "drops_no_socket_equal_udp_noports",
        "drops_netfilter_equal_the_nft_rule_counter",
        "no_drops_in_the_retransmit_netns",
        "retransmitted_segments_equal_tcp_retranssegs",
        "no_retransmits_for_the_drops_cgroup",
        "dns_queries_and_responses_equal_udp_indatagrams",
        "block_reads_equal_io_stat_rios_with_queue_time",
        "cpu_throttle_events_match_nr_throttled",
        "no_throttling_without_a_quota",
        "refused_connects_equal_tcp_attempt_fails",
        "no_connects_for_the_drops_cgroup",
    ] {
        check(name);
    }
    // Every program loads and attaches on every kernel of the matrix.
    let probes = result["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 12, "{series}: {probes:?}");
    for probe in probes {
        assert_eq!(probe["attached"], true, "{series}: {probe}");
    }
    // Exact values, as the guest kernel counted them.
    let dns = check("dns_queries_and_responses_equal_udp_indatagrams");
    assert_eq!(dns["observed"]["queries"], 20, "{series}");
    assert_eq!(dns["observed"]["responses"], 20, "{series}");
    assert_eq!(dns["expected"]["udp_indatagrams"], 40, "{series}");
    // Drops on every kernel: by reason, and on 5.10 by the function that dropped them.
    let (closed_port, nft) = if series == "5.10" {
        ("at:__udp4_lib_rcv", "at:nf_hook_slow")
    } else {
        ("NO_SOCKET", "NETFILTER_DROP")
    };
    let drops = check("drops_no_socket_equal_udp_noports");
    assert_eq!(drops["observed"], 50, "{series}");
    assert_eq!(drops["expected"]["reason"], closed_port, "{series}");
    let nft_drops = check("drops_netfilter_equal_the_nft_rule_counter");
    assert_eq!(nft_drops["observed"], 30, "{series}");
    assert_eq!(nft_drops["expected"]["reason"], nft, "{series}");
    let retrans = check("retransmitted_segments_equal_tcp_retranssegs");
    assert_eq!(retrans["expected"]["nft_dropped"], 1, "{series}");
    assert_eq!(
        retrans["observed"]["segments"], retrans["expected"]["tcp_retranssegs"],
        "{series}"
    );
    let block = check("block_reads_equal_io_stat_rios_with_queue_time");
    assert_eq!(block["observed"]["requests"], 200, "{series}");
    // 5.10's loop device takes no scheduler: no queue time there.
    assert_eq!(
        block["expected"]["queue_time"],
        series != "5.10",
        "{series}"
    );
}

/// The kernel table of docs/kernels.md is generated from `tests/kernels/<series>.json`
/// (`cargo xtask kernel-table`): this run must measure what the record says, the same
/// programs attached and off, and every check with the same outcome.
fn agrees_with_its_record(series: &str, result: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("kernels/{series}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "{}: {err}; record it with `cargo xtask vm-test --kernel {series} --record`",
            path.display()
        )
    });
    let record: Value = serde_json::from_str(&text).unwrap();
    let fix = format!(
        "{series} measured differently from {}: re-record with `cargo xtask vm-test --kernel {series} --record` and `cargo xtask kernel-table`",
        path.display()
    );
    assert_eq!(result["summary"]["attached"], record["attached"], "{fix}");
    let off = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(off(&result["summary"]["off"]), off(&record["off"]), "{fix}");
    let outcomes = |checks: &Value| -> Vec<(String, String)> {
        checks
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["name"].to_string(), c["status"].to_string()))
            .collect()
    };
    assert_eq!(
        outcomes(&result["checks"]),
        outcomes(&record["checks"]),
        "{fix}"
    );
}
