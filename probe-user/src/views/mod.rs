//! Ways to show a window: the Prometheus exposition, `top`, `trace` and plots.

pub mod metrics;
pub(crate) mod plot;
pub(crate) mod scope;
pub(crate) mod table;
pub(crate) mod top;
pub(crate) mod trace;
