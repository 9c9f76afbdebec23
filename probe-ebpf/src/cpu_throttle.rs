//! CPU throttling per cpu cgroup, seen at `sched_switch`.
//!
//! CFS bandwidth control has no tracepoint of its own. A task switched out while
//! throttled (the task's own flag on 6.18+, its cfs_rq's before) is a throttle event;
//! the time until it is switched in again is its throttle stall.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap},
    programs::BtfTracePointContext,
};
use probe_common::{
    OverflowSlot, ThrottleStats, ThrottledTask,
    cpu_throttle::ThrottleEvent,
    cpu_throttle::{CPU_THROTTLE_MAX_CGROUPS, THROTTLED_TASKS_MAX},
    trace::TraceKind,
};

use crate::{
    aggregate,
    kernel::{self, layout},
    trace,
};

/// This signal's layout, as the loader resolved it from BTF (see `kernel::layout!`).
#[unsafe(no_mangle)]
pub(crate) static THROTTLE_LAYOUT: aya_ebpf::Global<probe_common::cpu_throttle::ThrottleLayout> =
    aya_ebpf::Global::new(probe_common::cpu_throttle::ThrottleLayout::UNRESOLVED);

/// `probe_common::cpu_throttle::CPU_THROTTLE_MAP`
#[map]
static CPU_THROTTLE: HashMap<u64, ThrottleStats> =
    HashMap::with_max_entries(CPU_THROTTLE_MAX_CGROUPS, 0);

/// `probe_common::cpu_throttle::THROTTLED_TASKS_MAP`: task (its `task_struct` address,
/// unique while it lives) -> since when. Keyed by address, not thread id, so the lookup
/// on every context switch needs no read of the task.
#[map]
static THROTTLED_TASKS: LruHashMap<u64, ThrottledTask> =
    LruHashMap::with_max_entries(THROTTLED_TASKS_MAX, 0);

/// `probe_common::cpu_throttle::THROTTLED_WAITING_MAP`: how many tasks
/// `THROTTLED_TASKS` holds. Most context switches happen while no task of the node is
/// throttled; an array read (which the verifier inlines) tells them so, and they skip
/// the hash lookup, a helper call and the larger part of this program's cost.
#[map]
static THROTTLED_WAITING: Array<u64> = Array::with_max_entries(1, 0);

static ZERO_STATS: ThrottleStats = ThrottleStats::ZERO;

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    // The clock is read only on the rare paths that need it: this program runs on every
    // context switch, and a helper call is a large part of its cost (xtask bench).
    if is_throttled(prev)
        && (layout!(THROTTLE_LAYOUT, throttle_per_task) != 0 || still_runnable(&ctx))
    {
        switched_out_throttled(prev, now());
    }
    switched_in(next);
    0
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// With the cfs_rq flag, a task that blocked (sleep, IO) while its group was throttled
/// was not switched out by the throttle. `prev_state` 0 is `TASK_RUNNING`.
#[inline(always)]
fn still_runnable(ctx: &BtfTracePointContext) -> bool {
    if layout!(THROTTLE_LAYOUT, sched_switch_has_prev_state) == 0 {
        return true;
    }
    let prev_state: u32 = ctx.arg(3);
    prev_state == 0
}

#[inline(always)]
fn is_throttled(task: *const u8) -> bool {
    let holder = if layout!(THROTTLE_LAYOUT, throttle_per_task) != 0 {
        task
    } else {
        kernel::follow(task, [layout!(THROTTLE_LAYOUT, task_cfs_rq)])
    };
    if holder.is_null() {
        return false;
    }
    let flag: u8 = kernel::load(holder, layout!(THROTTLE_LAYOUT, throttled_byte));
    u32::from(flag) & layout!(THROTTLE_LAYOUT, throttled_mask) != 0
}

#[inline(always)]
fn switched_out_throttled(task: *const u8, now: u64) {
    let cgroup = kernel::follow(
        task,
        [
            layout!(THROTTLE_LAYOUT, task_cgroups),
            layout!(THROTTLE_LAYOUT, css_set_cpu_css),
            layout!(THROTTLE_LAYOUT, css_cgroup),
        ],
    );
    let cgroup_id = kernel::cgroup_id(cgroup);
    let Some(stats) = aggregate::shared_entry(
        &CPU_THROTTLE,
        &cgroup_id,
        &ZERO_STATS,
        OverflowSlot::CpuThrottle,
    ) else {
        return;
    };
    // SAFETY: map value pointer.
    unsafe { aggregate::atomic_add(&raw mut (*stats).events, 1) };
    let waiting = ThrottledTask {
        since_ns: now,
        cgroup_id,
    };
    if THROTTLED_TASKS.insert(task as u64, waiting, 0).is_ok() {
        add_waiting(1);
    }
}

/// Adds to the waiting count (`u64::MAX` subtracts one). A task is switched out and in
/// again on any CPU, so the count is shared; it changes only at throttle events.
#[inline(always)]
fn add_waiting(delta: u64) {
    if let Some(count) = THROTTLED_WAITING.get_ptr_mut(0) {
        aggregate::atomic_add(count, delta);
    }
}

/// Whether any task may be waiting out a throttle. The count is raised before a
/// throttled task can run again anywhere (its switch-out finishes first, and unthrottling
/// takes run-queue locks), so a switch-in never misses its own task's entry.
#[inline(always)]
fn any_waiting() -> bool {
    THROTTLED_WAITING.get(0).is_none_or(|&count| count != 0)
}

#[inline(always)]
fn switched_in(task: *const u8) {
    if !any_waiting() {
        return;
    }
    let id = task as u64;
    // SAFETY: copied out at once.
    let Some(waiting) = (unsafe { THROTTLED_TASKS.get(id) }).copied() else {
        return;
    };
    let now = now();
    if THROTTLED_TASKS.remove(id).is_ok() {
        add_waiting(u64::MAX);
    }
    let stall_ns = now.saturating_sub(waiting.since_ns);
    if trace::enabled(TraceKind::Throttle) {
        let pid: u32 = kernel::load(task, layout!(THROTTLE_LAYOUT, task_pid));
        let event = ThrottleEvent {
            header: trace::header(TraceKind::Throttle, waiting.cgroup_id, 0, now),
            stall_ns,
            pid,
            _pad: 0,
        };
        trace::emit(TraceKind::Throttle, &event);
    }
    if let Some(stats) = CPU_THROTTLE.get_ptr_mut(waiting.cgroup_id) {
        // SAFETY: map value pointer.
        unsafe { aggregate::record(&raw mut (*stats).stall, stall_ns) };
    }
}
