//! The release binary end to end: `snapshot` prints `ready`, then the documented JSON;
//! bad arguments are one line and exit code 2; a missing BTF is a clear error.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::Value;
use tuneprobe_tests::{ADDR_B, NetnsPair, PodCgroup, Workload, tuneprobe_binary, unique};

#[test]
fn snapshot_json_reports_probes_and_the_pod_that_dropped() {
    const N: u64 = 25;
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let app = pod.container();
    // The pod's one process lives in namespace B: a receiver that never reads.
    let mut sink = Workload::spawn(
        &pair.b,
        Some(&app),
        &["udp-sink", &format!("{ADDR_B}:7001"), "4096"],
    );
    assert_eq!(sink.read_line(), "ready");
    // The kubelet's log directories name the pod and its container.
    let logs = std::env::temp_dir().join(unique("tuneprobe-logs-"));
    std::fs::create_dir_all(logs.join(format!("pods/shop_api-7f9c4_{}/server", pod.uid))).unwrap();
    std::fs::create_dir_all(logs.join("containers")).unwrap();
    let log = format!("api-7f9c4_shop_server-{}.log", app.container_id);
    std::fs::write(logs.join("containers").join(log), "").unwrap();
    let pod_logs_dir = logs.join("pods");

    let mut child = Command::new(tuneprobe_binary())
        .args(["snapshot", "--for", "3s", "--json", "--pod-logs-dir"])
        .arg(&pod_logs_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tuneprobe");
    // Wait for `ready` on stderr before making traffic, with a bound.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("tuneprobe printed nothing on stderr");
    assert!(ready.contains("ready"), "first stderr line: {ready}");

    Workload::spawn(
        &pair.a,
        None,
        &["udp-send", &format!("{ADDR_B}:9"), &N.to_string(), "50"],
    )
    .wait(Duration::from_secs(20));
    Workload::spawn(
        &pair.a,
        None,
        &["udp-send", &format!("{ADDR_B}:7001"), "100", "1000"],
    )
    .wait(Duration::from_secs(20));
    let out = child.wait_with_output().expect("tuneprobe output");
    let _ = std::fs::remove_dir_all(&logs);
    assert!(out.status.success(), "exit {}", out.status);
    let json: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");

    let duration = json["duration_s"].as_f64().unwrap();
    assert!((3.0..6.0).contains(&duration), "{duration}");
    let probes = json["probes"].as_array().unwrap();
    let signals = [
        "tcp_retransmit",
        "drops",
        "dns",
        "block_io",
        "cpu_throttle",
        "tcp_connections",
    ];
    for probe in probes {
        assert_eq!(probe["attached"], true, "{probe}");
        assert!(probe["error"].is_null());
        assert!(
            signals.contains(&probe["signal"].as_str().unwrap()),
            "{probe}"
        );
    }
    for signal in signals {
        assert!(
            probes.iter().any(|p| p["signal"] == signal),
            "no probe for {signal}"
        );
    }
    assert_eq!(json["map_overflows"]["DROPS"], 0);

    let workload = json["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["cgroup_id"] == pod.pod_id())
        .unwrap_or_else(|| panic!("no workload for the pod in {json:#}"));
    assert_eq!(workload["pod_uid"], pod.uid.as_str());
    assert!(workload["container_id"].is_null());
    assert_eq!(workload["cgroup_path"], pod.pod_path.as_str());
    assert_eq!(workload["netns"], NetnsPair::inode(&pair.b));
    assert_eq!(workload["drops"]["by_reason"]["NO_SOCKET"], N);
    assert_eq!(workload["drops"]["total"], N);
    assert_eq!(workload["tcp"]["retransmits"], 0);
    assert_eq!(workload["tcp"]["retransmitted_segments"], 0);
    assert_eq!(workload["tcp"]["failed_retransmits"], 0);
    assert_eq!(workload["namespace"], "shop");
    assert_eq!(workload["pod"], "api-7f9c4");
    assert!(workload["container"].is_null());

    // The receiver's own drops belong to its container, named too.
    let container = json["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["cgroup_id"] == app.cgroup_id)
        .unwrap_or_else(|| panic!("no workload for the container in {json:#}"));
    assert!(
        container["drops"]["by_reason"]["SOCKET_RCVBUFF"]
            .as_u64()
            .unwrap()
            > 50
    );
    assert_eq!(container["container_id"], app.container_id.as_str());
    assert_eq!(
        (
            &container["namespace"],
            &container["pod"],
            &container["container"]
        ),
        (
            &Value::from("shop"),
            &Value::from("api-7f9c4"),
            &Value::from("server")
        )
    );
}

#[test]
fn table_output_is_the_default() {
    let out = Command::new(tuneprobe_binary())
        .args(["snapshot", "--for", "300ms"])
        .output()
        .expect("run tuneprobe");
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("tuneprobe snapshot over"), "{table}");
    assert!(
        table.contains("probe kfree_skb") && table.contains("attached"),
        "{table}"
    );
}

#[test]
fn bad_arguments_are_one_line_and_exit_2() {
    for args in [
        vec!["snapshot"],
        vec!["snapshot", "--for", "soon"],
        vec!["snapshot", "--for", "0s"],
        vec!["snapshot", "--for", "1s", "--bogus"],
        vec!["no-such-command"],
    ] {
        let out = Command::new(tuneprobe_binary())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("tuneprobe: "), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// `verify --exec` without anything to judge, and a prediction it cannot test: one line
/// that names what is missing or wrong.
#[test]
fn verify_argument_errors_name_what_is_missing_or_wrong() {
    for (args, says) in [
        (
            &["verify", "--exec", "true"][..],
            "the following required arguments were not provided: <--signal <SIGNAL>|--expect \
             <MEASURE:lower|higher[:MIN_EFFECT]>>",
        ),
        (
            &["verify", "--apply", "a=1", "--expect", "srtt_ms:lower:half"],
            "minimum effect \"half\" is not a percentage of the before median, such as 50%",
        ),
        (
            &["verify", "--plan", "advice.json", "--apply", "a=1"],
            "the argument '--plan <FILE|->' cannot be used with '--apply <KNOB=VALUE>'",
        ),
    ] {
        let out = Command::new(tuneprobe_binary())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// Where a knob lives comes from the knob table: a mount option is refused with what to
/// do instead, before anything is loaded or changed.
#[test]
fn verify_refuses_to_apply_a_mount_option_and_says_how_to_change_it() {
    let out = Command::new(tuneprobe_binary())
        .args(["verify", "--apply", "noatime=on", "--kube-api", "none"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("noatime is a mount option"), "{stderr}");
    assert!(
        stderr.contains("--exec 'mount -o remount,noatime"),
        "{stderr}"
    );
    assert!(!stderr.contains("ready"), "{stderr}");
}

#[test]
fn missing_btf_names_the_file_and_what_to_do() {
    let out = Command::new(tuneprobe_binary())
        .args(["snapshot", "--for", "1s", "--btf", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/vmlinux"), "{stderr}");
    assert!(stderr.contains("CONFIG_DEBUG_INFO_BTF"), "{stderr}");
    assert!(!stderr.contains("ready"), "{stderr}");
}

#[test]
fn without_privileges_it_says_what_it_needs() {
    // `nobody`, no capabilities: the first map creation fails with EPERM.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tuneprobe_binary())
        .args(["snapshot", "--for", "1s"])
        .output()
        .expect("setpriv (util-linux) runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(
        stderr.contains("run as root") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
    assert!(!stderr.contains("ready"), "{stderr}");
}

/// Capability bits from a `/proc/PID/status` line such as `CapEff:\t0000000000280000`.
fn capability_line(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

#[test]
fn serve_keeps_only_what_it_needs_after_attaching() {
    const CAP_SYS_PTRACE: u64 = 1 << 19;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(tuneprobe_binary())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--kube-api", "none"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines().map_while(Result::ok);
    let ready = lines.by_ref().any(|l| l.starts_with("ready"));
    thread::spawn(move || lines.for_each(drop));
    // Let the ticker and a scrape start their threads: every one must be reduced.
    let scrape = || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    let metrics = if ready { scrape() } else { String::new() };
    thread::sleep(Duration::from_millis(1500));
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "serve never got ready");
    assert!(metrics.starts_with("HTTP/1.0 200"), "{metrics}");
    assert!(metrics.contains("tuneprobe_probe_attached"), "{metrics}");
    assert!(!tasks.is_empty());
    for status in &tasks {
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                capability_line(status, set),
                CAP_SYS_PTRACE | CAP_SYS_ADMIN,
                "{set} of a thread: {status}"
            );
        }
        assert_eq!(capability_line(status, "CapInh"), 0);
        assert_eq!(capability_line(status, "CapAmb"), 0);
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    }
}
