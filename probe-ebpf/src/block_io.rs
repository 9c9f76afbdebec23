//! Block IO latency per (workload cgroup, device, operation).
//!
//! insert (into a scheduler queue) -> issue (to the driver) -> complete. The workload is
//! the request's own cgroup, `rq->bio->bi_blkg->blkcg`, which stays right for writeback
//! and for loop devices, where the task at issue time is a kernel worker.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::HashMap,
    programs::BtfTracePointContext,
};
use probe_common::{
    BlockKey, BlockStats, InFlightRequest, OverflowSlot,
    block_io::BlockEvent,
    block_io::{BLOCK_IN_FLIGHT_MAX, BLOCK_IO_MAX_KEYS, MINOR_BITS},
    trace::TraceKind,
};

use crate::{
    aggregate,
    kernel::{self, layout},
    trace,
};

/// This signal's layout, as the loader resolved it from BTF (see `kernel::layout!`).
#[unsafe(no_mangle)]
pub(crate) static BLOCK_LAYOUT: aya_ebpf::Global<probe_common::block_io::BlockLayout> =
    aya_ebpf::Global::new(probe_common::block_io::BlockLayout::UNRESOLVED);

/// `probe_common::block_io::BLOCK_IO_MAP`
#[map]
static BLOCK_IO: HashMap<BlockKey, BlockStats> = HashMap::with_max_entries(BLOCK_IO_MAX_KEYS, 0);

/// `probe_common::block_io::BLOCK_IN_FLIGHT_MAP`: request address -> state.
///
/// A plain hash map, not an LRU one: an LRU update does more work (it keeps the eviction
/// lists), and nothing here needs evicting. Entries live from insert or issue to
/// completion or merge; a request that vanished without either leaves its entry behind
/// only until its address is used again, because blk-mq preallocates its requests per
/// tag and reuses them. So the map holds about the requests in flight, and if it ever
/// fills, the completions that find no state are counted (`OverflowSlot::BlockInFlight`).
#[map]
static BLOCK_IN_FLIGHT: HashMap<u64, InFlightRequest> =
    HashMap::with_max_entries(BLOCK_IN_FLIGHT_MAX, 0);

/// Source for new map values: too large for the 512-byte BPF stack.
static ZERO_STATS: BlockStats = BlockStats::ZERO;

/// `REQ_OP_MASK`: the low 8 bits of `cmd_flags` hold the operation.
const REQ_OP_MASK: u32 = 0xff;

/// Only the time and the request's allocation time: the cgroup and device take a chain
/// of pointers to find, and issue, which every request passes, finds them once.
#[btf_tracepoint(function = "block_rq_insert")]
pub fn block_rq_insert(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    let state = InFlightRequest {
        insert_ns: now(),
        issue_ns: 0,
        key: BlockKey::default(),
        allocated_ns: allocated_ns(rq),
    };
    let _ = BLOCK_IN_FLIGHT.insert(rq as u64, state, 0);
    0
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    let now = now();
    let key = request_key(rq);
    let allocated_ns = allocated_ns(rq);
    let issued = InFlightRequest {
        // Issued directly, without a scheduler insert: no queue time.
        insert_ns: 0,
        issue_ns: now,
        key,
        allocated_ns,
    };
    match BLOCK_IN_FLIGHT.get_ptr_mut(rq as u64) {
        // SAFETY: a map value; only this request's programs touch it, one at a time.
        Some(state) => unsafe {
            // Only a fresh insert of this same request counts as its queueing; anything
            // else is state left from an earlier use of the request struct. Updated in
            // place: no second map update per request.
            if (*state).issue_ns == 0 && (*state).allocated_ns == allocated_ns {
                (*state).issue_ns = now;
                (*state).key = key;
            } else {
                *state = issued;
            }
        },
        None => {
            let _ = BLOCK_IN_FLIGHT.insert(rq as u64, issued, 0);
        }
    }
    0
}

