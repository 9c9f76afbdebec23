//! CPU throttling per workload: `sched_switch` sees tasks switched out because their
//! group's CFS quota ran out and how long they wait to run again; the group's own
//! `cpu.stat` gives its periods and throttled periods, the load it is judged by.

pub mod cpustat;

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use probe_common::{
    LatencyHistogram, ThrottleStats, cpu_throttle::CPU_THROTTLE_MAP, cpu_throttle::ThrottleEvent,
    trace::TraceKind,
};
use serde::Serialize;

use self::cpustat::{CpuAccounting, CpuLimit};
use super::{
    endpoints,
    histogram::{self, LatencySummary},
    record::TraceContext,
    source::{Attribution, Dead, Owner, Settings, Shared, Source, delete_entries},
};
use crate::{
    kernel::{
        layout,
        loader::{Hook, MapError, Probe, ProgramSpec},
    },
    output::{
        families::{Families, IO_BUCKETS, Labels, prometheus_histogram},
        parts::{Cell, Detail, TopColumn, bars, or_dash, truncate_left},
    },
    workloads::{
        cgroup::{CgroupPaths, Hierarchy},
        identity::Identity,
    },
};

/// The kernel fields only this signal reads: `(struct, dotted path)`.
const TASK_PID: layout::FieldPath = ("task_struct", "pid");
const TASK_CGROUPS: layout::FieldPath = ("task_struct", "cgroups");
const CSS_SET_SUBSYS: layout::FieldPath = ("css_set", "subsys");
const CSS_CGROUP: layout::FieldPath = ("cgroup_subsys_state", "cgroup");
/// The throttle flag: per task on 6.18+, else on the task's cfs_rq.
const TASK_THROTTLED: layout::FieldPath = ("task_struct", "throttled");
const TASK_CFS_RQ: layout::FieldPath = ("task_struct", "se.cfs_rq");
/// Non-zero while the cfs_rq or any ancestor is throttled (a child group of a throttled
/// pod has `throttled == 0`).
const CFS_RQ_THROTTLE_COUNT: layout::FieldPath = ("cfs_rq", "throttle_count");
/// Not a field: the `cpu_cgrp_id` value of `enum cgroup_subsys_id`.
const CPU_CGRP_ID: layout::FieldPath = ("cgroup_subsys_id", "cpu_cgrp_id");

/// Metric families the fleet view judges from.
pub const PERIODS: &str = "tuneprobe_cpu_periods_total";
pub const THROTTLED_PERIODS: &str = "tuneprobe_cpu_throttled_periods_total";
pub const THROTTLED_SECONDS: &str = "tuneprobe_cpu_throttled_seconds_total";
pub const USAGE_SECONDS: &str = "tuneprobe_cpu_usage_seconds_total";
pub const STALL_SECONDS: &str = "tuneprobe_cpu_throttle_stall_seconds";

/// The measures of the signal `verify` judges (and `usage`, which its notes quote).
pub mod measures {
    use super::{PERIODS, STALL_SECONDS, THROTTLED_PERIODS, THROTTLED_SECONDS, USAGE_SECONDS};
    use crate::signals::declaration::{Counter, Declaration, Exported};

    pub const THROTTLED_RATIO: Declaration = Declaration::judged(
        "throttled CFS periods per period",
        Some("cfs_periods"),
        "the cgroup's cpu.stat (nr_throttled / nr_periods)",
        Exported::ratio(Counter::of(THROTTLED_PERIODS), Counter::of(PERIODS)),
    );
    pub const THROTTLED_MS_PER_PERIOD: Declaration = Declaration::judged(
        "throttled time per CFS period, ms",
        Some("cfs_periods"),
        "the cgroup's cpu.stat (throttled_time or throttled_usec / nr_periods)",
        Exported::ratio(Counter::of(THROTTLED_SECONDS), Counter::of(PERIODS)).in_ms(),
    );
    pub const STALL_P99_MS: Declaration = Declaration::judged(
        "p99 of how long a throttled task waited to run again, ms",
        Some("throttle_events"),
        "sched_switch of throttled tasks",
        Exported::p99(Counter::of(STALL_SECONDS)),
    );
    pub const USAGE_MS_PER_PERIOD: Declaration = Declaration::judged(
        "CPU time used per CFS period, ms",
        Some("cfs_periods"),
        "cpu.stat usage_usec (v2) or cpuacct.usage (v1)",
        Exported::ratio(Counter::of(USAGE_SECONDS), Counter::of(PERIODS)).in_ms(),
    )
    .context();
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CpuReport {
    /// `null` without a quota.
    pub quota_ms: Option<f64>,
    pub period_ms: Option<f64>,
    /// From the cgroup's `cpu.stat`, over the window.
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ms: f64,
    /// CPU time the cgroup used over the window (`cpu.stat` `usage_usec` on v2,
    /// `cpuacct.usage` on v1); `null` where neither is readable.
    pub usage_ms: Option<f64>,
    /// Throttled switch-outs seen at `sched_switch`.
    pub throttle_events: u64,
    /// How long throttled tasks waited to run again.
    pub stall_ms: LatencySummary,
    pub stall_total_ms: f64,
    #[serde(skip)]
    pub stall_histogram: LatencyHistogram,
}

impl CpuReport {
    /// Throttled periods per period between two cumulative reports, with the periods;
    /// `None` without any.
    pub fn throttled_ratio(before: &Self, after: &Self) -> Option<(f64, f64)> {
        let periods = after.periods.checked_sub(before.periods)?;
        let throttled = after
            .throttled_periods
            .checked_sub(before.throttled_periods)?;
        (periods > 0).then(|| (throttled as f64 / periods as f64, periods as f64))
    }

