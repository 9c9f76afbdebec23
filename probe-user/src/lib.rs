//! tuneprobe's userspace agent: loads the kernel programs, reads their per-cgroup maps
//! and attributes the counts to pods, containers and services.
//!
//! Its modules, lowest first; each uses only the modules before it, and
//! `xtask/src/layers.rs` declares this order and its test fails on an import against it:
//!
//! - `output`: the building blocks every output is made of (metric families, `top`'s
//!   cells), below the signals that fill them in;
//! - [`workloads`]: who a count belongs to: cgroups, pods (Kubernetes API, container
//!   runtime, log directories), processes and network namespaces;
//! - [`kernel`]: BTF, the layout read from it, loading and attaching the programs,
//!   reading and deleting map entries; the kernel's other interfaces (sysfs block
//!   devices, sock_diag);
//! - [`signals`]: one module per signal;
//! - [`report`]: the snapshot of a window, as `snapshot --json` prints it;
//! - [`window`]: an observation window over every signal (baselines, ticks, garbage
//!   collection);
//! - `tuning` and `verify`: the knobs, and judging their changes;
//! - [`views`]: the table, the Prometheus exposition, `top`, `trace` and plots;
//! - [`fleet`]: judging a change across nodes, from Prometheus;
//! - `access` and `privileges`: the server's access control, dropping capabilities;
//! - `cli`: the command line, one module per subcommand ([`main`] is the binary).

// The public surface is what the binary and the integration tests (`tests/`) use; the
// rest is the crate's own, and `unreachable_pub` keeps it marked so.
#![warn(unreachable_pub)]

pub(crate) mod access;
pub(crate) mod advise;
mod cli;
pub mod fleet;
pub mod kernel;
pub(crate) mod output;
pub(crate) mod privileges;
#[cfg(test)]
mod reference;
pub mod report;
pub mod signals;
pub(crate) mod tuning;
pub(crate) mod verify;
pub mod views;
pub mod window;
pub mod workloads;

pub use cli::main;
pub use kernel::loader::{LoadOptions, Probe, ProbeStatus};
pub use report::Snapshot;
pub use signals::Signal;
pub use window::Collector;
