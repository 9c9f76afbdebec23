//! Updates lost because a bounded map was full.

/// Per-CPU array indexed by [`OverflowSlot`]: updates that could not insert a new key.
pub const MAP_OVERFLOWS_MAP: &str = "MAP_OVERFLOWS";

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverflowSlot {
    TcpRetransmits = 0,
    Drops = 1,
}

impl OverflowSlot {
    pub const ALL: [Self; 2] = [Self::TcpRetransmits, Self::Drops];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The map whose updates this slot counts.
    pub const fn map_name(self) -> &'static str {
        match self {
            Self::TcpRetransmits => crate::tcp_retransmit::TCP_RETRANSMITS_MAP,
            Self::Drops => crate::drops::DROPS_MAP,
        }
    }
}
