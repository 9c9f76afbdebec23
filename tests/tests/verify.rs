//! `tuneprobe verify` on a real change: a busy container's cpu quota raised from 20 ms to
//! 100 ms per period (throttling improves), and lowered back (it regresses); `--revert`
//! leaves the knob as it was.

use std::{fs, path::Path, process::Command};

use serde_json::Value;
use tuneprobe_tests::{PodCgroup, Workload, testload, tuneprobe_binary, tuneprobe_json};

/// `tuneprobe verify --apply APPLY --cgroup DIR` with short windows and `--revert`.
fn verify(dir: &Path, apply: &str) -> Value {
    let mut args: Vec<std::ffi::OsString> = vec![
        "verify".into(),
        "--apply".into(),
        apply.into(),
        "--cgroup".into(),
    ];
    args.push(dir.into());
    for arg in [
        "--before",
        "3s",
        "--after",
        "3s",
        "--interval",
        "500ms",
        "--revert",
        "--json",
        "--kube-api",
        "none",
    ] {
        args.push(arg.into());
    }
    tuneprobe_json(args)
}

fn verdict_for<'a>(report: &'a Value, path: &str, signal: &str) -> &'a Value {
    report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["cgroup_path"] == path && v["signal"] == signal)
        .unwrap_or_else(|| panic!("no {signal} verdict for {path}: {report:#}"))
}

#[test]
fn raising_a_tight_quota_improves_throttling_and_lowering_it_regresses() {
    let mut pod = PodCgroup::with_controllers(&["cpu"]);
    let app = pod.container();
    let dir = app.cpu_dir().to_path_buf();
    fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
    fs::write(dir.join("cpu.cfs_quota_us"), "20000").unwrap();
    let _busy = Workload::spawn_program(None, Some(&app), &testload(), &["busy", "60000"]);

    let raised = verify(&dir, "cpu.cfs_quota_us=100000");
    assert_eq!(raised["change"]["old"], "20000");
    assert_eq!(raised["change"]["new"], "100000");
    let v = verdict_for(&raised, &app.path, "cpu_throttled_ratio");
    assert_eq!(v["verdict"], "improved", "{v:#}");
    assert!(
        v["before"].as_f64().unwrap() > 0.8,
        "throttled in most periods before: {v}"
    );
    assert!(v["after"].as_f64().unwrap() < 0.1, "{v}");
    assert!(v["p_value"].as_f64().unwrap() < 0.05);
    let effect = v["effect"].as_f64().unwrap();
    let ci = v["ci95"].as_array().unwrap();
    assert!(
        ci[0].as_f64().unwrap() <= effect && effect <= ci[1].as_f64().unwrap(),
        "{v}"
    );
    assert_eq!(
        fs::read_to_string(dir.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "20000",
        "--revert"
    );

    // The other way: from a generous quota to a tight one.
    fs::write(dir.join("cpu.cfs_quota_us"), "100000").unwrap();
    let lowered = verify(&dir, "cpu.cfs_quota_us=20000");
    assert_eq!(
        verdict_for(&lowered, &app.path, "cpu_throttled_ratio")["verdict"],
        "regressed",
        "{lowered:#}"
    );
    assert_eq!(
        fs::read_to_string(dir.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "100000"
    );
}

#[test]
fn an_interrupted_verify_still_puts_the_old_value_back() {
    use std::io::{BufRead as _, BufReader};
    let mut pod = PodCgroup::with_controllers(&["cpu"]);
    let app = pod.container();
    let dir = app.cpu_dir().to_path_buf();
    fs::write(dir.join("cpu.cfs_quota_us"), "30000").unwrap();
    let mut child = Command::new(tuneprobe_binary())
        .args(["verify", "--apply", "cpu.cfs_quota_us=90000", "--cgroup"])
        .arg(&dir)
        .args([
            "--before",
            "1s",
            "--after",
            "60s",
            "--revert",
            "--kube-api",
            "none",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines().map_while(Result::ok);
    assert!(
        lines
            .by_ref()
            .any(|line| line.starts_with("changed cpu.cfs_quota_us")),
        "verify never applied the change"
    );
    assert_eq!(
        fs::read_to_string(dir.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "90000"
    );
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.collect();
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted verify reports failure");
    assert!(
        rest.iter()
            .any(|l| l.contains("reverted cpu.cfs_quota_us to 30000")),
        "{rest:?}"
    );
    assert_eq!(
        fs::read_to_string(dir.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "30000"
    );
}

#[test]
fn removing_a_read_throttle_improves_block_service_time() {
    use tuneprobe_tests::LoopDevice;
    let disk = LoopDevice::new(64);
    let backing = disk.backing_device();
    let mut pod = PodCgroup::with_controllers(&["blkio"]);
    let reader = pod.container();
    // v1 blkio on hybrid nodes, io.max on unified ones: (file, throttle, no throttle).
    let (blkio, file, throttled, unthrottled) = match reader
        .dirs
        .iter()
        .find(|d| d.join("blkio.throttle.read_iops_device").exists())
    {
        Some(dir) => (
            dir.clone(),
            "blkio.throttle.read_iops_device",
            format!("{backing} 100"),
            format!("{backing} 0"),
        ),
        None => (
            reader.dir_with("io.max").to_path_buf(),
            "io.max",
            format!("{backing} riops=100"),
            format!("{backing} riops=max"),
        ),
    };
    fs::write(blkio.join(file), &throttled).unwrap();
    let filename = format!("--filename={}", disk.device);
    let _fio = Workload::spawn_program(
        None,
        Some(&reader),
        Path::new("fio"),
        &[
            "--name=reader",
            &filename,
            "--direct=1",
            "--rw=randread",
            "--bs=4k",
            "--iodepth=1",
            "--ioengine=psync",
            "--runtime=60",
            "--time_based",
            "--output-format=json",
        ],
    );

    let report = verify(&blkio, &format!("{file}={unthrottled}"));
    let v = verdict_for(&report, &reader.path, "block_service_ms");
    assert_eq!(v["verdict"], "improved", "{v:#}");
    assert!(
        v["before"].as_f64().unwrap() > 2.0 * v["after"].as_f64().unwrap(),
        "{v}"
    );
    // --revert: the throttle is back.
    let throttle = fs::read_to_string(blkio.join(file)).unwrap();
    // v1 reads back "MAJ:MIN 100"; v2 lists every limit ("MAJ:MIN rbps=max ... riops=100").
    let limit = throttled.split_whitespace().last().unwrap_or_default();
    assert!(
        throttle.contains(&backing) && throttle.contains(limit),
        "{throttle}"
    );
}
