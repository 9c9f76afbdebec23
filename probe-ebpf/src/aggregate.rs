//! In-kernel aggregation into bounded per-CPU maps, with full maps counted, not hidden.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use probe_common::OverflowSlot;

/// Updates lost because the target map was full, per [`OverflowSlot`]
/// (`probe_common::overflow::MAP_OVERFLOWS_MAP`).
#[map]
static MAP_OVERFLOWS: PerCpuArray<u64> = PerCpuArray::with_max_entries(OverflowSlot::COUNT, 0);

/// Applies `update` to this CPU's value for `key`, inserting `initial` if the key is new.
///
/// Per-CPU values need no atomics: a program is not preempted on its CPU, and an insert
/// from a program only writes this CPU's slot (concurrent inserts of one key on two CPUs
/// each land in their own slot).
#[inline(always)]
pub fn add<K, V>(
    map: &PerCpuHashMap<K, V>,
    key: &K,
    initial: &V,
    slot: OverflowSlot,
    update: impl FnOnce(&mut V),
) {
    match map.get_ptr_mut(key) {
        // SAFETY: a per-CPU slot, only touched by this CPU while we run.
        Some(value) => update(unsafe { &mut *value }),
        None => {
            if map.insert(key, initial, 0).is_err() {
                count_overflow(slot);
            }
        }
    }
}

#[inline(always)]
fn count_overflow(slot: OverflowSlot) {
    if let Some(count) = MAP_OVERFLOWS.get_ptr_mut(slot as u32) {
        // SAFETY: per-CPU slot, see `add`.
        unsafe { *count += 1 };
    }
}
