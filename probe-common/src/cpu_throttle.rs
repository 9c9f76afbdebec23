//! CPU throttling: tasks switched out because their group's CFS bandwidth ran out, and
//! how long each waited to run again ("throttle stall"), per cpu cgroup.

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
