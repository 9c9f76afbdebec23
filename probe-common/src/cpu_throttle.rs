//! CPU throttling: tasks switched out because their group's CFS bandwidth ran out, and
//! how long each waited to run again ("throttle stall"), per cpu cgroup.

use crate::trace::TraceHeader;

use crate::histogram::LatencyHistogram;

/// Hash map: cpu cgroup id (`u64`: v1 cpu id on hybrid nodes, v2 id on unified ones) ->
/// [`ThrottleStats`].
pub const CPU_THROTTLE_MAP: &str = "CPU_THROTTLE";
pub const CPU_THROTTLE_MAX_CGROUPS: u32 = 4096;
/// LRU hash map: task (its `task_struct` address, `u64`) -> [`ThrottledTask`], tasks
/// waiting out a throttle.
pub const THROTTLED_TASKS_MAP: &str = "THROTTLED_TASKS";
pub const THROTTLED_TASKS_MAX: u32 = 16_384;
/// Array of one `u64`: how many entries `THROTTLED_TASKS` holds (an upper bound: an
/// entry the LRU evicts is never subtracted).
pub const THROTTLED_WAITING_MAP: &str = "THROTTLED_WAITING";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    /// Throttled switch-outs.
    pub events: u64,
    /// Switch-out to next switch-in of the same task.
    pub stall: LatencyHistogram,
}

impl ThrottleStats {
    pub const ZERO: Self = Self {
        events: 0,
        stall: LatencyHistogram::ZERO,
    };
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottledTask {
    pub since_ns: u64,
    pub cgroup_id: u64,
}

crate::kernel_layout! {
    /// Where the throttle programs find a task's cpu cgroup and its throttle flag.
    /// Byte offsets and flags from the running kernel's BTF, in the read-only global
    /// `THROTTLE_LAYOUT`.
    pub struct ThrottleLayout in "THROTTLE_LAYOUT" {
        /// `task_struct.pid` (the thread id)
        task_pid,
        /// `task_struct.cgroups` + `css_set.subsys[cpu_cgrp_id]`: the task's cpu css.
        task_cgroups,
        css_set_cpu_css,
        /// `cgroup_subsys_state.cgroup`
        css_cgroup,
        /// 1: the throttle flag is on the task (`task_struct.throttled`, 6.18+);
        /// 0: on its cfs_rq (`task_struct.se.cfs_rq->throttle_count`, non-zero while it or
        /// an ancestor is throttled).
        throttle_per_task,
        /// Byte holding the throttle flag, in the task or in the cfs_rq.
        throttled_byte,
        /// Mask of the flag in that byte (0xff for a whole `bool`/`int`, one bit for a bitfield).
        throttled_mask,
        /// `task_struct.se.cfs_rq`, when the flag is on the cfs_rq.
        task_cfs_rq,
        /// 1 if `sched_switch` passes `prev_state` (5.18+): with the cfs_rq flag, a task
        /// that blocked is not a throttled one.
        sched_switch_has_prev_state,
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleEvent {
    pub header: TraceHeader,
    pub stall_ns: u64,
    /// Thread id of the stalled task.
    pub pid: u32,
    pub _pad: u32,
}

user_pod!(ThrottleEvent, ThrottleStats, ThrottledTask);
