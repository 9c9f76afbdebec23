//! Where a knob lives for a workload: its network namespace, its cgroup, its device, the
//! mount on that device or the node; the knob's value there (from the inventory, or for
//! a CPU limit from the cgroup the probe read) and the `verify` option that reaches it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{
    report::Workload,
    tuning::{Inventory, Knob, NODE_LOCAL_DNS, Scope, Setting},
    workloads::cgroup::Hierarchies,
};

/// One of `verify`'s target options and its value: `--pod UID`, `--netns NAME`,
/// `--cgroup DIR`, `--device NAME`; or `--mount MOUNTPOINT` for a mount option, which
/// `verify --plan` changes by remounting.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct TargetArg {
    pub option: &'static str,
    pub value: String,
}

/// What `advise` asks of the node beyond the inventory (a trait, so that the rules are
/// tested without one).
pub(crate) trait Locator {
    /// The directory of a cgroup path in the hierarchy with its CPU limit, and whether
    /// that is cgroup v2 (`cpu.max`) rather than v1 (`cpu.cfs_quota_us`).
    fn cpu_dir(&self, cgroup_path: &str) -> Option<(PathBuf, bool)>;
    /// The name under `/run/netns` of a network namespace, if it has one.
    fn netns_name(&self, inode: u32) -> Option<String>;
}

/// This node's cgroup hierarchies and `/run/netns`.
pub(crate) struct NodeLocator {
    hierarchies: Hierarchies,
}

impl NodeLocator {
    pub(crate) fn of_this_node() -> Self {
        Self {
            hierarchies: Hierarchies::of_this_node(),
        }
    }
}

impl Locator for NodeLocator {
    fn cpu_dir(&self, cgroup_path: &str) -> Option<(PathBuf, bool)> {
        let relative = cgroup_path.trim_start_matches('/');
        let h = &self.hierarchies;
        [h.unified.as_ref(), h.cpu.as_ref()]
            .into_iter()
            .flatten()
            .map(|root| root.join(relative))
            .find_map(|dir| {
                let v2 = dir.join("cpu.max").exists();
                (v2 || dir.join("cpu.cfs_quota_us").exists()).then_some((dir, v2))
            })
    }

    fn netns_name(&self, inode: u32) -> Option<String> {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::read_dir("/run/netns")
            .ok()?
            .flatten()
            .find(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == u64::from(inode)))
            .map(|e| e.file_name().to_string_lossy().into_owned())
    }
}

/// A knob where a workload lives.
#[derive(Debug, Clone)]
pub(super) struct Place {
    pub scope: Scope,
    /// The knob's name as `verify --apply` takes it there.
    pub knob: String,
    pub current: String,
    pub target: Option<TargetArg>,
    /// The other knobs at the same place (a rule's conditions read some).
    settings: Vec<Setting>,
    /// For a mount option: the mountpoint.
    pub mountpoint: Option<String>,
    /// For a CPU limit: the CFS period, µs.
    pub period_us: Option<u64>,
    /// For a resolver: the address the workload queries most.
    pub resolver: Option<String>,
}

impl Place {
    /// The knob's place for `workload` (on `device` for device and mount knobs); `None`
    /// where its value is unknown there: no advice without a current value.
    pub(super) fn find(
        knob: &Knob,
        workload: &Workload,
        device: Option<&str>,
        inventory: &Inventory,
        locator: &dyn Locator,
    ) -> Option<Self> {
        let identity = &workload.identity;
        let (settings, target, mountpoint) = match knob.scope {
            Scope::Node => (inventory.node.clone(), None, None),
            Scope::Netns => {
                let inode = identity.netns?;
                let ns = inventory.netns.iter().find(|n| n.netns == inode)?;
                let target = match (&identity.pod_uid, locator.netns_name(inode)) {
                    (Some(uid), _) => Some(arg("--pod", uid)),
                    (None, Some(name)) => Some(arg("--netns", &name)),
                    (None, None) => None,
                };
                (ns.settings.clone(), target, None)
            }
            Scope::Device => {
                let d = inventory
                    .devices
                    .iter()
                    .find(|d| Some(d.device.as_str()) == device)?;
                (d.settings.clone(), Some(arg("--device", &d.device)), None)
            }
            Scope::Mount => {
                let source = format!("/dev/{}", device?);
                let m = inventory.mounts.iter().find(|m| m.source == source)?;
                let target = arg("--mount", &m.mountpoint);
                (m.settings.clone(), Some(target), Some(m.mountpoint.clone()))
            }
            Scope::Cgroup => return Self::cpu_limit(workload, locator),
            Scope::Resolver => return Self::resolver(knob, workload),
        };
        let current = value_in(&settings, knob.name)?;
        Some(Self {
            scope: knob.scope,
            knob: knob.name.to_string(),
            current,
            target,
            settings,
            mountpoint,
            period_us: None,
            resolver: None,
        })
    }

    /// Whether the workload queries NodeLocal DNSCache: `on` when the resolver it asks
    /// most is the cache's address.
    fn resolver(knob: &Knob, workload: &Workload) -> Option<Self> {
        let dns = workload.signals.dns.as_ref()?;
        let (resolver, _) = dns.by_resolver.iter().max_by_key(|(_, r)| r.queries)?;
        let on = resolver.starts_with(NODE_LOCAL_DNS);
        Some(Self {
            scope: Scope::Resolver,
            knob: knob.name.to_string(),
            current: if on { "on" } else { "off" }.to_string(),
            target: None,
            settings: Vec::new(),
            mountpoint: None,
            period_us: None,
            resolver: Some(resolver.clone()),
        })
    }

    /// A container's CPU limit, as the probe read it with its throttling.
    fn cpu_limit(workload: &Workload, locator: &dyn Locator) -> Option<Self> {
        let cpu = workload.signals.cpu.as_ref()?;
        let (quota_ms, period_ms) = (cpu.quota_ms?, cpu.period_ms?);
        let us = |ms: f64| (ms * 1000.0).round() as u64;
        let path = workload.identity.cgroup_path.as_deref()?;
        let (dir, v2) = locator.cpu_dir(path)?;
        let (knob, current) = if v2 {
            ("cpu.max", format!("{} {}", us(quota_ms), us(period_ms)))
        } else {
            ("cpu.cfs_quota_us", us(quota_ms).to_string())
        };
        Some(Self {
            scope: Scope::Cgroup,
            knob: knob.to_string(),
            current,
            target: Some(arg("--cgroup", &display(&dir))),
            settings: Vec::new(),
            mountpoint: None,
            period_us: Some(us(period_ms)),
            resolver: None,
        })
    }

    /// Another knob's value at the same place.
    pub(super) fn sibling(&self, knob: &str) -> Option<String> {
        value_in(&self.settings, knob)
    }
}

fn value_in(settings: &[Setting], knob: &str) -> Option<String> {
    settings
        .iter()
        .find(|s| s.knob == knob)
        .map(|s| s.value.clone())
}

fn arg(option: &'static str, value: &str) -> TargetArg {
    TargetArg {
        option,
        value: value.to_string(),
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
