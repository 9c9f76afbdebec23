//! CPU throttling: a busy loop under a 20 ms / 100 ms quota, checked against the cgroup's
//! own `cpu.stat`; the same loop without a quota is never throttled.

use std::{fs, time::Duration};

use tuneprobe::{
    Collector, LoadOptions, Probe, report::Workload as Report,
    signals::cpu_throttle::cpustat::CpuAccounting,
};
use tuneprobe_tests::{Container, PodCgroup, Workload, testload};

fn set_quota(container: &Container, quota_us: u64, period_us: u64) {
    let dir = container.cpu_dir();
    if dir.join("cpu.max").exists() {
        fs::write(dir.join("cpu.max"), format!("{quota_us} {period_us}")).unwrap();
    } else {
        fs::write(dir.join("cpu.cfs_period_us"), period_us.to_string()).unwrap();
        fs::write(dir.join("cpu.cfs_quota_us"), quota_us.to_string()).unwrap();
    }
}

fn accounting(container: &Container) -> CpuAccounting {
    CpuAccounting::read(container.cpu_dir()).expect("cpu.stat")
}

fn by_path<'a>(workloads: &'a [Report], path: &str) -> Option<&'a Report> {
    workloads
        .iter()
        .find(|w| w.identity.cgroup_path.as_deref() == Some(path))
}

#[test]
fn a_tight_quota_throttles_and_the_probe_agrees_with_cpu_stat() {
    let mut pod = PodCgroup::with_controllers(&["cpu"]);
    let limited = pod.container();
    let free = pod.container();
    set_quota(&limited, 20_000, 100_000);

    let probe = Probe::load(&LoadOptions::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let collector = Collector::start(probe).unwrap();
    let limited_before = accounting(&limited);
    let free_before = accounting(&free);
    let busy_limited =
        Workload::spawn_program(None, Some(&limited), &testload(), &["busy", "2000"]);
    let busy_free = Workload::spawn_program(None, Some(&free), &testload(), &["busy", "2000"]);
    busy_limited.wait(Duration::from_secs(20));
    busy_free.wait(Duration::from_secs(20));
    let limited_delta = accounting(&limited).since(&limited_before);
    let free_delta = accounting(&free).since(&free_before);
    let snapshot = collector.finish().unwrap();

    assert!(
        (15..=25).contains(&limited_delta.throttled_periods),
        "2 s at 20% should throttle ~20 periods: {limited_delta:?}"
    );
    let workload = by_path(&snapshot.workloads, &limited.path).unwrap_or_else(|| {
        panic!(
            "no workload for the limited container: {:#?}",
            snapshot.workloads
        )
    });
    assert_eq!(workload.identity.pod_uid.as_deref(), Some(pod.uid.as_str()));
    assert_eq!(
        workload.identity.container_id.as_deref(),
        Some(limited.container_id.as_str())
    );
    let cpu = workload.signals.cpu.as_ref().expect("cpu report");
    assert_eq!(cpu.quota_ms, Some(20.0));
    assert_eq!(cpu.period_ms, Some(100.0));
    assert!(
        cpu.throttled_periods
            .abs_diff(limited_delta.throttled_periods)
            <= 1,
        "{cpu:?} vs {limited_delta:?}"
    );
    assert!(
        cpu.throttle_events
            .abs_diff(limited_delta.throttled_periods)
            <= 2,
        "events {} vs nr_throttled +{}",
        cpu.throttle_events,
        limited_delta.throttled_periods
    );
    let throttled_ms = limited_delta.throttled_ns as f64 / 1e6;
    assert!(
        (cpu.stall_total_ms - throttled_ms).abs() <= 0.1 * throttled_ms,
        "stalls {} ms vs throttled_time {throttled_ms} ms",
        cpu.stall_total_ms
    );
    // The quota leaves at most 80 ms of a 100 ms period idle: all 80 on an idle
    // machine, less when other work shares the CPU and the 20 ms take longer to use. The
    // median stall sits with the kernel's own mean throttled time per period.
    let p50 = cpu.stall_ms.p50.unwrap();
    let kernel_mean = throttled_ms / limited_delta.throttled_periods.max(1) as f64;
    assert!(
        p50 <= 90.0 && (p50 - kernel_mean).abs() <= 0.25 * kernel_mean,
        "stall median {p50} ms, the kernel's mean {kernel_mean} ms"
    );
    assert!(cpu.stall_ms.max.unwrap() < 200.0, "{:?}", cpu.stall_ms);

    // Negative control: the same loop without a quota.
    assert_eq!(free_delta.throttled_periods, 0, "{free_delta:?}");
    let free_events = by_path(&snapshot.workloads, &free.path)
        .and_then(|w| w.signals.cpu.as_ref())
        .map_or(0, |c| c.throttle_events);
    assert_eq!(free_events, 0);
}
