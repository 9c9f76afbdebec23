//! The inventory: every knob of the table that can be read on this node, at its scope
//! (the node, each pod's network namespace, each block device, each mount, each cpu
//! cgroup), next to the guides' recommendation.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::table::{KNOBS, Knob, Scope, knob_named};
use crate::signals::cpu_throttle::cpustat::CpuLimit;

/// One knob's current value somewhere.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Setting {
    pub knob: String,
    pub value: String,
    pub recommended: Option<String>,
    /// `true` when the value does not follow the recommendation; `null` without one.
    pub deviates: Option<bool>,
    pub signal: String,
}

impl Setting {
    pub(super) fn new(knob: &Knob, value: String) -> Self {
        // Multi-value sysctls are tab-separated; show them as users write them.
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        Self {
            knob: knob.name.to_string(),
            recommended: knob.recommendation.describe(),
            deviates: knob.recommendation.followed_by(&value).map(|ok| !ok),
            value,
            signal: knob.signal(),
        }
    }
}

/// The settings of one network namespace.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct NetnsSettings {
    pub netns: u32,
    /// The cgroup path of the namespace's owner (the pod's cgroup, `/` for the host).
    pub owner: Option<String>,
    pub settings: Vec<Setting>,
    /// Why the namespace's sysctls could not be read (entering it needs
    /// `CAP_SYS_ADMIN`); `settings` is empty then.
    pub error: Option<String>,
}

/// A node knob that exists in the guides but could not be read here, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Unreadable {
    pub knob: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct DeviceSettings {
    pub device: String,
    pub settings: Vec<Setting>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct MountSettings {
    pub mountpoint: String,
    pub source: String,
    pub fstype: String,
    pub settings: Vec<Setting>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct CgroupSettings {
    pub cgroup_path: String,
    pub settings: Vec<Setting>,
}

/// Everything the inventory found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub(crate) struct Inventory {
    pub node: Vec<Setting>,
    /// Node knobs that could not be read, with the reason.
    pub node_unreadable: Vec<Unreadable>,
    pub netns: Vec<NetnsSettings>,
    pub devices: Vec<DeviceSettings>,
    pub mounts: Vec<MountSettings>,
    pub cgroups: Vec<CgroupSettings>,
}

fn knobs(scope: Scope) -> impl Iterator<Item = &'static Knob> {
    KNOBS
        .iter()
        .filter(move |k| k.scope == scope && k.inventoried)
}

/// Reads a sysctl through `/proc/sys` of the calling thread's network namespace.
fn sysctl(name: &str) -> Option<String> {
    let path = Path::new("/proc/sys").join(name.replace('.', "/"));
    fs::read_to_string(path).ok().map(|v| v.trim().to_string())
}

/// The node's global sysctls: the ones read, and the ones that could not be.
///
/// Global `net.core` sysctls exist only in the node's own network namespace: from a
/// pod's (the DaemonSet's) they are absent, which is said, not hidden.
pub(crate) fn node_settings() -> (Vec<Setting>, Vec<Unreadable>) {
    let own_netns = !in_host_netns();
    let mut settings = Vec::new();
    let mut unreadable = Vec::new();
    for knob in knobs(Scope::Node) {
        let path = Path::new("/proc/sys").join(knob.name.replace('.', "/"));
        match fs::read_to_string(&path) {
            Ok(value) => settings.push(Setting::new(knob, value.trim().to_string())),
            Err(err) => unreadable.push(Unreadable {
                knob: knob.name.to_string(),
                reason: match err.kind() {
                    std::io::ErrorKind::NotFound if knob.name.starts_with("net.netfilter.") => {
                        "nf_conntrack is not loaded: no connection is tracked".to_string()
                    }
                    std::io::ErrorKind::NotFound if own_netns && knob.name.starts_with("net.") => {
                        "visible only from the node's network namespace, and tuneprobe runs \
                         in a network namespace of its own"
                            .to_string()
                    }
                    std::io::ErrorKind::NotFound => "not on this kernel".to_string(),
                    _ => err.to_string(),
                },
            }),
        }
    }
    (settings, unreadable)
}

/// Whether this process shares the network namespace of PID 1 (the node's init, with
/// the host PID namespace). Where PID 1 cannot be looked at, the kernel tells anyway:
/// `net.core.netdev_max_backlog` is registered in the initial namespace only.
fn in_host_netns() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let inode = |p: &str| fs::metadata(p).map(|m| m.ino()).ok();
    match (inode("/proc/self/ns/net"), inode("/proc/1/ns/net")) {
        (Some(own), Some(init)) => own == init,
        _ => Path::new("/proc/sys/net/core/netdev_max_backlog").exists(),
    }
}

