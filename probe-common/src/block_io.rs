//! Block IO: per request, service time (issue -> complete) and queue time (insert ->
//! issue), aggregated per (workload cgroup, device, operation).

use crate::trace::TraceHeader;

use crate::histogram::LatencyHistogram;

/// Hash map: [`BlockKey`] -> [`BlockStats`], updated with atomic adds (IO rates are far
/// below packet rates, and one shared value keeps memory at keys x 1.6 KiB, not x CPUs).
pub const BLOCK_IO_MAP: &str = "BLOCK_IO";
pub const BLOCK_IO_MAX_KEYS: u32 = 2048;
/// Hash map: request address (`u64`) -> [`InFlightRequest`].
pub const BLOCK_IN_FLIGHT_MAP: &str = "BLOCK_IN_FLIGHT";
pub const BLOCK_IN_FLIGHT_MAX: u32 = 16_384;

/// `(major << 20) | minor`, the kernel's internal `dev_t` encoding.
pub const MINOR_BITS: u32 = 20;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// The request's own cgroup (`bio -> blkcg`): v1 blkio id on hybrid nodes, v2 id on
    /// unified ones; 0 for requests without a bio (flushes).
    pub cgroup_id: u64,
    pub dev: u32,
    /// `cmd_flags & REQ_OP_MASK`; named in userspace from the kernel's `enum req_op`.
    pub op: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub bytes: u64,
    pub errors: u64,
    /// Issue -> complete, one sample per request.
    pub service: LatencyHistogram,
    /// Insert -> issue, for requests that went through a scheduler queue.
    pub queue: LatencyHistogram,
}

impl BlockStats {
    pub const ZERO: Self = Self {
        bytes: 0,
        errors: 0,
        service: LatencyHistogram::ZERO,
        queue: LatencyHistogram::ZERO,
    };
}

/// A request between insert (or issue) and completion.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlightRequest {
    /// 0 when the request was issued directly, without a scheduler insert.
    pub insert_ns: u64,
    /// 0 until it is issued.
    pub issue_ns: u64,
    /// Set at issue (the insert only takes the times).
    pub key: BlockKey,
    /// Which use of the request struct this is (`request.start_time_ns`, its allocation
    /// time), taken at insert and checked at issue, so state left by an earlier use is
    /// not taken for this one's queueing.
    pub allocated_ns: u64,
}

crate::kernel_layout! {
    /// Where the block programs find a request's disk, size, start time and cgroup.
    /// Byte offsets and flags from the running kernel's BTF, in the read-only global
    /// `BLOCK_LAYOUT`.
    pub struct BlockLayout in "BLOCK_LAYOUT" {
        /// `request.q`
        request_queue,
        /// `request_queue.disk`, or `request.rq_disk` where `request_has_rq_disk`.
        queue_disk,
        /// 1 where the request names its disk itself, `request.rq_disk` (older kernels such as
        /// 5.10, whose `request_queue` has no `disk`): `queue_disk` is then that field's offset.
        request_has_rq_disk,
        /// `gendisk.major`
        disk_major,
        /// `gendisk.first_minor`
        disk_first_minor,
        /// `request.cmd_flags`
        request_cmd_flags,
        /// `request.__data_len`: bytes still to complete.
        request_data_len,
        /// `request.start_time_ns`: when the request struct was allocated for this IO.
        request_start_time_ns,
        /// `request.bio`
        request_bio,
        /// `bio.bi_blkg`
        bio_blkg,
        /// `blkcg_gq.blkcg`
        blkg_blkcg,
        /// `blkcg.css.cgroup`
        blkcg_cgroup,
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEvent {
    pub header: TraceHeader,
    /// `major << 20 | minor`, as in [`crate::BlockKey`].
    pub dev: u32,
    /// `cmd_flags & REQ_OP_MASK`
    pub op: u32,
    pub bytes: u64,
    pub service_ns: u64,
    /// 0 when the request bypassed the scheduler queue.
    pub queue_ns: u64,
    pub error: u32,
    pub _pad: u32,
}

user_pod!(BlockEvent, BlockKey, BlockStats, InFlightRequest);
