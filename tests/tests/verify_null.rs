//! Changes that cannot matter must not be called improvements: the client namespace's
//! `net.ipv4.tcp_keepalive_time` toggled 20 times while a pod resolves names over UDP
//! against a server answering after 20 ms (a keepalive timer cannot touch a UDP query),
//! judged on DNS latency by `verify --watch --signal`.
//!
//! A test binary of its own, so no other test's load shifts latencies between windows.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tuneprobe_tests::{NetnsPair, PodCgroup, tuneprobe_binary};

#[test]
fn twenty_changes_without_effect_are_judged_no_significant_change() {
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let client = pod.container();
    let (_server, _queries) = tuneprobe_tests::dns_with_a_20ms_server(&pair, &client);

    let mut watch = Command::new(tuneprobe_binary())
        .args([
            "verify",
            "--watch",
            "--signal",
            "dns_latency_ms",
            "--before",
            "2s",
            "--after",
            "2s",
            "--interval",
            "250ms",
            "--for",
            "120s",
            "--json",
            "--kube-api",
            "none",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(watch.stderr.take().unwrap());
    let mut stderr_lines = stderr.lines().map_while(Result::ok);
    assert!(
        stderr_lines.by_ref().any(|l| l.starts_with("ready")),
        "verify --watch never got ready"
    );
    thread::spawn(move || stderr_lines.for_each(drop));
    let (reports, received) = mpsc::channel::<Value>();
    let stdout = BufReader::new(watch.stdout.take().unwrap());
    thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if let Ok(report) = serde_json::from_str(&line) {
                let _ = reports.send(report);
            }
        }
    });

    // A full before window first, then a change every 2.5 s: 7200 <-> 7201 seconds.
    thread::sleep(Duration::from_millis(2500));
    let scope = format!("netns:{}", NetnsPair::inode(&pair.a));
    let mut finals: Vec<Value> = Vec::new();
    let mut interim = 0;
    let mut take = |report: Value, finals: &mut Vec<Value>| {
        if report["change"]["scope"] == scope.as_str()
            && report["change"]["knob"] == "net.ipv4.tcp_keepalive_time"
        {
            if report["final"] == true {
                finals.push(report);
            } else {
                interim += 1;
            }
        }
    };
    for i in 0..20 {
        let value = if i % 2 == 0 { "7201" } else { "7200" };
        pair.exec(
            &pair.a,
            &[
                "sh",
                "-c",
                &format!("echo {value} > /proc/sys/net/ipv4/tcp_keepalive_time"),
            ],
        );
        let until = Instant::now() + Duration::from_millis(2500);
        while let Ok(report) =
            received.recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            take(report, &mut finals);
        }
    }
    // The last change's after window.
    let deadline = Instant::now() + Duration::from_secs(10);
    while finals.len() < 20 && Instant::now() < deadline {
        if let Ok(report) = received.recv_timeout(Duration::from_millis(200)) {
            take(report, &mut finals);
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();

    assert_eq!(finals.len(), 20, "one final report per change");
    assert!(
        interim > 0,
        "interim verdicts while the after windows filled"
    );
    let mut verdicts = Vec::new();
    for report in &finals {
        assert_eq!(report["change"]["owner"], pod.pod_path.as_str());
        let ours: Vec<&Value> = report["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["cgroup_path"] == client.path.as_str())
            .collect();
        assert_eq!(ours.len(), 1, "{report:#}");
        assert_eq!(ours[0]["signal"], "dns_latency_ms");
        let before = ours[0]["before"].as_f64().unwrap();
        assert!((19.0..25.0).contains(&before), "{report:#}");
        verdicts.push(ours[0]["verdict"].as_str().unwrap().to_string());
    }
    let effects = verdicts
        .iter()
        .filter(|v| *v != "no significant change")
        .count();
    assert!(
        effects <= 2,
        "{effects} of 20 no-effect changes judged as effects: {verdicts:?}"
    );
}
