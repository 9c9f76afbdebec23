//! Updates lost because a bounded map was full.

/// Per-CPU array indexed by [`OverflowSlot`]: updates that could not insert a new key.
pub const MAP_OVERFLOWS_MAP: &str = "MAP_OVERFLOWS";

pub use crate::OverflowSlot;