/// A request merged into another is freed without completing: forget it.
#[btf_tracepoint(function = "block_rq_merge")]
pub fn block_rq_merge(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    let _ = BLOCK_IN_FLIGHT.remove(rq as u64);
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete(ctx: BtfTracePointContext) -> i32 {
    try_block_rq_complete(&ctx);
    0
}

#[inline(always)]
fn try_block_rq_complete(ctx: &BtfTracePointContext) {
    let rq: *const u8 = ctx.arg(0);
    let error: u8 = ctx.arg(1);
    let nr_bytes: u32 = ctx.arg(2);
    let id = rq as u64;
    // SAFETY: copied out at once; the slot is freed below.
    let Some(state) = (unsafe { BLOCK_IN_FLIGHT.get(id) }).copied() else {
        aggregate::count_overflow(OverflowSlot::BlockInFlight);
        return;
    };
    // Completed without an issue (failed in the scheduler): its key is found now.
    let key = if state.issue_ns == 0 {
        request_key(rq)
    } else {
        state.key
    };
    let Some(stats) = aggregate::shared_entry(&BLOCK_IO, &key, &ZERO_STATS, OverflowSlot::BlockIo)
    else {
        let _ = BLOCK_IN_FLIGHT.remove(id);
        return;
    };
    // SAFETY: map value pointer.
    unsafe {
        aggregate::atomic_add(&raw mut (*stats).bytes, u64::from(nr_bytes));
        if error != 0 {
            aggregate::atomic_add(&raw mut (*stats).errors, 1);
        }
    }
    // A partial completion (the driver finished part of the request, with or without
    // an error) is not the end: `__data_len` still holds what was left before it.
    let remaining: u32 = kernel::load(rq, layout!(BLOCK_LAYOUT, request_data_len));
    if nr_bytes < remaining {
        return;
    }
    let _ = BLOCK_IN_FLIGHT.remove(id);
    if state.issue_ns == 0 {
        return;
    }
    let now = now();
    let service_ns = now.saturating_sub(state.issue_ns);
    let queue_ns = if state.insert_ns != 0 {
        state.issue_ns.saturating_sub(state.insert_ns)
    } else {
        0
    };
    // SAFETY: map value pointer.
    unsafe {
        aggregate::record(&raw mut (*stats).service, service_ns);
        if state.insert_ns != 0 {
            aggregate::record(&raw mut (*stats).queue, queue_ns);
        }
    }
    if trace::enabled(TraceKind::Block) && service_ns + queue_ns >= trace::min_block_ns() {
        let event = BlockEvent {
            header: trace::header(TraceKind::Block, key.cgroup_id, 0, now),
            dev: key.dev,
            op: key.op,
            // The final completion's bytes: the whole request unless it completed in parts.
            bytes: u64::from(nr_bytes),
            service_ns,
            queue_ns,
            error: u32::from(error),
            _pad: 0,
        };
        trace::emit(TraceKind::Block, &event);
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// When the request struct was allocated for this IO: which use of it this is. Set for
/// every request that goes through a scheduler (the ones with an insert), and it stays
/// put while the request waits, merges included.
#[inline(always)]
fn allocated_ns(rq: *const u8) -> u64 {
    kernel::load(rq, layout!(BLOCK_LAYOUT, request_start_time_ns))
}

/// Device, operation and owning cgroup of a request.
#[inline(always)]
fn request_key(rq: *const u8) -> BlockKey {
    // Which layout comes from BTF at load time (a verifier constant): 5.10's request
    // names its disk itself, newer kernels' through the request queue.
    let disk = if layout!(BLOCK_LAYOUT, request_has_rq_disk) != 0 {
        kernel::load(rq, layout!(BLOCK_LAYOUT, queue_disk))
    } else {
        kernel::follow(
            rq,
            [
                layout!(BLOCK_LAYOUT, request_queue),
                layout!(BLOCK_LAYOUT, queue_disk),
            ],
        )
    };
    let (major, minor) = if disk.is_null() {
        (0, 0)
    } else {
        (
            kernel::load::<i32>(disk, layout!(BLOCK_LAYOUT, disk_major)) as u32,
            kernel::load::<i32>(disk, layout!(BLOCK_LAYOUT, disk_first_minor)) as u32,
        )
    };
    let flags: u32 = kernel::load(rq, layout!(BLOCK_LAYOUT, request_cmd_flags));
    let cgroup = kernel::follow(
        rq,
        [
            layout!(BLOCK_LAYOUT, request_bio),
            layout!(BLOCK_LAYOUT, bio_blkg),
            layout!(BLOCK_LAYOUT, blkg_blkcg),
            layout!(BLOCK_LAYOUT, blkcg_cgroup),
        ],
    );
    BlockKey {
        cgroup_id: kernel::cgroup_id(cgroup),
        dev: (major << MINOR_BITS) | minor,
        op: flags & REQ_OP_MASK,
    }
}
