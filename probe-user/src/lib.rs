//! tuneprobe's userspace agent: loads the kernel programs, reads their per-cgroup maps
//! and attributes the counts to pods, containers and services.
//!
//! - [`kernel`]: BTF, the layout read from it, loading and attaching the programs,
//!   reading and deleting map entries; the kernel's other interfaces (sysfs block
//!   devices, sock_diag);
//! - [`workloads`]: who a count belongs to: cgroups, pods (Kubernetes API, container
//!   runtime, log directories), processes and network namespaces;
//! - [`signals`]: one module per signal;
//! - [`window`]: an observation window over every signal (baselines, ticks, garbage
//!   collection);
//! - [`report`]: the snapshot of a window, as `snapshot --json` prints it;
//! - [`views`]: the table, the Prometheus exposition, `top`, `trace` and plots;
//! - [`tuning`] and [`verify`]: the knobs, and judging their changes;
//! - [`fleet`]: judging a change across nodes, from Prometheus.

pub mod access;
pub mod fleet;
pub mod kernel;
pub mod privileges;
#[cfg(test)]
mod reference;
pub mod report;
pub mod signals;
pub mod tuning;
pub mod verify;
pub mod views;
pub mod window;
pub mod workloads;

pub use kernel::loader::{LoadOptions, Probe, ProbeStatus};
pub use report::Snapshot;
pub use signals::Signal;
pub use window::Collector;
