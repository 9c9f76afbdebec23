//! Bad input for every userspace parser: arbitrary and almost-valid text, JSON and bytes
//! must give an answer or an error, never a panic.

use std::io::Write as _;

use proptest::prelude::*;
use serde_json::Value;
use tuneprobe::{
    kernel::btf::Btf, kernel::devices, signals::cpu_throttle::cpustat::CpuAccounting,
    workloads::cgroup, workloads::kube, workloads::pods, workloads::procfs,
};

/// Text that looks like the real thing often enough to reach the deep branches:
/// kubelet cgroup path pieces, numbers, separators and odd bytes.
fn kubeish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("kubepods".to_string()),
        Just("kubepods.slice".to_string()),
        Just("kubepods-burstable.slice".to_string()),
        Just("kubepods-besteffort-pod".to_string()),
        Just("burstable".to_string()),
        Just("pod".to_string()),
        Just("cri-containerd-".to_string()),
        Just("crio-".to_string()),
        Just("docker-".to_string()),
        Just(".scope".to_string()),
        Just(".slice".to_string()),
        Just("/".to_string()),
        Just("_".to_string()),
        Just("-".to_string()),
        "[0-9a-f]{0,70}",
        "[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}",
        "\\PC{0,8}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

/// `/proc`-style tables: `Group: names` and `Group: values` lines, sometimes ragged.
fn table() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        "[A-Za-z]{1,8}: ([A-Za-z]{1,6} ){0,5}",
        "[A-Za-z]{1,8}: ([0-9-]{1,21} ){0,5}",
        "[a-z_]{1,12} [0-9-]{0,21}",
        "\\PC{0,30}",
    ];
    prop::collection::vec(line, 0..10).prop_map(|l| l.join("\n"))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            Just("metadata".to_string()),
            Just("uid".to_string()),
            Just("name".to_string()),
            Just("namespace".to_string()),
            Just("labels".to_string()),
            Just("status".to_string()),
            Just("containerStatuses".to_string()),
            Just("containerID".to_string()),
            Just("spec".to_string()),
            Just("nodeName".to_string()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn cgroup_paths(path in kubeish(), raw in "\\PC{0,80}") {
        let _ = cgroup::parse_kube_path(&path);
        let _ = cgroup::parse_kube_path(&raw);
    }

    #[test]
    fn mountinfo(text in table(), raw in "\\PC{0,200}") {
        let _ = cgroup::Hierarchies::from_mountinfo(&text);
        let _ = cgroup::Hierarchies::from_mountinfo(&raw);
        let line = format!("30 1 0:26 / /sys/fs/cgroup/{raw} rw - cgroup2 cgroup2 rw\n{text}");
        let _ = cgroup::Hierarchies::from_mountinfo(&line);
    }

    #[test]
    fn netstat(text in table()) {
        let parsed = procfs::parse_netstat(&text);
        // Whatever is parsed is a name-value pair from the input.
        for (group, values) in parsed {
            prop_assert!(text.contains(&group));
            for name in values.keys() {
                prop_assert!(text.contains(name.as_str()));
            }
        }
    }

    #[test]
    fn cpu_files(text in table(), quota in "\\PC{0,24}", period in "[0-9-]{0,24}") {
        let _ = CpuAccounting::parse(&text);
        let _ = tuneprobe::signals::cpu_throttle::cpustat::CpuLimit::parse_v2(&quota);
        let _ = tuneprobe::signals::cpu_throttle::cpustat::CpuLimit::parse_v1(&quota, &period);
        let _ = tuneprobe::signals::cpu_throttle::cpustat::CpuLimit::parse_v2(&format!("{quota} {period}"));
    }

    #[test]
    fn scheduler_file(text in "[a-z\\[\\] -]{0,40}|\\PC{0,40}") {
        if let Some(active) = devices::active_scheduler(&text) {
            let bracketed = format!("[{active}]");
            prop_assert!(text.contains(&bracketed), "{} not in {:?}", bracketed, text);
        }
    }

    #[test]
    fn pod_log_dir_names(name in kubeish(), raw in "\\PC{0,80}") {
        for text in [&name, &raw, &format!("{raw}_{name}_{raw}")] {
            let _ = pods::parse_pod_dir(text);
            let _ = pods::parse_container_log(text);
        }
    }

    #[test]
    fn kubernetes_objects(object in json_value()) {
        let _ = kube::PodMeta::from_object(&object);
        let wrapped = serde_json::json!({"type": "ADDED", "object": object});
        let _ = kube::PodMeta::from_object(&wrapped["object"]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn kubeconfig_files(text in "\\PC{0,300}", yamlish in table()) {
        for content in [text, yamlish.replace(": ", ":\n  - ")] {
            let mut file = tempfile_in_tmp();
            file.1.write_all(content.as_bytes()).unwrap();
            // An error is fine; a panic is not.
            let _ = kube::ApiConfig::from_kubeconfig(&file.0);
            let _ = std::fs::remove_file(&file.0);
        }
    }

    #[test]
    fn btf_garbage(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Btf::parse(&bytes);
        // A valid header in front of garbage reaches the type and string parsers.
        let mut with_header = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        let len = bytes.len() as u32;
        with_header.extend_from_slice(&0u32.to_le_bytes());
        with_header.extend_from_slice(&(len / 2).to_le_bytes());
        with_header.extend_from_slice(&(len / 2).to_le_bytes());
        with_header.extend_from_slice(&(len - len / 2).to_le_bytes());
        with_header.extend_from_slice(&bytes);
        let _ = Btf::parse(&with_header);
    }
}

fn tempfile_in_tmp() -> (std::path::PathBuf, std::fs::File) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "tuneprobe-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&path).unwrap();
    (path, file)
}

/// The running kernel's BTF, cut short and with bytes flipped: an error, never a panic,
/// and the intact file still parses.
#[test]
fn truncated_and_corrupted_real_btf() {
    let real = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    assert!(Btf::parse(&real).is_ok());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    runner
        .run(&(0..real.len(), any::<u64>()), |(cut, seed)| {
            let _ = Btf::parse(&real[..cut]);
            let mut flipped = real.clone();
            // A handful of flips in the header and the first types, where offsets live.
            let mut state = seed | 1;
            for _ in 0..8 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % 4096.min(flipped.len());
                flipped[at] ^= (state >> 32) as u8 | 1;
            }
            let _ = Btf::parse(&flipped);
            Ok(())
        })
        .unwrap();
}