    /// Throttled time (`cpu.stat`) per CFS period between two cumulative reports, in
    /// ms, with the periods; `None` without any.
    pub fn throttled_ms_per_period(before: &Self, after: &Self) -> Option<(f64, f64)> {
        let periods = after.periods.checked_sub(before.periods)?;
        let throttled = after.throttled_ms - before.throttled_ms;
        (periods > 0 && throttled >= 0.0).then(|| (throttled / periods as f64, periods as f64))
    }

    /// CPU time used per CFS period between two cumulative reports, in ms, with the
    /// periods; `None` without any or without a usage.
    pub fn usage_ms_per_period(before: &Self, after: &Self) -> Option<(f64, f64)> {
        let periods = after.periods.checked_sub(before.periods)?;
        let used = after.usage_ms? - before.usage_ms.unwrap_or(0.0);
        (periods > 0 && used >= 0.0).then(|| (used / periods as f64, periods as f64))
    }

    /// Periods and throttled periods between two cumulative reports (all of `after`'s
    /// without an earlier one).
    pub fn periods_since(before: Option<&Self>, after: &Self) -> (u64, u64) {
        match before {
            Some(b) => (
                after.periods.saturating_sub(b.periods),
                after.throttled_periods.saturating_sub(b.throttled_periods),
            ),
            None => (after.periods, after.throttled_periods),
        }
    }
}

/// The cpu hierarchy's view of one cgroup with a CFS quota.
#[derive(Debug, Clone, Copy)]
struct CpuWatch {
    first: CpuAccounting,
    last: CpuAccounting,
    limit: CpuLimit,
}

#[derive(Default)]
pub struct CpuThrottle {
    /// cpu cgroups with a quota, by path.
    watch: HashMap<String, CpuWatch>,
    /// `cpu.stat` at the window's start of the cpu cgroups that had no quota then
    /// (`None` before the first scan): a quota set later counts from there, and a
    /// cgroup created since counts from zero, as its counters do.
    at_start: Option<HashMap<String, CpuAccounting>>,
}

impl Source for CpuThrottle {
    const NAME: &'static str = "cpu_throttle";
    const TRACE_NAME: &'static str = "throttle";
    const LAYOUT: Option<layout::Resolve> = Some(layout);
    const PROGRAMS: &'static [ProgramSpec] = &[ProgramSpec {
        name: "sched_switch",
        signal: Self::NAME,
        // (preempt, prev, next[, prev_state])
        hook: Hook::BtfTracePoint {
            tracepoint: "sched_switch",
            min_args: 3,
        },
        needs: &[
            TASK_PID,
            TASK_CGROUPS,
            CSS_SET_SUBSYS,
            CPU_CGRP_ID,
            CSS_CGROUP,
            TASK_THROTTLED,
            layout::CGROUP_KN,
            layout::KERNFS_NODE_ID,
        ],
    }];
    type Counters = HashMap<u64, ThrottleStats>;
    type Section = Option<Box<CpuReport>>;

    fn new(_settings: &Settings) -> Self {
        Self::default()
    }

    fn read(probe: &Probe) -> Result<Self::Counters, MapError> {
        probe.read_hash(CPU_THROTTLE_MAP)
    }

    fn cgroups(counters: &Self::Counters) -> Vec<(Hierarchy, u64)> {
        counters.keys().map(|&id| (Hierarchy::Cpu, id)).collect()
    }

    /// Starts following `cpu.stat` of cgroups with a quota as they appear.
    fn tick(&mut self, _probe: &mut Probe, paths: &mut CgroupPaths) -> Result<(), MapError> {
        paths.refresh();
        let root = paths.root().to_path_buf();
        // v1 keeps cpuacct in a hierarchy of its own beside cpu: the same path there.
        let cpuacct_root = root.parent().map(|p| p.join("cpuacct"));
        let known: Vec<String> = paths.known().map(|(_, p)| p.to_string()).collect();
        let first_scan = self.at_start.is_none();
        let at_start = self.at_start.get_or_insert_with(HashMap::new);
        for path in known {
            let dir = join(&root, &path);
            let cpuacct = cpuacct_root.as_ref().map(|r| join(r, &path));
            let read = || CpuAccounting::read_with_usage(&dir, cpuacct.as_deref());
            if let Some(watch) = self.watch.get_mut(&path) {
                if let Some(now) = read() {
                    watch.last = now;
                }
                // A limit changes in place (a resize, `verify --apply`): report the
                // current one.
                if let Some(limit) = CpuLimit::read(&dir) {
                    watch.limit = limit;
                }
                continue;
            }
            // Checked again every tick: a quota may be set after the cgroup appears
            // (runtimes create, then configure) or changed later (in-place resize).
            let (Some(limit), Some(now)) = (CpuLimit::read(&dir), read()) else {
                continue;
            };
            if limit.quota_us.is_none() {
                if first_scan {
                    at_start.insert(path, now);
                }
                continue;
            }
            // Counted from the window's start, not from the tick that noticed the quota:
            // a container is throttled hardest in its first second, before that tick.
            let first = if first_scan {
                now
            } else {
                at_start.remove(&path).unwrap_or_default()
            };
            self.watch.insert(
                path,
                CpuWatch {
                    first,
                    last: now,
                    limit,
                },
            );
        }
        Ok(())
    }

    fn collect_garbage(
        &mut self,
        probe: &mut Probe,
        now: &Self::Counters,
        baseline: &mut Self::Counters,
        dead: &Dead,
    ) -> Result<Vec<(&'static str, u64)>, MapError> {
        Ok(vec![delete_entries::<_, ThrottleStats, _>(
            probe,
            CPU_THROTTLE_MAP,
            now,
            baseline,
            |&id| dead.cgroup_gone(Hierarchy::Cpu, id),
        )?])
    }

    fn forget(&mut self, hierarchy: Hierarchy, path: &str) {
        if hierarchy == Hierarchy::Cpu {
            self.watch.remove(path);
            if let Some(at_start) = self.at_start.as_mut() {
                at_start.remove(path);
            }
        }
    }

    fn report(
        &self,
        _probe: &Probe,
        now: &Self::Counters,
        baseline: &Self::Counters,
        _shared: &Shared,
        out: &mut dyn Attribution<Option<Box<CpuReport>>>,
    ) {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for (&id, stats) in now {
            let before = baseline.get(&id).copied().unwrap_or(ThrottleStats::ZERO);
            let events = stats.events.saturating_sub(before.events);
            if events == 0 {
                continue;
            }
            let stall = histogram::since(&stats.stall, &before.stall);
            let slot = out.slot(Owner::Cgroup {
                hierarchy: Hierarchy::Cpu,
                id,
                netns: None,
            });
            let cpu = slot.section.get_or_insert_with(Box::default);
            cpu.throttle_events += events;
            cpu.stall_ms = LatencySummary::of(&stall);
            cpu.stall_total_ms = histogram::round_ms(stall.sum_ns as f64 / 1e6);
            cpu.stall_histogram = stall;
            if let Some(path) = slot.path {
                seen.insert(path.to_string());
            }
        }
        for (path, watch) in &self.watch {
            let window = watch.last.since(&watch.first);
            if window.periods == 0 && !seen.contains(path) {
                continue;
            }
            let owner = Owner::Path {
                hierarchy: Hierarchy::Cpu,
                path: path.clone(),
            };
            let cpu = out.slot(owner).section.get_or_insert_with(Box::default);
            cpu.quota_ms = watch.limit.quota_us.map(|us| us as f64 / 1000.0);
            cpu.period_ms = Some(watch.limit.period_us as f64 / 1000.0);
            cpu.periods = window.periods;
            cpu.throttled_periods = window.throttled_periods;
            cpu.throttled_ms = histogram::round_ms(window.throttled_ns as f64 / 1e6);
            cpu.usage_ms = window
                .usage_ns
                .map(|ns| histogram::round_ms(ns as f64 / 1e6));
        }
    }

    fn metrics(cpu: &Option<Box<CpuReport>>, labels: &Labels, f: &mut Families) {
        let Some(cpu) = cpu else {
            return;
        };
        if let Some(quota) = cpu.quota_ms {
            f.gauge(
                "tuneprobe_cpu_quota_seconds",
                "CFS quota per period (cpu.max, cpu.cfs_quota_us).",
                labels.clone(),
                quota / 1000.0,
            );
        }
        if let Some(period) = cpu.period_ms {
            f.gauge(
                "tuneprobe_cpu_period_seconds",
                "CFS period (cpu.max, cpu.cfs_period_us).",
                labels.clone(),
                period / 1000.0,
            );
        }
        if let Some(usage) = cpu.usage_ms {
            f.counter(
                USAGE_SECONDS,
                "CPU time the group used (cpu.stat usage_usec, or cpuacct.usage on cgroup v1).",
                labels.clone(),
                usage / 1000.0,
            );
        }
        f.counter(
            PERIODS,
            "CFS periods with activity (cpu.stat nr_periods).",
            labels.clone(),
            cpu.periods as f64,
        );
        f.counter(
            THROTTLED_PERIODS,
            "CFS periods in which the group was throttled (cpu.stat nr_throttled).",
            labels.clone(),
            cpu.throttled_periods as f64,
        );
        f.counter(
            THROTTLED_SECONDS,
            "Time the group was throttled (cpu.stat throttled_time/throttled_usec).",
            labels.clone(),
            cpu.throttled_ms / 1000.0,
        );
        f.counter(
            "tuneprobe_cpu_throttle_events_total",
            "Tasks switched out because the group's quota ran out (sched_switch).",
            labels.clone(),
            cpu.throttle_events as f64,
        );
        f.add(
            STALL_SECONDS,
            "How long a throttled task waited until it ran again.",
            labels.clone(),
            prometheus_histogram(&cpu.stall_histogram, IO_BUCKETS),
        );
    }

    const TRACE_KIND: TraceKind = TraceKind::Throttle;
    const TRACE_HIERARCHY: Hierarchy = Hierarchy::Cpu;
    type Event = ThrottleEvent;
    type TraceFields = TraceFields;

    fn trace_fields(event: &ThrottleEvent, _context: &mut TraceContext<'_>) -> TraceFields {
        TraceFields::of(event)
    }

    fn trace_detail(fields: &TraceFields) -> String {
        fields.detail()
    }

    fn trace_latency_ms(fields: &TraceFields) -> Option<f64> {
        Some(fields.stall_ms)
    }

    const TOP_COLUMNS: &'static [TopColumn] = &[TopColumn {
        name: "throttled",
        title: "THROTTLED",
        width: 9,
    }];

    /// Throttled periods over periods in the interval, from `cpu.stat`; `-` without a
    /// quota.
    fn top_cells(
        now: &Option<Box<CpuReport>>,
        before: &Option<Box<CpuReport>>,
        _seconds: f64,
    ) -> Vec<Cell> {
        let pct = now.as_ref().and_then(|c| {
            c.quota_ms?;
            let (periods, throttled) = CpuReport::periods_since(before.as_deref(), c);
            Some(if periods == 0 {
                0.0
            } else {
                100.0 * throttled as f64 / periods as f64
            })
        });
        vec![Cell::percent(pct)]
    }

    fn top_detail(section: &Option<Box<CpuReport>>, detail: &mut Detail) {
        if let Some(c) = section {
            detail
                .histograms
                .push(("CPU throttle stalls".to_string(), bars(&c.stall_histogram)));
        }
    }

    fn table(rows: &[(&Identity, &Option<Box<CpuReport>>)]) -> String {
        let mut out = String::new();
        let rows = rows.iter().filter_map(|(w, c)| Some((w, c.as_ref()?)));
        for (i, (workload, c)) in rows.enumerate() {
            if i == 0 {
                let _ = writeln!(
                    out,
                    "{:<50} {:>9} {:>8} {:>9} {:>11} {:>8} {:>11} {:>11}",
                    "WORKLOAD",
                    "QUOTA ms",
                    "PERIODS",
                    "THROTTLED",
                    "THROTTLE ms",
                    "EVENTS",
                    "STALL p50",
                    "STALL p99"
                );
            }
            let _ = writeln!(
                out,
                "{:<50} {:>9} {:>8} {:>9} {:>11.1} {:>8} {:>11} {:>11}",
                truncate_left(&workload.display_name(), 50),
                or_dash(c.quota_ms, 1),
                c.periods,
                c.throttled_periods,
                c.throttled_ms,
                c.throttle_events,
                or_dash(c.stall_ms.p50, 1),
                or_dash(c.stall_ms.p99, 1),
            );
        }
        out
    }
}

