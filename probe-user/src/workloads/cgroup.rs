//! Cgroups: where cgroup v2 is mounted, cgroup id -> path, and what the kubelet's
//! naming says about a path (pod UID, container ID, QoS class).
//!
//! The programs key everything by cgroup v2 id (a socket's cgroup and
//! `bpf_get_current_cgroup_id()` are v2 on hybrid nodes too). The id is the inode number
//! of the cgroup's directory in the v2 mount.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Finds the node's cgroup v2 mount: `/sys/fs/cgroup` on unified nodes,
/// `/sys/fs/cgroup/unified` on hybrid ones (below `--host-root` when one is set).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mount_in(&mountinfo)
}

fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    cgroup2_mount_entry(mountinfo).map(|(mountpoint, _)| mountpoint)
}

/// The node's cgroup v2 mount, and its root as mountinfo shows it: relative to this
/// process's cgroup namespace, so `/../../..` where the node's hierarchy is mounted into
/// a container with a namespace of its own.
fn cgroup2_mount_entry(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS... - FSTYPE SOURCE SUPEROPTS`
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mut fields = left.split_whitespace();
            let root = fields.nth(3)?;
            let mountpoint = PathBuf::from(unescape_mount(fields.next()?));
            (fstype == "cgroup2" && crate::workloads::host::is_under_root(&mountpoint))
                .then(|| (mountpoint, unescape_mount(root)))
        })
        // Prefer the shortest: a container may also see nested cgroup2 mounts.
        .min_by_key(|(p, _)| p.as_os_str().len())
}

/// This process's cgroup namespace root, as a path of the node's v2 hierarchy: `/`
/// unless tuneprobe runs in a cgroup namespace of its own (a non-privileged container
/// on a cgroup v2 node, `kubectl debug`). Found once.
pub fn namespace_root() -> &'static str {
    static ROOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let own = cgroup_v2_path(&own).unwrap_or_else(|| "/".into());
        match find_namespace_root(&mountinfo, &own, std::process::id()) {
            Ok(root) => {
                if root != "/" {
                    log::info!("in a cgroup namespace rooted at {root} of the node's hierarchy");
                }
                root
            }
            Err(err) => {
                log::warn!("{err}");
                "/".to_string()
            }
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum NamespaceRootError {
    #[error(
        "tuneprobe runs in a cgroup namespace of its own, and no cgroup at depth {depth} \
         of {mount} holds this process: other processes' cgroups (/proc/PID/cgroup) \
         cannot be placed in the node's hierarchy, so network namespaces are not \
         attributed to pods"
    )]
    NotFound { mount: String, depth: usize },
    #[error(
        "the cgroup v2 mount at {mount} (root {root}) is not the node's hierarchy: mount \
         the node's /sys/fs/cgroup there (or use --host-root)"
    )]
    NotTheNodes { mount: String, root: String },
}

/// Where this process's cgroup namespace root sits in the node's hierarchy.
///
/// The kernel shows a mount's root relative to the reader's namespace root: a node's
/// hierarchy mounted into a container whose namespace root is `/a/b/c` shows as
/// `/../../..`, three levels. The namespace root is then the cgroup three levels down
/// (plus this process's own path inside its namespace, `own`) whose `cgroup.procs`
/// lists this process.
fn find_namespace_root(mountinfo: &str, own: &str, pid: u32) -> Result<String, NamespaceRootError> {
    let Some((mount, root)) = cgroup2_mount_entry(mountinfo) else {
        return Ok("/".into());
    };
    let components: Vec<&str> = root.split('/').filter(|c| !c.is_empty()).collect();
    let depth = components.iter().take_while(|c| **c == "..").count();
    if depth == 0 {
        // No namespace of our own, or a mount of our namespace's own view (then only
        // its subtree is visible, and every path in it is relative to it alike).
        return Ok("/".into());
    }
    if depth != components.len() {
        return Err(NamespaceRootError::NotTheNodes {
            mount: mount.display().to_string(),
            root,
        });
    }
    let own: Vec<&str> = own
        .split('/')
        .filter(|c| !c.is_empty() && *c != "..")
        .collect();
    let pid = pid.to_string();
    // Breadth first, to the namespace root's depth plus our own depth below it.
    let mut level = vec![(mount.clone(), Vec::<String>::new())];
    for _ in 0..depth + own.len() {
        level = level
            .into_iter()
            .flat_map(|(dir, path)| {
                fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(move |e| {
                        let mut path = path.clone();
                        path.push(e.file_name().to_string_lossy().into_owned());
                        (e.path(), path)
                    })
            })
            .collect();
    }
    level
        .into_iter()
        .filter(|(_, path)| {
            path[depth..]
                .iter()
                .map(String::as_str)
                .eq(own.iter().copied())
        })
        .find(|(dir, _)| {
            fs::read_to_string(dir.join("cgroup.procs"))
                .is_ok_and(|procs| procs.lines().any(|line| line.trim() == pid))
        })
        .map(|(_, path)| format!("/{}", path[..depth].join("/")))
        .ok_or(NamespaceRootError::NotFound {
            mount: mount.display().to_string(),
            depth,
        })
}

/// A path from `/proc/PID/cgroup` (relative to this process's cgroup namespace, such as
/// `/../../kubepods.slice/...`) as a path of the node's hierarchy.
pub fn node_path(namespace_root: &str, path: &str) -> String {
    if namespace_root == "/" && !path.starts_with("/..") {
        return path.to_string();
    }
    let mut out: Vec<&str> = Vec::new();
    for component in namespace_root.split('/').chain(path.split('/')) {
        match component {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

/// Which hierarchy a kernel cgroup id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hierarchy {
    /// cgroup v2: sockets, and netns owners.
    Unified,
    Cpu,
    Blkio,
}

/// The v2 entry (`0::/path`) of a `/proc/PID/cgroup` file.
pub fn cgroup_v2_path(contents: &str) -> Option<String> {
    contents
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim_end().to_string())
}

/// The hierarchies whose ids the programs report: the v2 one (sockets), and the ones
/// holding the cpu and blkio controllers (on hybrid nodes, v1 hierarchies with ids of
/// their own; on unified nodes, the v2 one again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchies {
    pub unified: Option<PathBuf>,
    pub cpu: Option<PathBuf>,
    pub blkio: Option<PathBuf>,
}

impl Hierarchies {
    pub fn of_this_node() -> Self {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::from_mountinfo(&mountinfo)
    }

    pub fn from_mountinfo(mountinfo: &str) -> Self {
        let unified = cgroup2_mount_in(mountinfo);
        let v1 = |controller: &str| {
            mountinfo.lines().find_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let mut fields = right.split_whitespace();
                let (fstype, _source, options) = (fields.next()?, fields.next()?, fields.next()?);
                let mountpoint = PathBuf::from(unescape_mount(left.split_whitespace().nth(4)?));
                (fstype == "cgroup"
                    && options.split(',').any(|o| o == controller)
                    && crate::workloads::host::is_under_root(&mountpoint))
                .then_some(mountpoint)
            })
        };
        Self {
            cpu: v1("cpu").or_else(|| unified.clone()),
            blkio: v1("blkio").or_else(|| unified.clone()),
            unified,
        }
    }
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Maps cgroup v2 ids to paths relative to the v2 mount (`/kubepods.slice/...`).
///
/// Built by walking the hierarchy; ids that are not found are looked up again on the
/// next [`refresh`](Self::refresh), and paths of cgroups that disappear are kept, so a
/// short-lived container is still named in the report.
#[derive(Debug)]
pub struct CgroupPaths {
    root: PathBuf,
    by_id: HashMap<u64, String>,
    /// Ids a walk did not find (removed before it), and since when: not walked for
    /// again, and dead from that moment on.
    missing: HashMap<u64, std::time::Instant>,
    /// Known cgroups that a later walk no longer found, and since when.
    gone: HashMap<u64, std::time::Instant>,
    /// The latest id seen at each path (a path re-created gets a new id).
    by_path: HashMap<String, u64>,
}

impl CgroupPaths {
    pub fn new(root: PathBuf) -> Self {
        let mut paths = Self {
            root,
            by_id: HashMap::new(),
            missing: HashMap::new(),
            gone: HashMap::new(),
            by_path: HashMap::new(),
        };
        paths.refresh();
        paths
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Walks the hierarchy again, adding cgroups created since the last walk and noting
    /// the ones removed since.
    pub fn refresh(&mut self) {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = fs::symlink_metadata(&dir) else {
                continue;
            };
            let relative = dir
                .strip_prefix(&self.root)
                .map_or_else(|_| "/".to_string(), |p| format!("/{}", p.display()));
            seen.insert(meta.ino());
            self.by_path.insert(relative.clone(), meta.ino());
            self.by_id.insert(meta.ino(), relative);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        let now = std::time::Instant::now();
        self.missing.retain(|id, _| !seen.contains(id));
        for id in self.by_id.keys() {
            if seen.contains(id) {
                self.gone.remove(id);
            } else {
                self.gone.entry(*id).or_insert(now);
            }
        }
    }

    /// How long ago the cgroup at `path` was removed; `None` while it exists (or if it
    /// was never seen).
    pub fn gone_for(&self, path: &str) -> Option<std::time::Duration> {
        let id = self.by_path.get(path)?;
        self.gone.get(id).map(std::time::Instant::elapsed)
    }

    /// How long the cgroup `id` has been dead: removed since a walk saw it, or never
    /// found by a walk (then counted from the first lookup). `None` while it exists or
    /// if it was never looked up.
    pub fn dead_for(&self, id: u64) -> Option<std::time::Duration> {
        self.gone
            .get(&id)
            .or_else(|| self.missing.get(&id))
            .map(std::time::Instant::elapsed)
    }

    /// Forgets everything about the dead cgroup `id` (after its grace period), so that
    /// churn does not grow this map. Returns its path if no newer cgroup lives there.
    pub fn forget(&mut self, id: u64) -> Option<String> {
        self.gone.remove(&id);
        self.missing.remove(&id);
        let path = self.by_id.remove(&id)?;
        if self.by_path.get(&path) == Some(&id) {
            self.by_path.remove(&path);
            return Some(path);
        }
        None
    }

    /// Every cgroup that has been dead for longer than `grace`.
    pub fn dead_longer_than(&self, grace: std::time::Duration) -> Vec<u64> {
        self.gone
            .iter()
            .chain(&self.missing)
            .filter(|(_, since)| since.elapsed() > grace)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Whether a walk ever saw a cgroup at `path`.
    pub fn knows(&self, path: &str) -> bool {
        self.by_path.contains_key(path)
    }

    /// Path of `id`, walking the hierarchy once more the first time it is not known.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if !self.by_id.contains_key(&id) && !self.missing.contains_key(&id) {
            self.missing.insert(id, std::time::Instant::now());
            self.refresh();
        }
        self.by_id.get(&id).cloned()
    }

    /// Every cgroup seen so far, as (id, path).
    pub fn known(&self) -> impl Iterator<Item = (u64, &str)> {
        self.by_id.iter().map(|(&id, path)| (id, path.as_str()))
    }

    /// Id of the cgroup at `path` (relative to the mount), if it exists or existed
    /// during an earlier walk.
    pub fn id_of(&self, path: &str) -> Option<u64> {
        let full = self.root.join(path.trim_start_matches('/'));
        fs::metadata(full)
            .ok()
            .map(|m| m.ino())
            .or_else(|| self.by_path.get(path).copied())
    }
}

/// Kubernetes QoS class, from the kubelet's cgroup naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What a cgroup path says about the workload it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KubeIdentity {
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    pub qos: Option<QosClass>,
    /// Path of the pod's own cgroup (the prefix up to the pod segment).
    pub pod_cgroup: Option<String>,
}

impl KubeIdentity {
    pub fn is_pod(&self) -> bool {
        self.pod_uid.is_some()
    }
}

/// Parses kubelet cgroup naming for both cgroup drivers and the common runtimes:
///
/// - systemd: `.../kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<64hex>.scope`
///   (`crio-<id>.scope`, `docker-<id>.scope`; Guaranteed pods sit under `kubepods.slice` directly);
/// - cgroupfs: `.../kubepods/burstable/pod<uid>/<64hex>` (or `crio-<id>`, `docker-<id>`).
///
/// Anything else (system services, the host) yields an empty identity. The kubelet's
/// hierarchy may sit below a prefix (kind, nested runtimes), so it is found anywhere.
pub fn parse_kube_path(path: &str) -> KubeIdentity {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(kubepods) = segments
        .iter()
        .position(|s| *s == "kubepods" || *s == "kubepods.slice")
    else {
        return KubeIdentity::default();
    };
    let mut identity = KubeIdentity {
        qos: Some(QosClass::Guaranteed),
        ..Default::default()
    };
    for (i, segment) in segments.iter().enumerate().skip(kubepods + 1) {
        let unit = segment.strip_suffix(".slice").unwrap_or(segment);
        if identity.pod_uid.is_none() {
            match unit {
                "burstable" | "kubepods-burstable" => identity.qos = Some(QosClass::Burstable),
                "besteffort" | "kubepods-besteffort" => identity.qos = Some(QosClass::BestEffort),
                _ => {
                    let Some(uid) = pod_uid(unit) else {
                        return KubeIdentity::default();
                    };
                    identity.pod_uid = Some(uid);
                    identity.pod_cgroup = Some(format!("/{}", segments[..=i].join("/")));
                }
            }
        } else {
            identity.container_id = container_id(segment);
            // Deeper levels (a container's own sub-cgroups) belong to that container.
            break;
        }
    }
    if identity.pod_uid.is_none() {
        // `kubepods.slice` or a QoS slice itself: not a pod.
        return KubeIdentity::default();
    }
    identity
}

/// `kubepods-burstable-pod<uid_with_underscores>` (systemd) or `pod<uid>` (cgroupfs).
fn pod_uid(unit: &str) -> Option<String> {
    let raw = unit
        .rsplit_once("-pod")
        .map(|(_, uid)| uid)
        .or_else(|| unit.strip_prefix("pod"))?;
    let uid = raw.replace('_', "-");
    let valid = uid.len() == 36
        && uid.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    // Static pods use a 32-hex config hash instead of a UUID.
    let static_pod = uid.len() == 32 && uid.chars().all(|c| c.is_ascii_hexdigit());
    (valid || static_pod).then_some(uid)
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, `<id>`, `crio-<id>`.
fn container_id(segment: &str) -> Option<String> {
    let unit = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = ["cri-containerd-", "crio-", "docker-", "containerd-"]
        .iter()
        .find_map(|prefix| unit.strip_prefix(prefix))
        .unwrap_or(unit);
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b5a3f0e-52c2-4b7e-9f0a-6a1c2e3d4f5a";
    const CID: &str = "4f2ad8c6b0e14d38a5c9f7e2b1d0c3a4f2ad8c6b0e14d38a5c9f7e2b1d0c3a4f";

    fn uid_underscored() -> String {
        UID.replace('-', "_")
    }

    #[test]
    fn systemd_driver_every_runtime_and_qos() {
        let u = uid_underscored();
        for (runtime, qos_slice, qos) in [
            (
                "cri-containerd",
                "kubepods-burstable.slice/",
                QosClass::Burstable,
            ),
            ("crio", "kubepods-besteffort.slice/", QosClass::BestEffort),
            ("docker", "", QosClass::Guaranteed),
        ] {
            let qos_prefix = match qos {
                QosClass::Burstable => "kubepods-burstable-",
                QosClass::BestEffort => "kubepods-besteffort-",
                QosClass::Guaranteed => "kubepods-",
            };
            let pod = format!("/kubepods.slice/{qos_slice}{qos_prefix}pod{u}.slice");
            let path = format!("{pod}/{runtime}-{CID}.scope");
            let id = parse_kube_path(&path);
            assert_eq!(id.pod_uid.as_deref(), Some(UID), "{path}");
            assert_eq!(id.container_id.as_deref(), Some(CID), "{path}");
            assert_eq!(id.qos, Some(qos), "{path}");
            assert_eq!(id.pod_cgroup.as_deref(), Some(pod.as_str()), "{path}");
            // The pod's own cgroup: a pod, no container.
            let pod_only = parse_kube_path(&pod);
            assert_eq!(pod_only.pod_uid.as_deref(), Some(UID));
            assert_eq!(pod_only.container_id, None);
        }
    }

    #[test]
    fn cgroupfs_driver_every_runtime_and_qos() {
        for (qos_dir, qos) in [
            ("burstable/", QosClass::Burstable),
            ("besteffort/", QosClass::BestEffort),
            ("", QosClass::Guaranteed),
        ] {
            for container in [
                CID.to_string(),
                format!("crio-{CID}"),
                format!("docker-{CID}"),
            ] {
                let path = format!("/kubepods/{qos_dir}pod{UID}/{container}");
                let id = parse_kube_path(&path);
                assert_eq!(id.pod_uid.as_deref(), Some(UID), "{path}");
                assert_eq!(id.container_id.as_deref(), Some(CID), "{path}");
                assert_eq!(id.qos, Some(qos), "{path}");
            }
        }
    }

    #[test]
    fn nested_prefix_and_container_subcgroups() {
        let path = format!(
            "/tuneprobe-test-1/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{CID}.scope/init",
            uid_underscored()
        );
        let id = parse_kube_path(&path);
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        assert_eq!(id.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn static_pod_hash_uid() {
        let hash = "8d5f0c7e3a1b4c2d9e6f0a1b2c3d4e5f";
        let id = parse_kube_path(&format!("/kubepods/burstable/pod{hash}/{CID}"));
        assert_eq!(id.pod_uid.as_deref(), Some(hash));
    }

    #[test]
    fn non_pod_paths() {
        for path in [
            "/",
            "/system.slice/containerd.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/burstable",
            "/kubepods/burstable/podnot-a-uid/abc",
            "/docker/4f2ad8c6b0e14d38a5c9f7e2b1d0c3a4f2ad8c6b0e14d38a5c9f7e2b1d0c3a4f",
        ] {
            assert_eq!(parse_kube_path(path), KubeIdentity::default(), "{path}");
        }
        // A conmon or other non-container scope under a pod: the pod, no container id.
        let conmon = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{CID}.scope",
            uid_underscored()
        );
        let id = parse_kube_path(&conmon);
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        assert_eq!(id.container_id, None);
    }

    #[test]
    fn finds_cgroup2_mount_in_hybrid_and_unified_mountinfo() {
        let hybrid = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount_in("1 2 0:3 / /proc rw - proc proc rw"), None);
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
    }

    #[test]
    fn proc_paths_relative_to_a_cgroup_namespace_become_node_paths() {
        let ns = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice/cri-containerd-a.scope";
        assert_eq!(
            node_path(
                ns,
                "/../../../kubepods-burstable.slice/kubepods-burstable-pody.slice"
            ),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pody.slice"
        );
        assert_eq!(node_path(ns, "/"), ns);
        assert_eq!(node_path(ns, "/sub"), format!("{ns}/sub"));
        assert_eq!(node_path(ns, "/../../../../../init.scope"), "/init.scope");
        // Outside a namespace of our own, paths are the node's already.
        assert_eq!(
            node_path("/", "/system.slice/a.service"),
            "/system.slice/a.service"
        );
    }

    #[test]
    fn finds_the_namespace_root_from_the_mounts_root_and_cgroup_procs() {
        let mount = std::env::temp_dir().join(format!("tuneprobe-nsroot-{}", std::process::id()));
        let _ = fs::remove_dir_all(&mount);
        for dir in ["a/b/c", "a/b/d", "x/y/z"] {
            fs::create_dir_all(mount.join(dir)).unwrap();
        }
        fs::write(mount.join("a/b/d/cgroup.procs"), "7\n4242\n").unwrap();
        fs::write(mount.join("a/b/c/cgroup.procs"), "42\n").unwrap();
        let line = |root: &str| {
            format!(
                "31 30 0:27 {root} {} rw,nosuid - cgroup2 cgroup2 rw\n",
                mount.display()
            )
        };
        assert_eq!(
            find_namespace_root(&line("/../../.."), "/", 4242).unwrap(),
            "/a/b/d"
        );
        // This process in a child of its namespace root.
        fs::create_dir_all(mount.join("x/y/z/w")).unwrap();
        fs::write(mount.join("x/y/z/w/cgroup.procs"), "4242\n").unwrap();
        assert_eq!(
            find_namespace_root(&line("/../../.."), "/w", 4242).unwrap(),
            "/x/y/z"
        );
        assert_eq!(find_namespace_root(&line("/"), "/", 4242).unwrap(), "/");
        assert!(matches!(
            find_namespace_root(&line("/../../.."), "/", 99),
            Err(NamespaceRootError::NotFound { depth: 3, .. })
        ));
        assert!(matches!(
            find_namespace_root(&line("/../other"), "/", 4242),
            Err(NamespaceRootError::NotTheNodes { .. })
        ));
        fs::remove_dir_all(&mount).unwrap();
    }

    #[test]
    fn finds_v1_controllers_on_hybrid_nodes_and_v2_otherwise() {
        let hybrid = "\
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/cpuacct rw,nosuid - cgroup cgroup rw,cpuacct
34 30 0:30 / /sys/fs/cgroup/blkio rw,nosuid - cgroup cgroup rw,blkio";
        let h = Hierarchies::from_mountinfo(hybrid);
        assert_eq!(h.unified, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(h.cpu, Some(PathBuf::from("/sys/fs/cgroup/cpu")));
        assert_eq!(h.blkio, Some(PathBuf::from("/sys/fs/cgroup/blkio")));
        let combined = "32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct";
        assert_eq!(
            Hierarchies::from_mountinfo(combined).cpu,
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        let unified = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let h = Hierarchies::from_mountinfo(unified);
        assert_eq!(h.cpu, h.unified);
        assert_eq!(h.blkio, h.unified);
    }

    #[test]
    fn resolves_ids_on_this_machine() {
        let root = cgroup2_mount().expect("cgroup2 is mounted here");
        let mut paths = CgroupPaths::new(root.clone());
        let root_id = fs::metadata(&root).unwrap().ino();
        assert_eq!(paths.path(root_id).as_deref(), Some("/"));
        assert_eq!(paths.id_of("/"), Some(root_id));
        assert_eq!(paths.path(u64::MAX), None);
        // A second lookup of an unknown id does not walk again.
        assert!(paths.missing.contains_key(&u64::MAX));
    }

    #[test]
    fn removed_cgroups_are_dead_from_removal_and_forgotten_on_request() {
        let root = std::env::temp_dir().join(format!("tuneprobe-paths-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("pod/a")).unwrap();
        fs::create_dir_all(root.join("pod/b")).unwrap();
        let mut paths = CgroupPaths::new(root.clone());
        let a = paths.id_of("/pod/a").unwrap();
        let b = paths.id_of("/pod/b").unwrap();
        assert_eq!(paths.dead_for(a), None);
        fs::remove_dir(root.join("pod/a")).unwrap();
        paths.refresh();
        assert!(paths.dead_for(a).is_some() && paths.dead_for(b).is_none());
        assert_eq!(paths.dead_longer_than(std::time::Duration::ZERO), vec![a]);
        assert!(
            paths
                .dead_longer_than(std::time::Duration::from_secs(60))
                .is_empty()
        );
        // An id no walk ever found is dead from its first lookup.
        assert_eq!(paths.path(u64::MAX - 1), None);
        assert!(paths.dead_for(u64::MAX - 1).is_some());
        // Forgetting leaves nothing behind, and the live sibling alone.
        assert_eq!(paths.forget(a), Some("/pod/a".to_string()));
        assert_eq!(paths.forget(u64::MAX - 1), None);
        assert!(!paths.knows("/pod/a") && paths.dead_for(a).is_none());
        assert!(paths.dead_longer_than(std::time::Duration::ZERO).is_empty());
        assert_eq!(paths.path(b).as_deref(), Some("/pod/b"));
        fs::remove_dir_all(&root).unwrap();
    }
}
