//! In-kernel aggregation into bounded per-CPU maps, with full maps counted, not hidden.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
};
use probe_common::{LatencyHistogram, OverflowSlot};

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

/// The shared (not per-CPU) value for `key`, created from `zero` if new. `None` when the
/// map is full (counted in `slot`).
#[inline(always)]
pub fn shared_entry<K, V>(
    map: &HashMap<K, V>,
    key: &K,
    zero: &V,
    slot: OverflowSlot,
) -> Option<*mut V> {
    if let Some(value) = map.get_ptr_mut(key) {
        return Some(value);
    }
    // NOEXIST: if another CPU created it meanwhile, keep theirs and use it.
    let _ = map.insert(key, zero, u64::from(BPF_NOEXIST));
    let value = map.get_ptr_mut(key);
    if value.is_none() {
        count_overflow(slot);
    }
    value
}

/// Atomically adds to a counter in a shared map value.
#[inline(always)]
pub fn atomic_add(counter: *mut u64, value: u64) {
    // The bpf target has atomic adds (BPF_ATOMIC) but no compare-and-swap, so core's
    // `AtomicU64` offers no `fetch_add`; the intrinsic lowers to the instruction.
    // SAFETY: `counter` points into a map value, valid and 8-byte aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

/// Records one duration in a shared histogram.
#[inline(always)]
pub fn record<const N: usize, const SUB: u32>(histogram: *mut LatencyHistogram<N, SUB>, ns: u64) {
    // SAFETY: `histogram` points into a map value.
    unsafe {
        // Racing updates may each write their own extreme; these are reports, not counts.
        if (*histogram).count == 0 || ns < (*histogram).min_ns {
            (*histogram).min_ns = ns;
        }
        atomic_add(&raw mut (*histogram).count, 1);
        atomic_add(&raw mut (*histogram).sum_ns, ns);
        let index = LatencyHistogram::<N, SUB>::bucket(ns);
        if index < N {
            atomic_add(&raw mut (*histogram).buckets[index], 1);
        }
        if ns > (*histogram).max_ns {
            (*histogram).max_ns = ns;
        }
    }
}

#[inline(always)]
pub fn count_overflow(slot: OverflowSlot) {
    if let Some(count) = MAP_OVERFLOWS.get_ptr_mut(slot as u32) {
        // SAFETY: per-CPU slot, see `add`.
        unsafe { *count += 1 };
    }
}
