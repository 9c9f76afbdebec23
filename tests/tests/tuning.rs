//! `tuneprobe tuning`: per-netns sysctls read inside each pod's namespace and attributed
//! to the pod, cpu quotas per cgroup, and deviations from the guides marked.

use std::{fs, process::Command};

use serde_json::Value;
use tuneprobe_tests::{NetnsPair, PodCgroup, Workload, tuneprobe_binary, tuneprobe_json};

fn setting<'a>(settings: &'a Value, knob: &str) -> &'a Value {
    settings
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["knob"] == knob)
        .unwrap_or_else(|| panic!("no {knob} in {settings}"))
}

#[test]
fn inventory_reads_each_pods_namespace_and_quota() {
    let pair = NetnsPair::new();
    // Inside namespace B only; the host keeps its own value.
    pair.exec(
        &pair.b,
        &["sh", "-c", "echo 1024 > /proc/sys/net/core/somaxconn"],
    );
    pair.exec(
        &pair.b,
        &[
            "sh",
            "-c",
            "echo 65535 > /proc/sys/net/ipv4/tcp_max_syn_backlog",
        ],
    );
    let mut pod = PodCgroup::with_controllers(&["cpu"]);
    let app = pod.container();
    let cpu_dir = app.cpu_dir().to_path_buf();
    if cpu_dir.join("cpu.max").exists() {
        fs::write(cpu_dir.join("cpu.max"), "30000 100000").unwrap();
    } else {
        fs::write(cpu_dir.join("cpu.cfs_quota_us"), "30000").unwrap();
    }
    let mut pause = Workload::spawn(&pair.b, Some(&app), &["pause"]);
    assert_eq!(pause.read_line(), "ready");

    let json = tuneprobe_json(["tuning", "--json"]);

    let inode = NetnsPair::inode(&pair.b);
    let ours = json["netns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["netns"] == inode)
        .unwrap_or_else(|| panic!("namespace B missing: {}", json["netns"]));
    assert_eq!(
        ours["owner"],
        pod.pod_path.as_str(),
        "attributed to the pod living in it"
    );
    let somaxconn = setting(&ours["settings"], "net.core.somaxconn");
    assert_eq!(somaxconn["value"], "1024");
    assert_eq!(somaxconn["deviates"], true);
    assert_eq!(somaxconn["recommended"], ">= 65535");
    assert_eq!(
        setting(&ours["settings"], "net.ipv4.tcp_max_syn_backlog")["deviates"],
        false
    );

    // The host's namespace shows the host's value, not B's.
    let host_value = fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
    let host = json["netns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["owner"] == "/")
        .unwrap();
    assert_eq!(
        setting(&host["settings"], "net.core.somaxconn")["value"],
        host_value.trim()
    );

    let quota = json["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cgroup_path"] == app.path.as_str())
        .unwrap_or_else(|| panic!("no quota for the container: {}", json["cgroups"]));
    assert_eq!(
        setting(&quota["settings"], "cpu.max")["value"],
        "30000 100000"
    );
    assert!(
        json["node"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["knob"] == "net.core.netdev_max_backlog")
    );
    assert!(
        json["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| !d["settings"].as_array().unwrap().is_empty())
    );

    let table = Command::new(tuneprobe_binary())
        .arg("tuning")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!("netns {inode} ({})", pod.pod_path)),
        "{table}"
    );
    assert!(table.contains("differs from the guides"), "{table}");
}
