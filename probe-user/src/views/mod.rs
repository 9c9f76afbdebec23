//! Ways to show a window: the Prometheus exposition, `top`, `trace` and plots.

pub mod families;
pub mod metrics;
pub mod parts;
pub mod plot;
pub mod table;
pub mod top;
pub mod trace;
