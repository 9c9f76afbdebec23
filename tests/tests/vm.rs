//! tuneprobe on the kernels clusters run: Debian 11's 5.10, Debian 12's 6.1 and Debian
//! 13's 6.12 under QEMU (`cargo xtask vm-test`).
//!
//! 6.1 and 6.12 have no per-task throttle flag (the cfs_rq's `throttle_count` is used)
//! and an older verifier; 6.1 has no `rx_sk` in `kfree_skb`, neither has `err` in
//! `tcp_retransmit_skb`. 5.10's `kfree_skb` has no drop reason: drops are named by the
//! function that dropped them (`at:__udp4_lib_rcv`), and the socket's cgroup is read from
//! `sock_cgroup_data.val`. On 5.10 tuneprobe reports its block programs off with the
//! reason (see [`OFF_ON_5_10`]), their checks are reported not
//! applicable with that reason, and every other check must run and pass. The full run
//! (boot, load, attach, every signal the guest can produce, checked against the guest
//! kernel's counters) takes about a minute per kernel under software emulation, so it
//! is the test, not a subset: the whole matrix fits in `cargo xtask test`.

use std::{path::Path, process::Command, sync::Mutex};

use serde_json::Value;

/// Programs off on 5.10, a word of tuneprobe's reason, and the checks that need them.
const OFF_ON_5_10: &[(&str, &str, &[&str])] = &[
    (
        "block_rq_insert",
        "`request_queue` has no field `disk`",
        &["block_reads_equal_io_stat_rios_with_queue_time"],
    ),
    ("block_rq_issue", "`request_queue` has no field `disk`", &[]),
    (
        "block_rq_complete",
        "`request_queue` has no field `disk`",
        &[],
    ),
];

/// One guest at a time: two emulated guests on two cores would starve each other's
/// timed workloads.
static ONE_GUEST: Mutex<()> = Mutex::new(());

#[test]
fn debian_6_1_and_6_12_load_attach_and_agree_with_their_own_counters() {
    matrix(&["6.1", "6.12"]);
}

/// What 5.10 runs today: DNS, CPU throttling, retransmits and drops (by the function
/// that dropped them: no drop reason before 5.17), exact; block IO (the disk is
/// `request.rq_disk`, not `request_queue.disk`) off with tuneprobe's reason, and its
/// check not applicable with that reason.
#[test]
fn debian_5_10_runs_all_but_block_io_and_says_why_that_is_off() {
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
    // Nothing failed; every check of the matrix ran or says why it cannot.
    for c in checks {
        assert_ne!(c["status"], "failed", "{series}: {c}");
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
    ] {
        check(name);
    }
    let probes = result["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 9, "{series}: {probes:?}");
    let off: &[(&str, &str, &[&str])] = if series == "5.10" { OFF_ON_5_10 } else { &[] };
    let mut not_applicable: Vec<&str> = Vec::new();
    for probe in probes {
        let name = probe["name"].as_str().unwrap();
        match off.iter().find(|(program, ..)| *program == name) {
            Some((_, why, checks)) => {
                // Off, with tuneprobe's own reason, and its checks say so.
                assert_eq!(probe["attached"], false, "{series}: {probe}");
                let error = probe["error"].as_str().unwrap();
                assert!(error.contains(why), "{series}: {probe}");
                for name in *checks {
                    let c = check(name);
                    assert_eq!(c["status"], "not_applicable", "{series}: {c}");
                    let reason = c["reason"].as_str().unwrap();
                    assert!(
                        reason.starts_with(&format!("not applicable on {series}: ")),
                        "{series}: {c}"
                    );
                    assert!(reason.contains(error), "{series}: {c}");
                    not_applicable.push(name);
                }
            }
            // Every other program loads and attaches on every kernel of the matrix.
            None => assert_eq!(probe["attached"], true, "{series}: {probe}"),
        }
    }
    for c in checks {
        let name = c["name"].as_str().unwrap();
        if !not_applicable.contains(&name) {
            assert_eq!(c["status"], "passed", "{series}: {c}");
        }
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
    if off.is_empty() {
        let block = check("block_reads_equal_io_stat_rios_with_queue_time");
        assert_eq!(block["observed"]["requests"], 200, "{series}");
    }
}
