//! Ways to show a window: the Prometheus exposition (and its OTLP push), `top`, `trace`
//! and plots.

pub mod metrics;
pub(crate) mod otlp;
pub(crate) mod plot;
pub(crate) mod scope;
pub(crate) mod table;
pub(crate) mod top;
pub(crate) mod trace;