/// The per-namespace sysctls of the namespace that `pid` lives in, read from a thread
/// that joins it (a network sysctl shows the reader's namespace).
pub(crate) fn netns_settings(proc_root: &Path, pid: u32) -> std::io::Result<Vec<Setting>> {
    let ns = proc_root.join(pid.to_string()).join("ns/net");
    crate::workloads::netns::run_in(&ns, || {
        Ok(knobs(Scope::Netns)
            .filter_map(|k| sysctl(k.name).map(|v| Setting::new(k, v)))
            .collect())
    })
}

/// Queue settings of every whole block device (partitions share their disk's queue).
pub(crate) fn device_settings(sys: &Path) -> Vec<DeviceSettings> {
    let Ok(entries) = fs::read_dir(sys.join("block")) else {
        return Vec::new();
    };
    let mut devices: Vec<DeviceSettings> = entries
        .flatten()
        .filter_map(|entry| {
            let device = entry.file_name().to_string_lossy().into_owned();
            let settings: Vec<Setting> = knobs(Scope::Device)
                .filter_map(|k| {
                    let raw = fs::read_to_string(entry.path().join(k.name)).ok()?;
                    let value = if k.name == "queue/scheduler" {
                        crate::kernel::devices::active_scheduler(&raw)?
                    } else {
                        raw.trim().to_string()
                    };
                    Some(Setting::new(k, value))
                })
                .collect();
            (!settings.is_empty()).then_some(DeviceSettings { device, settings })
        })
        .collect();
    devices.sort_by(|a, b| a.device.cmp(&b.device));
    devices
}

/// Mount options of filesystems on block devices (`/dev/...`), from mountinfo.
pub(crate) fn mount_settings(mountinfo: &str) -> Vec<MountSettings> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split_whitespace().collect();
            let mountpoint = *fields.get(4)?;
            let options = *fields.get(5)?;
            let mut right = right.split_whitespace();
            let (fstype, source) = (right.next()?, right.next()?);
            if !source.starts_with("/dev/") {
                return None;
            }
            let settings = knobs(Scope::Mount)
                .map(|k| {
                    let on = options.split(',').any(|o| o == k.name);
                    Setting::new(k, if on { "on" } else { "off" }.to_string())
                })
                .collect();
            Some(MountSettings {
                mountpoint: mountpoint.to_string(),
                source: source.to_string(),
                fstype: fstype.to_string(),
                settings,
            })
        })
        .collect()
}

/// CPU limits, as `cpu.max` (`"QUOTA PERIOD"` in µs, `"max PERIOD"` without a quota), of
/// every container cgroup and of any other cgroup that has a quota: a limit added to a
/// running container is a change of its `cpu.max` from `max`.
pub(crate) fn cgroup_settings(
    cpu_root: &Path,
    paths: impl Iterator<Item = String>,
) -> Vec<CgroupSettings> {
    let Some(knob) = knob_named("cpu.max") else {
        return Vec::new();
    };
    let mut out: Vec<CgroupSettings> = paths
        .filter_map(|path| {
            let limit = CpuLimit::read(&cpu_root.join(path.trim_start_matches('/')))?;
            let container = crate::workloads::cgroup::parse_kube_path(&path)
                .container_id
                .is_some();
            let quota = match limit.quota_us {
                Some(quota) => quota.to_string(),
                None if container => "max".to_string(),
                None => return None,
            };
            Some(CgroupSettings {
                settings: vec![Setting::new(knob, format!("{quota} {}", limit.period_us))],
                cgroup_path: path,
            })
        })
        .collect();
    out.sort_by(|a, b| a.cgroup_path.cmp(&b.cgroup_path));
    out
}