/// A stall as `trace` shows it: a throttled task running again.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceFields {
    pub stall_ms: f64,
    pub tid: u32,
}

impl TraceFields {
    pub fn of(e: &ThrottleEvent) -> Self {
        Self {
            stall_ms: endpoints::ms(e.stall_ns),
            tid: e.pid,
        }
    }

    pub fn detail(&self) -> String {
        format!("tid {} stalled {:.3}ms", self.tid, self.stall_ms)
    }
}

fn join(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The throttle programs' layout: a task's cpu cgroup and where its throttle flag is.
fn layout(r: &mut layout::Resolver) -> layout::Global {
    let cpu_cgrp_id = match r.btf.enum_value(CPU_CGRP_ID.0, CPU_CGRP_ID.1) {
        Ok(id) => id as u32,
        Err(err) => {
            r.missing(CPU_CGRP_ID, err.to_string());
            0
        }
    };
    let throttle = throttle_flag(r);
    let css_set_subsys = r.offset(CSS_SET_SUBSYS);
    let layout = probe_common::cpu_throttle::ThrottleLayout {
        task_pid: r.offset(TASK_PID),
        task_cgroups: r.offset(TASK_CGROUPS),
        // `subsys` is an array of css pointers indexed by subsystem id.
        css_set_cpu_css: css_set_subsys.saturating_add(cpu_cgrp_id.saturating_mul(8)),
        css_cgroup: r.offset(CSS_CGROUP),
        throttle_per_task: throttle.per_task,
        throttled_byte: throttle.byte,
        throttled_mask: throttle.mask,
        task_cfs_rq: throttle.task_cfs_rq,
        sched_switch_has_prev_state: u32::from(r.tracepoint_args("sched_switch") >= 4),
    };
    layout::Global::of(probe_common::cpu_throttle::ThrottleLayout::GLOBAL, &layout)
}

struct ThrottleFlag {
    per_task: u32,
    byte: u32,
    mask: u32,
    task_cfs_rq: u32,
}

/// 6.18 marks throttled tasks themselves; older kernels count throttles on the task's
/// cfs_rq (`throttle_count` covers throttled ancestors too).
fn throttle_flag(r: &mut layout::Resolver) -> ThrottleFlag {
    let btf = r.btf;
    if let Ok((byte, mask)) = btf.flag_location(TASK_THROTTLED.0, TASK_THROTTLED.1) {
        return ThrottleFlag {
            per_task: 1,
            byte,
            mask: u32::from(mask),
            task_cfs_rq: 0,
        };
    }
    let cfs_rq = btf.field_offset(TASK_CFS_RQ.0, TASK_CFS_RQ.1);
    let flag = btf.flag_location(CFS_RQ_THROTTLE_COUNT.0, CFS_RQ_THROTTLE_COUNT.1);
    match (cfs_rq, flag) {
        (Ok(cfs_rq), Ok((byte, mask))) => ThrottleFlag {
            per_task: 0,
            byte,
            mask: u32::from(mask),
            task_cfs_rq: cfs_rq.bytes,
        },
        (Err(err), _) | (_, Err(err)) => {
            r.missing(
                TASK_THROTTLED,
                format!("neither task_struct.throttled nor cfs_rq.throttle_count: {err}"),
            );
            ThrottleFlag {
                per_task: 0,
                byte: 0,
                mask: 0,
                task_cfs_rq: 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Its layout from this kernel's BTF: every field placed, each where BTF says.
    #[test]
    fn layout_resolves_from_the_running_kernel() {
        let (btf, l): (_, probe_common::cpu_throttle::ThrottleLayout) =
            crate::kernel::layout::resolved_alone(super::layout);
        let at = |ty: &str, path: &str| btf.field_offset(ty, path).unwrap().bytes;
        // 6.18 throttles per task.
        assert_eq!((l.throttle_per_task, l.throttled_mask), (1, 0xff));
        assert_eq!(l.throttled_byte, at("task_struct", "throttled"));
        let cpu_id = btf.enum_value("cgroup_subsys_id", "cpu_cgrp_id").unwrap() as u32;
        assert_eq!(l.css_set_cpu_css, at("css_set", "subsys") + 8 * cpu_id);
    }
}
