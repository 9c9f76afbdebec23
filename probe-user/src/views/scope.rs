//! `serve --cgroup-scope PATH`: export only the workloads at or below one cgroup path.
//!
//! On a node shared with things that are not ours to publish (another team's slice, a
//! test harness running several agents side by side) the agent still attaches node-wide:
//! the kernel programs count per cgroup, and nothing is gained by teaching them a scope.
//! The scope is applied to what leaves the agent, after attribution, so every count of a
//! workload inside the scope is exactly what an unscoped agent would report.

use crate::{report::Snapshot, tuning::Inventory, workloads::attribution::is_within};

/// A cgroup path (relative to the cgroup mount, as in `cgroup_path`) and everything
/// below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupScope {
    path: String,
}

impl CgroupScope {
    /// `PATH` as given: leading slash optional, trailing slashes ignored.
    pub(crate) fn new(path: &str) -> Self {
        let trimmed = path.trim().trim_end_matches('/');
        let path = if trimmed.starts_with('/') {
            trimmed.to_string()
        } else {
            format!("/{trimmed}")
        };
        Self { path }
    }

    pub(crate) fn contains(&self, cgroup_path: &str) -> bool {
        is_within(cgroup_path, &self.path)
    }

    /// Keeps the workloads at or below the scope. Entries without a cgroup path (a
    /// network namespace with no known owner, the unattributable rest) cannot be shown
    /// to be inside it and are dropped.
    pub(crate) fn retain_workloads(&self, snapshot: &mut Snapshot) {
        snapshot.workloads.retain(|w| {
            w.identity
                .cgroup_path
                .as_deref()
                .is_some_and(|p| self.contains(p))
        });
    }

    /// Keeps the knobs whose scope belongs to the workloads in scope: cgroups at or
    /// below it, network namespaces owned by a pod in it. Node, device and mount knobs
    /// are shared by everything on the node, the scoped workloads included, and stay.
    pub(crate) fn retain_knobs(&self, inventory: &mut Inventory) {
        inventory.cgroups.retain(|c| self.contains(&c.cgroup_path));
        inventory
            .netns
            .retain(|ns| ns.owner.as_deref().is_some_and(|o| self.contains(o)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        report::Workload,
        tuning::{CgroupSettings, NetnsSettings},
    };

    #[test]
    fn keeps_the_subtree_only() {
        let scope = CgroupScope::new("tp-a/kubepods.slice/");
        assert_eq!(scope, CgroupScope::new("/tp-a/kubepods.slice"));
        let workload = |path: Option<&str>| Workload {
            identity: crate::workloads::identity::Identity {
                cgroup_path: path.map(str::to_string),
                ..Default::default()
            },
            ..Workload::default()
        };
        let mut snapshot = Snapshot {
            duration_s: 1.0,
            probes: vec![],
            map_overflows: Default::default(),
            gc_deleted_entries: Default::default(),
            program_stats: vec![],
            workloads: vec![
                workload(Some("/tp-a/kubepods.slice")),
                workload(Some("/tp-a/kubepods.slice/pod1/c1")),
                // A sibling whose name merely starts the same.
                workload(Some("/tp-a/kubepods.slice2/pod1")),
                workload(Some("/tp-b/kubepods.slice/pod2")),
                workload(Some("/")),
                workload(None),
            ],
        };
        scope.retain_workloads(&mut snapshot);
        let kept: Vec<_> = snapshot
            .workloads
            .iter()
            .map(|w| w.identity.cgroup_path.clone().unwrap())
            .collect();
        assert_eq!(
            kept,
            ["/tp-a/kubepods.slice", "/tp-a/kubepods.slice/pod1/c1"]
        );
    }

    #[test]
    fn keeps_the_knobs_of_the_subtree_only() {
        let scope = CgroupScope::new("tp-a/kubepods.slice/");
        let mut inventory = Inventory {
            cgroups: vec![
                CgroupSettings {
                    cgroup_path: "/tp-a/kubepods.slice/pod1/c1".into(),
                    settings: vec![],
                },
                CgroupSettings {
                    cgroup_path: "/tp-b/kubepods.slice/pod2/c2".into(),
                    settings: vec![],
                },
            ],
            netns: vec![
                NetnsSettings {
                    netns: 1,
                    owner: Some("/tp-a/kubepods.slice/pod1".into()),
                    settings: vec![],
                    error: None,
                },
                NetnsSettings {
                    netns: 2,
                    owner: Some("/".into()),
                    settings: vec![],
                    error: None,
                },
                NetnsSettings {
                    netns: 3,
                    owner: None,
                    settings: vec![],
                    error: None,
                },
            ],
            ..Inventory::default()
        };
        scope.retain_knobs(&mut inventory);
        assert_eq!(inventory.cgroups.len(), 1);
        assert_eq!(
            inventory.cgroups[0].cgroup_path,
            "/tp-a/kubepods.slice/pod1/c1"
        );
        assert_eq!(
            inventory.netns.iter().map(|n| n.netns).collect::<Vec<_>>(),
            [1]
        );
    }

    #[test]
    fn the_root_scope_keeps_everything_with_a_path() {
        let scope = CgroupScope::new("/");
        assert!(scope.contains("/anything/below"));
        assert!(scope.contains("/"));
    }
}
