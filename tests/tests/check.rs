//! `tuneprobe check` end to end: every signal `ok` on this kernel, `partial` and `off`
//! with the reason when the BTF lacks what a program needs, and exit 1 with a clear
//! message when there is no BTF at all.

use std::{path::PathBuf, process::Command};

use serde_json::Value;
use tuneprobe_tests::{tuneprobe_binary, unique};

/// In the registry's order (`probe-user/src/signals/mod.rs`).
const SIGNALS: [&str; 6] = [
    "tcp_retransmit",
    "drops",
    "dns",
    "block_io",
    "cpu_throttle",
    "tcp_connections",
];

fn check(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(tuneprobe_binary())
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn signal<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["signals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["signal"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

#[test]
fn every_signal_is_ok_on_this_kernel() {
    let (code, stdout, stderr) = check(&["--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(report["kernel"], release.trim());
    assert_eq!(report["btf"]["source"], "vmlinux");
    assert_eq!(report["btf"]["path"], "/sys/kernel/btf/vmlinux");
    let names: Vec<&str> = report["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["signal"].as_str().unwrap())
        .collect();
    assert_eq!(names, SIGNALS);
    for s in report["signals"].as_array().unwrap() {
        assert_eq!(s["status"], "ok", "{s:#}");
        let programs = s["programs"].as_array().unwrap();
        assert!(!programs.is_empty(), "{s:#}");
        for p in programs {
            assert!(p["name"].is_string(), "{p:#}");
            assert_eq!(p["attached"], true, "{p:#}");
            assert!(p["error"].is_null(), "{p:#}");
        }
    }

    let (code, table, stderr) = check(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        table.starts_with(&format!("kernel  {}", release.trim())),
        "{table}"
    );
    assert!(table.contains("/sys/kernel/btf/vmlinux"), "{table}");
    for name in SIGNALS {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && l.contains(" ok ")),
            "{name}: {table}"
        );
    }
}

/// The kernel's BTF with the named types renamed in its string table (same length, so
/// every offset stays): to the loader they are missing.
fn btf_without(renames: &[(&str, &str)]) -> PathBuf {
    let mut btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
    for (name, other) in renames {
        assert_eq!(name.len(), other.len());
        let needle = format!("\0{name}\0").into_bytes();
        let at = btf
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap_or_else(|| panic!("{name} not in the kernel's BTF"));
        btf[at + 1..at + 1 + name.len()].copy_from_slice(other.as_bytes());
    }
    let path = std::env::temp_dir().join(unique("tuneprobe-check-btf-"));
    std::fs::write(&path, btf).unwrap();
    path
}

#[test]
fn a_btf_without_a_tracepoint_turns_its_programs_off_with_the_reason() {
    // block_io keeps three of its four programs; tcp_retransmit has only the one.
    let btf = btf_without(&[
        ("btf_trace_block_rq_complete", "btf_trace_block_rq_complexe"),
        (
            "btf_trace_tcp_retransmit_skb",
            "btf_trace_tcp_retransmit_skX",
        ),
    ]);
    let btf_arg = btf.to_str().unwrap();
    let (code, stdout, stderr) = check(&["--json", "--btf", btf_arg]);
    let (table_code, table, _) = check(&["--btf", btf_arg]);
    std::fs::remove_file(&btf).unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["btf"]["source"], "--btf");
    assert_eq!(report["btf"]["path"], btf_arg);

    let block = signal(&report, "block_io");
    assert_eq!(block["status"], "partial", "{block:#}");
    for p in block["programs"].as_array().unwrap() {
        if p["name"] == "block_rq_complete" {
            assert_eq!(p["attached"], false);
            let reason = p["error"].as_str().unwrap();
            assert!(
                reason.contains("no tracepoint named `block_rq_complete`"),
                "{reason}"
            );
        } else {
            assert_eq!(p["attached"], true, "{p:#}");
        }
    }
    let tcp = signal(&report, "tcp_retransmit");
    assert_eq!(tcp["status"], "off", "{tcp:#}");
    let reason = tcp["programs"][0]["error"].as_str().unwrap();
    assert!(reason.contains("tcp_retransmit_skb"), "{reason}");
    for name in ["drops", "cpu_throttle", "dns"] {
        assert_eq!(signal(&report, name)["status"], "ok");
    }

    assert_eq!(table_code, Some(0));
    assert!(table.contains("(--btf)"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("block_io") && l.contains("partial")),
        "{table}"
    );
    assert!(
        table.contains("  off: block_rq_complete: kernel BTF has no tracepoint named"),
        "{table}"
    );
}

#[test]
fn a_missing_btf_is_exit_1_with_what_to_do() {
    let (code, stdout, stderr) = check(&["--btf", "/nonexistent/vmlinux"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.starts_with("tuneprobe: error: "), "{stderr}");
    assert!(stderr.contains("/nonexistent/vmlinux"), "{stderr}");
    assert!(stderr.contains("CONFIG_DEBUG_INFO_BTF"), "{stderr}");
}
