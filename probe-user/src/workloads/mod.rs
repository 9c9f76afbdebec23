//! Who a kernel count belongs to: cgroups (and the node's root and cgroup namespace),
//! pod and container names (Kubernetes API, container runtime, log directories),
//! processes and the network namespaces they live in.

pub mod attribution;
pub mod cgroup;
pub mod cri;
pub mod host;
pub mod identity;
pub mod kube;
pub mod netns;
pub mod pods;
pub mod procfs;
