//! The signals, one module each, and what they share.

pub mod cpustat;
pub mod dnswire;
pub mod histogram;