/// Reads everything: `netns` lists (namespace inode, a pid in it, its owner path).
pub(crate) fn inventory(
    proc_root: &Path,
    sys: &Path,
    cpu_root: Option<(PathBuf, Vec<String>)>,
    netns: &[(u32, u32, Option<String>)],
) -> Inventory {
    let mountinfo = fs::read_to_string(proc_root.join("self/mountinfo")).unwrap_or_default();
    let mut by_netns: BTreeMap<u32, NetnsSettings> = BTreeMap::new();
    for (inode, pid, owner) in netns {
        if by_netns.contains_key(inode) {
            continue;
        }
        let (settings, error) = match netns_settings(proc_root, *pid) {
            Ok(settings) => (settings, None),
            Err(err) if err.raw_os_error() == Some(libc::EPERM) => (
                Vec::new(),
                Some(format!(
                    "cannot enter the namespace to read its sysctls: setns needs \
                     CAP_SYS_ADMIN ({err})"
                )),
            ),
            // The process ended between the scan and now: nothing to say.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => (Vec::new(), Some(err.to_string())),
        };
        by_netns.insert(
            *inode,
            NetnsSettings {
                netns: *inode,
                owner: owner.clone(),
                settings,
                error,
            },
        );
    }
    let (node, node_unreadable) = node_settings();
    Inventory {
        node,
        node_unreadable,
        netns: by_netns.into_values().collect(),
        devices: device_settings(sys),
        mounts: mount_settings(&mountinfo),
        cgroups: cpu_root
            .map(|(root, paths)| cgroup_settings(&root, paths.into_iter()))
            .unwrap_or_default(),
    }
}

/// The inventory of this node: namespaces found through `/proc` and attributed to their
/// owners, cpu cgroups from the cpu hierarchy.
pub(crate) fn this_node() -> Result<Inventory, std::io::Error> {
    use crate::{
        workloads::attribution::Attributor,
        workloads::cgroup::{CgroupPaths, Hierarchies},
        workloads::procfs,
    };
    let proc_root = Path::new("/proc");
    let hierarchies = Hierarchies::of_this_node();
    let unified = hierarchies
        .unified
        .clone()
        .ok_or_else(|| std::io::Error::other("cgroup v2 is not mounted"))?;
    let mut attributor =
        Attributor::new(CgroupPaths::new(unified), Attributor::host_netns(proc_root));
    attributor.observe(&procfs::processes(proc_root));
    let netns: Vec<(u32, u32, Option<String>)> = attributor
        .live_netns()
        .map(|(netns, pid)| {
            (
                netns,
                pid,
                attributor.netns_owner(netns).map(str::to_string),
            )
        })
        .collect();
    let cpu = hierarchies.cpu.map(|root| {
        let paths = CgroupPaths::new(root.clone());
        let known: Vec<String> = paths.known().map(|(_, p)| p.to_string()).collect();
        (root, known)
    });
    Ok(inventory(proc_root, Path::new("/sys"), cpu, &netns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mount_options_of_block_filesystems_only() {
        let mountinfo = "\
22 1 254:0 / / rw,noatime - ext4 /dev/vda rw
23 22 0:21 / /proc rw - proc proc rw
24 22 254:16 / /data rw,relatime - xfs /dev/vdb rw";
        let mounts = mount_settings(mountinfo);
        assert_eq!(mounts.len(), 2);
        let root = &mounts[0];
        assert_eq!(
            (root.mountpoint.as_str(), root.fstype.as_str()),
            ("/", "ext4")
        );
        let noatime = root.settings.iter().find(|s| s.knob == "noatime").unwrap();
        assert_eq!(
            (noatime.value.as_str(), noatime.deviates),
            ("on", Some(false))
        );
        let data_noatime = mounts[1]
            .settings
            .iter()
            .find(|s| s.knob == "noatime")
            .unwrap();
        assert_eq!(data_noatime.deviates, Some(true));
    }

    #[test]
    fn reads_this_node() {
        let (node, unreadable) = node_settings();
        // In the node's own network namespace every global net sysctl is there.
        assert!(
            unreadable.iter().all(|u| !u.knob.starts_with("net.core")),
            "{unreadable:?}"
        );
        let backlog = node
            .iter()
            .find(|s| s.knob == "net.core.netdev_max_backlog")
            .unwrap();
        assert!(backlog.value.parse::<u64>().is_ok());
        let mine = netns_settings(Path::new("/proc"), std::process::id()).unwrap();
        let somaxconn = mine
            .iter()
            .find(|s| s.knob == "net.core.somaxconn")
            .unwrap();
        assert_eq!(Some(somaxconn.value.clone()), sysctl("net.core.somaxconn"));
        assert!(
            device_settings(Path::new("/sys"))
                .iter()
                .any(|d| d.settings.iter().any(|s| s.knob == "queue/scheduler"))
        );
    }
}
