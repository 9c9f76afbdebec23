//! From kernel keys (cgroup ids, network namespaces) to workloads: cgroup id -> path ->
//! pod and container; network namespace -> the pod whose processes live in it.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
};

use crate::{
    workloads::cgroup::{CgroupPaths, parse_kube_path},
    workloads::procfs::Process,
};

/// What the agent knows about the node's processes, kept across scans so that a
/// workload that exits before the report is still named.
#[derive(Debug)]
pub struct Attributor {
    pub cgroups: CgroupPaths,
    host_netns: Option<u32>,
    /// The cgroup path that owns each namespace: the pod's cgroup when one pod lives
    /// there, `/` (the host) for the host namespace, else the closest cgroup holding all
    /// its processes.
    netns_owner: HashMap<u32, String>,
    /// Network namespaces seen for each cgroup path.
    cgroup_netns: HashMap<String, BTreeSet<u32>>,
    /// One live process per namespace, to read its `/proc/PID/net/*` counters.
    netns_pid: HashMap<u32, u32>,
}

impl Attributor {
    pub fn new(cgroups: CgroupPaths, host_netns: Option<u32>) -> Self {
        Self {
            cgroups,
            host_netns,
            netns_owner: HashMap::new(),
            cgroup_netns: HashMap::new(),
            netns_pid: HashMap::new(),
        }
    }

    /// The host's namespace: that of PID 1 under `proc_root`.
    pub fn host_netns(proc_root: &Path) -> Option<u32> {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(proc_root.join("1/ns/net"))
            .ok()
            .map(|m| m.ino() as u32)
    }

    /// Learns from a fresh process scan. Namespaces no longer seen keep their last owner.
    pub fn observe(&mut self, processes: &[Process]) {
        let mut by_netns: HashMap<u32, Vec<&Process>> = HashMap::new();
        for process in processes {
            by_netns.entry(process.netns).or_default().push(process);
            self.cgroup_netns
                .entry(process.cgroup.clone())
                .or_default()
                .insert(process.netns);
        }
        self.netns_pid.clear();
        for (netns, members) in by_netns {
            self.netns_pid.insert(netns, members[0].pid);
            let owner = if Some(netns) == self.host_netns {
                "/".to_string()
            } else {
                owner_of(&members)
            };
            self.netns_owner.insert(netns, owner);
        }
    }

    pub fn live_netns(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.netns_pid.iter().map(|(&netns, &pid)| (netns, pid))
    }

    /// Forgets a namespace that has been dead for the grace period.
    pub fn forget_netns(&mut self, netns: u32) {
        self.netns_owner.remove(&netns);
        self.netns_pid.remove(&netns);
    }

    /// Forgets a cgroup path that has been dead for the grace period.
    pub fn forget_cgroup(&mut self, path: &str) {
        self.cgroup_netns.remove(path);
    }

    pub fn netns_owner(&self, netns: u32) -> Option<&str> {
        self.netns_owner.get(&netns).map(String::as_str)
    }

    /// The namespace a cgroup's processes live in, if they share exactly one.
    pub fn netns_of_cgroup(&self, path: &str) -> Option<u32> {
        let set = self.cgroup_netns.get(path)?;
        (set.len() == 1).then(|| *set.iter().next().unwrap_or(&0))
    }

    /// The namespace of a pod: of any container process below its cgroup.
    pub fn netns_below(&self, prefix: &str) -> Option<u32> {
        let all: BTreeSet<u32> = self
            .cgroup_netns
            .iter()
            .filter(|(path, _)| is_within(path, prefix))
            .flat_map(|(_, set)| set.iter().copied())
            .collect();
        (all.len() == 1).then(|| *all.iter().next().unwrap_or(&0))
    }
}

/// Whether cgroup `path` is `prefix` or below it (`/` holds everything).
pub fn is_within(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The owner of a non-host namespace from the processes living in it.
fn owner_of(members: &[&Process]) -> String {
    let pods: BTreeSet<String> = members
        .iter()
        .filter_map(|p| parse_kube_path(&p.cgroup).pod_cgroup)
        .collect();
    if pods.len() == 1 {
        return pods.into_iter().next().unwrap_or_default();
    }
    common_ancestor(members.iter().map(|p| p.cgroup.as_str()))
}

/// Longest common `/`-separated prefix of cgroup paths (at least `/`).
fn common_ancestor<'a>(mut paths: impl Iterator<Item = &'a str>) -> String {
    let Some(first) = paths.next() else {
        return "/".to_string();
    };
    let mut common: Vec<&str> = first.split('/').filter(|s| !s.is_empty()).collect();
    for path in paths {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let shared = common
            .iter()
            .zip(&segments)
            .take_while(|(a, b)| a == b)
            .count();
        common.truncate(shared);
    }
    format!("/{}", common.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, netns: u32, cgroup: &str) -> Process {
        Process {
            pid,
            netns,
            cgroup: cgroup.to_string(),
        }
    }

    const POD: &str = "/kubepods.slice/kubepods-pod0b5a3f0e_52c2_4b7e_9f0a_6a1c2e3d4f5a.slice";

    #[test]
    fn a_namespace_belongs_to_the_pod_living_in_it() {
        let pause = format!("{POD}/cri-containerd-{}.scope", "a".repeat(64));
        let app = format!("{POD}/cri-containerd-{}.scope", "b".repeat(64));
        let root = crate::workloads::cgroup::cgroup2_mount().unwrap();
        let mut attributor = Attributor::new(CgroupPaths::new(root), Some(1));
        attributor.observe(&[
            process(10, 7, &pause),
            process(11, 7, &app),
            process(12, 1, "/system.slice/sshd.service"),
            process(13, 8, "/system.slice/a.service"),
            process(14, 8, "/system.slice/b.service"),
        ]);
        assert_eq!(attributor.netns_owner(7), Some(POD));
        assert_eq!(attributor.netns_owner(1), Some("/"));
        assert_eq!(attributor.netns_owner(8), Some("/system.slice"));
        assert_eq!(attributor.netns_of_cgroup(&app), Some(7));
        assert_eq!(attributor.netns_below(POD), Some(7));
        assert_eq!(attributor.netns_owner(99), None);
        // A namespace whose processes are gone keeps its owner.
        attributor.observe(&[]);
        assert_eq!(attributor.netns_owner(7), Some(POD));
        assert_eq!(attributor.live_netns().count(), 0);
    }

    #[test]
    fn common_ancestor_of_paths() {
        assert_eq!(common_ancestor(["/a/b/c", "/a/b/d"].into_iter()), "/a/b");
        assert_eq!(common_ancestor(["/a/b", "/x"].into_iter()), "/");
        assert_eq!(common_ancestor(std::iter::empty()), "/");
        assert!(is_within("/a/b", "/a") && !is_within("/ab", "/a") && is_within("/x", "/"));
    }
}
