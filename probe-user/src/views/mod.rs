//! Ways to show a window: the Prometheus exposition, `top`, `trace` and plots.

pub mod metrics;
pub mod plot;
pub mod scope;
pub mod table;
pub mod top;
pub mod trace;
