//! The knobs of the tuning guides: the one table of them (`table`), what this node has
//! set (`inventory`) and what changed between two readings (`changes`).

mod changes;
#[cfg(test)]
mod docs;
mod inventory;
mod table;

pub(crate) use self::{
    changes::Change,
    inventory::{Inventory, Setting, this_node},
    table::{Applies, KNOBS, Scope, judged_knobs, knob_named, measures_for},
};
#[cfg(test)]
pub(crate) use self::{
    inventory::{CgroupSettings, DeviceSettings, NetnsSettings, Unreadable},
    table::Knob,
};
