//! Block IO latency: fio on a loop device, the reader's blkio cgroup throttled to 100
//! read IOPS on the loop's backing device; compared with fio's own counts and latency.

use std::{fs, path::Path, time::Duration};

use serde_json::Value;
use tuneprobe::{Collector, LoadOptions, Probe, signals::block_io::BlockReport};
use tuneprobe_tests::{Container, LoopDevice, PodCgroup, Workload};

fn throttle_reads(container: &Container, device: &str, iops: u32) {
    let v1 = "blkio.throttle.read_iops_device";
    match container.dirs.iter().find(|d| d.join(v1).exists()) {
        Some(dir) => fs::write(dir.join(v1), format!("{device} {iops}")).unwrap(),
        None => fs::write(
            container.dir_with("io.max").join("io.max"),
            format!("{device} riops={iops}"),
        )
        .unwrap(),
    }
}

/// fio's view of one job: completed IOs and mean completion latency in ms.
struct FioResult {
    ios: u64,
    clat_mean_ms: f64,
}

fn fio(container: &Container, device: &str, rw: &str, seconds: u32) -> FioResult {
    let args = [
        "--name=tuneprobe",
        &format!("--filename={device}"),
        "--direct=1",
        &format!("--rw={rw}"),
        "--bs=4k",
        "--iodepth=1",
        "--ioengine=psync",
        &format!("--runtime={seconds}"),
        "--time_based",
        "--output-format=json",
    ];
    let out = Workload::spawn_program(None, Some(container), Path::new("fio"), &args)
        .wait(Duration::from_secs(u64::from(seconds) + 30));
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("fio JSON: {e}: {out}"));
    let direction = if rw.contains("write") {
        "write"
    } else {
        "read"
    };
    let job = &json["jobs"][0][direction];
    FioResult {
        ios: job["total_ios"].as_u64().expect("total_ios"),
        clat_mean_ms: job["clat_ns"]["mean"].as_f64().expect("clat_ns.mean") / 1e6,
    }
}

fn entry<'a>(
    snapshot: &'a tuneprobe::Snapshot,
    container: &Container,
    device: &str,
    op: &str,
) -> &'a BlockReport {
    snapshot
        .workloads
        .iter()
        .filter(|w| w.identity.cgroup_path.as_deref() == Some(container.path.as_str()))
        .flat_map(|w| &w.signals.block)
        .find(|b| b.device == device && b.op == op)
        .unwrap_or_else(|| {
            panic!(
                "no {op} on {device} for {}: {:#?}",
                container.path, snapshot.workloads
            )
        })
}

#[test]
fn throttled_reads_show_in_the_loop_devices_service_time_for_that_cgroup_only() {
    let mut disk = LoopDevice::new(64);
    let mut pod = PodCgroup::with_controllers(&["blkio"]);
    let throttled = pod.container();
    let free = pod.container();
    let writer = pod.container();
    throttle_reads(&throttled, &disk.backing_device(), 100);
    // A scheduler on our own loop device makes requests queue (insert -> issue).
    disk.set_scheduler("mq-deadline");

    let probe = Probe::load(&LoadOptions::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let collector = Collector::start(probe).unwrap();
    let slow = fio(&throttled, &disk.device, "randread", 3);
    let fast = fio(&free, &disk.device, "randread", 1);
    let writes = fio(&writer, &disk.device, "randwrite", 1);
    let snapshot = collector.finish().unwrap();

    let slow_entry = entry(&snapshot, &throttled, disk.name(), "read");
    eprintln!(
        "throttled: {slow_entry:?}; fio: {} IOs, clat mean {} ms",
        slow.ios, slow.clat_mean_ms
    );
    let mean = slow_entry.service_ms.mean.unwrap();
    assert!(
        (mean - slow.clat_mean_ms).abs() <= 0.1 * slow.clat_mean_ms,
        "service mean {mean} ms vs fio clat mean {} ms",
        slow.clat_mean_ms
    );
    assert!((5.0..20.0).contains(&mean), "100 IOPS means ~10 ms: {mean}");
    assert!(
        slow_entry.requests.abs_diff(slow.ios) * 100 <= 3 * slow.ios,
        "{} requests vs fio's {} IOs",
        slow_entry.requests,
        slow.ios
    );
    assert_eq!(slow_entry.bytes, slow_entry.requests * 4096);
    assert_eq!(slow_entry.scheduler.as_deref(), Some("mq-deadline"));
    // Queued in the scheduler at depth 1: a queue time per request, and a short one.
    let queue = slow_entry
        .queue_ms
        .mean
        .expect("requests went through the scheduler");
    assert!(queue < 1.0, "queue mean {queue} ms");
    assert_eq!(slow_entry.errors, 0);
    // The throttle releases IOs in bursts: most are fast, the tail waits.
    let (p50, p99) = (
        slow_entry.service_ms.p50.unwrap(),
        slow_entry.service_ms.p99.unwrap(),
    );
    assert!(
        p50 < mean && p99 > 3.0 * mean,
        "p50 {p50}, p99 {p99}, mean {mean}"
    );

    let fast_entry = entry(&snapshot, &free, disk.name(), "read");
    assert!(fast_entry.service_ms.mean.unwrap() < 1.0, "{fast_entry:?}");
    assert!(
        fast_entry.requests.abs_diff(fast.ios) * 100 <= 3 * fast.ios,
        "{fast_entry:?} vs {}",
        fast.ios
    );

    // Writes are told apart from reads, and attributed to the writer only.
    let write_entry = entry(&snapshot, &writer, disk.name(), "write");
    assert!(
        write_entry.requests.abs_diff(writes.ios) * 100 <= 3 * writes.ios,
        "{write_entry:?} vs {}",
        writes.ios
    );
    let writer_reads = snapshot
        .workloads
        .iter()
        .filter(|w| w.identity.cgroup_path.as_deref() == Some(writer.path.as_str()))
        .flat_map(|w| &w.signals.block)
        .filter(|b| b.device == disk.name() && b.op == "read")
        .map(|b| b.requests)
        .sum::<u64>();
    assert!(
        writer_reads <= writes.ios / 100,
        "a write job issued {writer_reads} reads"
    );
    let workload = snapshot
        .workloads
        .iter()
        .find(|w| w.identity.cgroup_path.as_deref() == Some(throttled.path.as_str()))
        .unwrap();
    assert_eq!(workload.identity.pod_uid.as_deref(), Some(pod.uid.as_str()));
    assert_eq!(
        workload.identity.container_id.as_deref(),
        Some(throttled.container_id.as_str())
    );
}
