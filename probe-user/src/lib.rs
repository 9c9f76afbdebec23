//! tuneprobe's userspace agent: loads the kernel programs, reads their per-cgroup maps
//! and attributes the counts to pods, containers and services.

pub mod access;
pub mod attribution;
pub mod btf;
pub mod cgroup;
pub mod collector;
pub mod cpustat;
pub mod cri;
pub mod devices;
pub mod dnswire;
pub mod fleet;
pub mod histogram;
pub mod host;
pub mod kube;
pub mod layout;
pub mod loader;
pub mod metrics;
pub mod netns;
pub mod plot;
pub mod pods;
pub mod privileges;
pub mod procfs;
pub mod report;
pub mod scope;
pub mod sockdiag;
pub mod stats;
pub mod top;
pub mod trace;
pub mod tuning;
pub mod verify;

pub use collector::Collector;
pub use loader::{LoadOptions, Probe, ProbeStatus, Signal};
pub use report::Snapshot;
