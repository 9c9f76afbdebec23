//! tuneprobe's userspace agent: loads the kernel programs, reads their per-cgroup maps
//! and attributes the counts to pods, containers and services.
//!
//! - [`output`]: the building blocks every output is made of (metric families, `top`'s
//!   cells), below the signals that fill them in;
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
//! - [`fleet`]: judging a change across nodes, from Prometheus;
//! - `cli`: the command line, one module per subcommand ([`main`] is the binary).
//!
//! Each module uses only the modules listed before it (`access` and `privileges`, the
//! server's and the CLI's, sit just below `cli`); `xtask/src/layers.rs` declares the
//! order and its test fails on an import against it.

// The public surface is what the binary and the integration tests (`tests/`) use; the
// rest is the crate's own, and `unreachable_pub` keeps it marked so.
#![warn(unreachable_pub)]

pub(crate) mod access;
mod cli;
pub mod fleet;
pub mod kernel;
pub(crate) mod output;
pub(crate) mod privileges;
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
