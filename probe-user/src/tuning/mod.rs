//! The knobs of the tuning guides: the one table of them (`table`), what this node has
//! set (`inventory`) and what changed between two readings (`changes`).

mod advice;
mod changes;
#[cfg(test)]
pub(crate) mod docs;
mod inventory;
mod table;

#[cfg(test)]
pub(crate) use self::inventory::{
    CgroupSettings, DeviceSettings, MountSettings, NetnsSettings, Unreadable,
};
pub(crate) use self::{
    advice::{
        CPU_HEADROOM, Condition, DNS_LATENCY, DNS_TIMEOUTS, NODE_LOCAL_DNS, Recommend, Rule,
        Threshold,
    },
    changes::Change,
    inventory::{Inventory, Setting, this_node},
    table::{Applies, KNOBS, Knob, Recommendation, Scope, judged_knobs, knob_named, measures_for},
};
