//! `tuneprobe verify --ab` on the real kernel: two lab pods of one workload, each in its
//! own network namespace and running the same connect load, side by side. One
//! namespace's `net.ipv4.ip_local_port_range` is cut to 10 ports (a per-namespace
//! sysctl, set inside it): its connects run out of local ports, the other's do not, and
//! the A/B judges the wide range improved. With the same range on both sides there is
//! no knob to judge by, and forced with `--signal` there is no significant change.

use std::process::Command;

use serde_json::Value;
use tuneprobe_tests::{ADDR_B, NetnsPair, PodCgroup, Workload, tuneprobe_binary, tuneprobe_json};

/// The tests run one at a time: another's connect load on the same 2 cores would slow
/// this one's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const KNOB: &str = "net.ipv4.ip_local_port_range";
const NARROW: &str = "40000 40009";

/// One lab pod: a namespace pair (the pod's namespace `a`, a sink in `b`), a pod cgroup
/// with one container connecting to the sink every 20 ms, each connection closed at
/// once (so that each holds its local port in TIME_WAIT for a minute).
struct Pod {
    pair: NetnsPair,
    cgroup: PodCgroup,
    _sink: Workload,
    _load: Workload,
}

impl Pod {
    fn new(port_range: Option<&str>) -> Self {
        let pair = NetnsPair::new();
        if let Some(range) = port_range {
            pair.exec(&pair.a, &["sysctl", "-qw", &format!("{KNOB}={range}")]);
        }
        let mut cgroup = PodCgroup::new();
        let container = cgroup.container();
        let target = format!("{ADDR_B}:6300");
        let mut sink = Workload::spawn(&pair.b, None, &["tcp-sink", &target]);
        assert_eq!(sink.read_line(), "ready");
        let load = Workload::spawn(
            &pair.a,
            Some(&container),
            &["tcp-connect-loop", &target, "20"],
        );
        Self {
            pair,
            cgroup,
            _sink: sink,
            _load: load,
        }
    }

    fn selector(&self) -> String {
        format!("uid={}", self.cgroup.uid)
    }

    /// The range as the namespace has it, with the spaces the inventory shows.
    fn port_range(&self) -> String {
        let value = self.pair.exec(&self.pair.a, &["sysctl", "-n", KNOB]);
        value.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

fn ab_args(treated: &Pod, control: &Pod, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "verify",
        "--ab",
        "--treated",
        &treated.selector(),
        "--control",
        &control.selector(),
        "--for",
        "12s",
        "--interval",
        "1s",
        "--json",
        "--kube-api",
        "none",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(ToString::to_string));
    args
}

fn connect_verdict(report: &Value) -> &Value {
    let verdicts = report["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 1, "{report:#}");
    assert_eq!(verdicts[0]["signal"], "connect_failure_ratio", "{report:#}");
    &verdicts[0]
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn a_wide_local_port_range_beside_a_narrow_one_is_judged_improved() {
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let wide = Pod::new(None);
    let narrow = Pod::new(Some(NARROW));
    assert_eq!(narrow.port_range(), NARROW);
    let report = tuneprobe_json(ab_args(&wide, &narrow, &[]));

    assert_eq!(
        report["differing_knobs"],
        serde_json::json!([KNOB]),
        "{report:#}"
    );
    assert_eq!(report["treated"]["knobs"][KNOB], wide.port_range());
    assert_eq!(report["control"]["knobs"][KNOB], NARROW);
    assert_eq!(report["treated"]["selector"], wide.selector());
    let workloads = |group: &str| report[group]["workloads"].as_array().unwrap().clone();
    assert_eq!(workloads("treated").len(), 1, "{report:#}");
    assert_eq!(workloads("treated")[0]["pod_uid"], wide.cgroup.uid.as_str());
    assert_eq!(
        workloads("control")[0]["pod_uid"],
        narrow.cgroup.uid.as_str()
    );
    assert_eq!(report["intervals"], 12);

    let v = connect_verdict(&report);
    assert_eq!(v["verdict"], "improved", "{v:#}");
    // Every connect of the narrow range fails once its 10 ports wait in TIME_WAIT (long
    // before the window starts); none of the wide range's do.
    assert_eq!(number(&v["treated"]), 0.0, "{v:#}");
    assert_eq!(number(&v["control"]), 1.0, "{v:#}");
    assert_eq!(number(&v["effect"]), -1.0, "{v:#}");
    assert!(number(&v["ci95"][1]) < -0.9, "{v:#}");
    assert!(number(&v["p_value"]) < 0.01, "{v:#}");
    assert!(v["intervals"].as_u64().unwrap() >= 11, "{v:#}");
    // The same load on both sides: one connect every 20 ms.
    let load = number(&v["load_ratio"]);
    assert!((0.67..=1.5).contains(&load), "{v:#}");
    assert!(v["notes"].as_array().unwrap().is_empty(), "{v:#}");
}

#[test]
fn pods_with_the_same_range_differ_in_no_knob_and_show_no_change() {
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let one = Pod::new(Some(NARROW));
    let other = Pod::new(Some(NARROW));

    let out = Command::new(tuneprobe_binary())
        .args(ab_args(&one, &other, &[]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the groups differ in no knob of tuneprobe's table (")
            && stderr.contains(&format!("{KNOB}={NARROW}"))
            && stderr.contains("give --signal to compare them anyway"),
        "{stderr}"
    );

    let report = tuneprobe_json(ab_args(
        &one,
        &other,
        &["--signal", "connect_failure_ratio"],
    ));
    assert_eq!(report["differing_knobs"], serde_json::json!([]));
    assert_eq!(report["treated"]["knobs"][KNOB], NARROW);
    assert_eq!(report["control"]["knobs"][KNOB], NARROW);
    let notes = report["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .unwrap()
            .starts_with("the groups differ in no knob")),
        "{report:#}"
    );
    let v = connect_verdict(&report);
    assert_eq!(v["verdict"], "no significant change", "{v:#}");
    assert_eq!((number(&v["treated"]), number(&v["control"])), (1.0, 1.0));
    assert_eq!(number(&v["effect"]), 0.0, "{v:#}");
}
