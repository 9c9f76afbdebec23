//! One observation window: counters at its start, periodic scans while it runs (so that
//! short-lived cgroups and namespaces are still named), and the per-workload report at
//! its end.
//!
//! Workloads are keyed by cgroup path: on hybrid nodes one container has a v2 cgroup
//! (its sockets), a v1 cpu cgroup and a v1 blkio cgroup, each with its own id, and the
//! kubelet gives them the same path in every hierarchy.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    kernel::loader::{MapError, Probe},
    report::{Snapshot, Workload},
    signals::{
        Counters, Dead, NetnsLoad, Owner, Sections, Settings, Shared, SignalError, Sources,
        Workloads, record::Names,
    },
    workloads::{
        attribution::Attributor,
        cgroup::{CgroupPaths, Hierarchies, Hierarchy, parse_kube_path},
        identity::Identity,
        kube::{ApiConfig, PodWatcher},
        pods::{self, PodNames},
        procfs::{self, NetnsCounters},
    },
};

/// An observation window could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("cgroup v2 is not mounted")]
    NoCgroup2,
    #[error("starting the pod watcher")]
    PodWatcher(#[source] crate::workloads::kube::KubeError),
    #[error("--cri-socket")]
    Cri(#[source] crate::workloads::cri::CriError),
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error(transparent)]
    Map(#[from] MapError),
}

/// How often kernel entries of deleted workloads are looked for.
const GC_INTERVAL: Duration = Duration::from_secs(1);

/// How a window is observed.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// A DNS query without a response after this long is a timeout.
    pub dns_timeout: Duration,
    /// The kubelet's pod log directory, for pod and container names.
    pub pod_logs_dir: PathBuf,
    /// How long a pod stays named after it is gone.
    pub pod_grace: Duration,
    /// The Kubernetes API to watch this node's pods in, if any.
    pub kube_api: Option<ApiConfig>,
    /// This node's name (`spec.nodeName` of its pods).
    pub node_name: String,
    /// The container runtime's CRI socket, for pod and container names.
    pub cri_socket: CriSocket,
}

/// Where to ask the container runtime for names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CriSocket {
    /// The first of the usual containerd and CRI-O sockets that exists.
    Auto,
    None,
    /// This one; failing to reach it is an error.
    Path(PathBuf),
}

impl Default for CollectorOptions {
    fn default() -> Self {
        Self {
            dns_timeout: Duration::from_secs(5),
            pod_logs_dir: PathBuf::from(pods::DEFAULT_POD_LOGS_DIR),
            pod_grace: Duration::from_secs(300),
            kube_api: None,
            node_name: node_name(),
            cri_socket: CriSocket::Auto,
        }
    }
}

pub struct Collector {
    probe: Probe,
    proc_root: PathBuf,
    naming: Naming,
    namespaces: Namespaces,
    /// Every signal's state over the window.
    sources: Sources,
    /// Every signal's maps when the window started (less deleted entries).
    baseline: Counters,
    options: CollectorOptions,
    started: Instant,
    /// When processes and cgroups were last rescanned.
    last_tick: Instant,
    last_gc: Option<Instant>,
    /// Kernel map entries deleted because their cgroup or namespace was gone for longer
    /// than the grace period, per map.
    gc_deleted: BTreeMap<String, u64>,
}

/// Who a count belongs to: each hierarchy's cgroup names, processes and their
/// namespaces, pod and container names.
struct Naming {
    attributor: Attributor,
    /// `None` where the controller lives on the v2 hierarchy (ids resolve there).
    cpu_paths: Option<CgroupPaths>,
    blkio_paths: Option<CgroupPaths>,
    pod_names: PodNames,
}

impl Naming {
    fn paths(&mut self, hierarchy: Hierarchy) -> &mut CgroupPaths {
        match hierarchy {
            Hierarchy::Cpu => self.cpu_paths.as_mut(),
            Hierarchy::Blkio => self.blkio_paths.as_mut(),
            Hierarchy::Unified => None,
        }
        .unwrap_or(&mut self.attributor.cgroups)
    }

    fn paths_ref(&self, hierarchy: Hierarchy) -> &CgroupPaths {
        match hierarchy {
            Hierarchy::Cpu => self.cpu_paths.as_ref(),
            Hierarchy::Blkio => self.blkio_paths.as_ref(),
            Hierarchy::Unified => None,
        }
        .unwrap_or(&self.attributor.cgroups)
    }

    fn dead_cgroups(&self, hierarchy: Hierarchy, grace: Duration) -> HashSet<u64> {
        self.paths_ref(hierarchy)
            .dead_longer_than(grace)
            .into_iter()
            .collect()
    }

    /// Forgets the names of cgroups gone for longer than `after`; `forgotten` hears of
    /// each cpu cgroup path.
    fn forget_cgroups(&mut self, after: Duration, mut forgotten: impl FnMut(&str)) {
        for hierarchy in [Hierarchy::Unified, Hierarchy::Cpu, Hierarchy::Blkio] {
            let dead = self.paths_ref(hierarchy).dead_longer_than(after);
            for id in dead {
                let Some(path) = self.paths(hierarchy).forget(id) else {
                    continue;
                };
                if self.paths_ref(hierarchy).root() == self.attributor.cgroups.root() {
                    self.attributor.forget_cgroup(&path);
                }
                if self.paths_ref(hierarchy).root() == self.paths_ref(Hierarchy::Cpu).root() {
                    forgotten(&path);
                }
            }
        }
    }

    /// Attributes keys to workloads for one report.
    fn builder(&mut self, grace: Duration) -> Builder<'_> {
        Builder {
            naming: self,
            grace,
            workloads: BTreeMap::new(),
        }
    }
}

/// What the window knows of each network namespace.
#[derive(Default)]
struct Namespaces {
    /// First and latest TCP counters of every namespace seen during the window.
    first: HashMap<u32, NetnsCounters>,
    last: HashMap<u32, NetnsCounters>,
    /// When each was last seen alive (or first seen in a key).
    alive: HashMap<u32, Instant>,
    /// Sum of each one's kernel counts at the last collection: a change shows it alive.
    activity: HashMap<u32, u64>,
}

impl Namespaces {
    /// Reads the TCP counters of the namespaces that have a live process.
    fn observe(&mut self, proc_root: &Path, live: impl Iterator<Item = (u32, u32)>) {
        for (netns, pid) in live {
            if let Some(counters) = NetnsCounters::of_pid(proc_root, pid) {
                self.first.entry(netns).or_insert(counters);
                self.last.insert(netns, counters);
            }
        }
    }

    /// Notes which namespaces live now: `live` ones (a process is in them or a bind
    /// mount holds them), and those whose kernel `counts` moved. One only ever seen in
    /// keys is alive from then on until its grace period passes.
    fn mark_alive(&mut self, live: impl Iterator<Item = u32>, counts: &[(u32, u64)], now: Instant) {
        for netns in live {
            self.alive.insert(netns, now);
        }
        for &(netns, _) in counts {
            if netns != 0 {
                self.alive.entry(netns).or_insert(now);
            }
        }
        // The kernel recycles namespace inodes: counts that still move mean a namespace
        // lives under that inode (one without processes or mounts, or a new one).
        let mut activity: HashMap<u32, u64> = HashMap::new();
        for &(netns, count) in counts {
            *activity.entry(netns).or_default() += count;
        }
        activity.remove(&0);
        for (netns, total) in &activity {
            // Also a first entry after its earlier ones were deleted: a new namespace.
            if self.activity.get(netns) != Some(total) {
                self.alive.insert(*netns, now);
            }
        }
        self.activity = activity;
    }

    /// The namespaces not seen alive for longer than `after`.
    fn dead_for(&self, after: Duration, now: Instant) -> HashSet<u32> {
        self.alive
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) > after)
            .map(|(&netns, _)| netns)
            .collect()
    }

    /// Their entries are deleted, so their totals start again from zero: a recycled
    /// inode's first count must read as movement, not as the old total again.
    fn entries_deleted(&mut self, dead: &HashSet<u32>) {
        self.activity.retain(|netns, _| !dead.contains(netns));
    }

    fn forget(&mut self, netns: u32) {
        self.alive.remove(&netns);
        self.first.remove(&netns);
        self.last.remove(&netns);
    }

    /// Every namespace's TCP counters over the window; `is_host` tells the host's.
    fn loads(&self, is_host: impl Fn(u32) -> bool) -> HashMap<u32, NetnsLoad> {
        self.last
            .iter()
            .map(|(&netns, last)| {
                let first = self.first.get(&netns).copied().unwrap_or(*last);
                let load = NetnsLoad {
                    counters: last.since(&first),
                    host: is_host(netns),
                };
                (netns, load)
            })
            .collect()
    }
}

impl Collector {
    /// Starts a window now, with default options. Counts before this call are excluded.
    pub fn start(probe: Probe) -> Result<Self, WindowError> {
        Self::start_with(probe, CollectorOptions::default())
    }

    /// Starts a window now. Counts before this call are excluded.
    pub fn start_with(probe: Probe, options: CollectorOptions) -> Result<Self, WindowError> {
        let hierarchies = Hierarchies::of_this_node();
        let unified = hierarchies.unified.clone().ok_or(WindowError::NoCgroup2)?;
        let separate = |root: &Option<PathBuf>| {
            root.as_ref()
                .filter(|root| **root != unified)
                .map(|root| CgroupPaths::new(root.clone()))
        };
        let proc_root = PathBuf::from("/proc");
        let host_netns = Attributor::host_netns(&proc_root);
        let sources = Sources::new(&Settings {
            dns_timeout: options.dns_timeout,
            sys_root: PathBuf::from("/sys"),
        });
        let naming = Naming {
            cpu_paths: separate(&hierarchies.cpu),
            blkio_paths: separate(&hierarchies.blkio),
            attributor: Attributor::new(CgroupPaths::new(unified), host_netns),
            pod_names: pod_names(&options)?,
        };
        let mut collector = Self {
            baseline: Sources::read(&probe)?,
            probe,
            proc_root,
            naming,
            namespaces: Namespaces::default(),
            sources,
            options,
            started: Instant::now(),
            last_tick: Instant::now(),
            last_gc: None,
            gc_deleted: BTreeMap::new(),
        };
        collector.tick()?;
        Ok(collector)
    }

    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// Names one kernel key the way the report does (for `trace` events): a cgroup id
    /// of `hierarchy`, or for id 0 the owner of namespace `netns`. No counts.
    pub fn workload_of(&mut self, hierarchy: Hierarchy, id: u64, netns: Option<u32>) -> Workload {
        self.naming
            .builder(self.options.pod_grace)
            .by_cgroup(hierarchy, id, netns)
            .clone()
    }
}

impl Names for Collector {
    fn identity_of(&mut self, hierarchy: Hierarchy, id: u64, netns: Option<u32>) -> Identity {
        self.workload_of(hierarchy, id, netns).identity
    }

    fn probe(&self) -> &Probe {
        &self.probe
    }
}

impl Collector {
    /// Rescans processes, namespaces and cpu quotas, and names any new cgroup ids. Call
    /// about once a second.
    pub fn tick(&mut self) -> Result<(), WindowError> {
        self.last_tick = Instant::now();
        let naming = &mut self.naming;
        let processes = procfs::processes(&self.proc_root);
        naming.attributor.observe(&processes);
        naming.pod_names.refresh();
        // New cgroups get named, removed ones start their grace period.
        naming.attributor.cgroups.refresh();
        if let Some(blkio) = naming.blkio_paths.as_mut() {
            blkio.refresh();
        }
        self.namespaces
            .observe(&self.proc_root, naming.attributor.live_netns());
        // Name the cgroups behind new keys now, before they can disappear.
        let counters = Sources::read(&self.probe)?;
        for (hierarchy, id) in Sources::cgroups(&counters) {
            if id != 0 {
                let _ = naming.paths(hierarchy).path(id);
            }
        }
        let cpu_paths = naming.paths(Hierarchy::Cpu);
        self.sources.tick(&mut self.probe, cpu_paths)?;
        // Scrapes tick too, and may come in bursts: collecting once a second is enough.
        if self.last_gc.is_none_or(|at| at.elapsed() >= GC_INTERVAL) {
            self.collect_garbage()?;
            self.last_gc = Some(Instant::now());
        }
        Ok(())
    }

    /// Deletes the kernel map entries and baselines of cgroups and network namespaces
    /// gone for longer than the grace period (nothing else ever removes them: on a node
    /// with pod churn the maps would fill), and later forgets their names too.
    fn collect_garbage(&mut self) -> Result<(), WindowError> {
        // Read afresh, just before deleting: namespace inodes are recycled, and an entry
        // a new namespace has just counted into must be seen to be alive.
        let counters = &Sources::read(&self.probe)?;
        let grace = self.options.pod_grace;
        let now = Instant::now();
        let live = self
            .naming
            .attributor
            .live_netns()
            .map(|(netns, _)| netns)
            .chain(mounted_netns(&self.proc_root));
        self.namespaces
            .mark_alive(live, &Sources::netns_counts(counters), now);
        let dead = Dead {
            unified: self.naming.dead_cgroups(Hierarchy::Unified, grace),
            cpu: self.naming.dead_cgroups(Hierarchy::Cpu, grace),
            blkio: self.naming.dead_cgroups(Hierarchy::Blkio, grace),
            netns: self.namespaces.dead_for(grace, now),
        };
        let deleted =
            self.sources
                .collect_garbage(&mut self.probe, counters, &mut self.baseline, &dead)?;
        for (map, count) in deleted {
            *self.gc_deleted.entry(map.to_string()).or_default() += count;
        }
        self.namespaces.entries_deleted(&dead.netns);

        // Names are kept a grace period longer: a late kernel entry (a request still in
        // flight when its cgroup went) is still known as expired, not as a new unknown.
        let forget_after = grace * 2;
        for netns in self.namespaces.dead_for(forget_after, now) {
            self.namespaces.forget(netns);
            self.naming.attributor.forget_netns(netns);
        }
        let sources = &mut self.sources;
        self.naming
            .forget_cgroups(forget_after, |path| sources.forget(Hierarchy::Cpu, path));
        Ok(())
    }

    /// Ends the window: counter deltas since [`start`](Self::start), per workload.
    pub fn finish(mut self) -> Result<Snapshot, WindowError> {
        self.report()
    }

    /// The window so far, without ending it.
    pub fn report(&mut self) -> Result<Snapshot, WindowError> {
        self.tick()?;
        self.build_report()
    }

    /// As [`report`](Self::report), but without rescanning processes and cgroups when
    /// the last scan is younger than `max_age` (`serve` scans every second already; a
    /// scrape then only reads the maps, and ids new since the scan are named on sight).
    pub fn report_recent(&mut self, max_age: std::time::Duration) -> Result<Snapshot, WindowError> {
        if self.last_tick.elapsed() > max_age {
            self.tick()?;
        }
        self.build_report()
    }

    fn build_report(&mut self) -> Result<Snapshot, WindowError> {
        let now = Sources::read(&self.probe)?;
        let attributor = &self.naming.attributor;
        let shared = Shared {
            netns: self
                .namespaces
                .loads(|netns| attributor.netns_owner(netns) == Some("/")),
        };
        let mut builder = self.naming.builder(self.options.pod_grace);
        self.sources
            .report(&self.probe, &now, &self.baseline, &shared, &mut builder);
        let mut workloads = builder.finish();
        for workload in &mut workloads {
            workload.signals.complete(&shared, workload.identity.netns);
        }
        let map_overflows: BTreeMap<String, u64> = self
            .probe
            .map_overflows()?
            .into_iter()
            .map(|(name, lost)| (name.to_string(), lost))
            .collect();
        Ok(Snapshot {
            duration_s: self.started.elapsed().as_secs_f64(),
            probes: self.probe.statuses().to_vec(),
            program_stats: self.probe.program_stats(),
            map_overflows,
            gc_deleted_entries: self.gc_deleted.clone(),
            workloads,
        })
    }
}

/// This node's name: `NODE_NAME` (the downward API in the DaemonSet), else the hostname.
pub fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default()
        })
}

/// Names from the log directories, and from the API when one is configured.
/// Names from the API first, the container runtime next, the log directories last.
fn pod_names(options: &CollectorOptions) -> Result<PodNames, WindowError> {
    // A pod's series go `pod_grace` after its cgroup does, and its name is seen gone
    // at a different moment (log directory, API, runtime): names are kept twice as
    // long, so a series never loses its name in its last seconds.
    let grace = options.pod_grace * 2;
    let mut names = PodNames::new(&options.pod_logs_dir, grace);
    if let Some(api) = options.kube_api.clone() {
        let watcher = PodWatcher::start(api, options.node_name.clone(), grace)
            .map_err(WindowError::PodWatcher)?;
        names = names.with_store(watcher.store());
    }
    let socket = match &options.cri_socket {
        CriSocket::None => None,
        CriSocket::Path(path) => Some((path.clone(), true)),
        CriSocket::Auto => crate::workloads::cri::find_socket().map(|path| (path, false)),
    };
    if let Some((path, asked_for)) = socket {
        match crate::workloads::cri::CriWatcher::start(&path, grace) {
            Ok(watcher) => names = names.with_store(watcher.store()),
            Err(err) if asked_for => return Err(WindowError::Cri(err)),
            // Found by looking: names still come from the other sources.
            Err(err) => log::warn!("no pod names from the container runtime: {err}"),
        }
    }
    Ok(names)
}

/// Network namespaces held by bind mounts visible to this process (`/run/netns/*`).
fn mounted_netns(proc_root: &Path) -> Vec<u32> {
    let mountinfo = std::fs::read_to_string(proc_root.join("self/mountinfo")).unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            // `ID PARENT MAJ:MIN ROOT ...`: an nsfs mount's root is `net:[INODE]`.
            let root = line.split_whitespace().nth(3)?;
            root.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Path(String),
    /// A cgroup id no walk of its hierarchy found (it was created and removed between
    /// two scans).
    UnknownCgroup(Hierarchy, u64),
    /// A namespace whose owner is not known (its processes were never seen).
    Netns(u32),
    Unattributed,
}

/// Accumulates counts per workload while attributing keys, for one report.
struct Builder<'a> {
    naming: &'a mut Naming,
    grace: Duration,
    workloads: BTreeMap<Key, Workload>,
}

impl Workloads for Builder<'_> {
    fn sections(&mut self, owner: Owner) -> (&mut Sections, Option<&str>) {
        let workload = match owner {
            Owner::Cgroup {
                hierarchy,
                id,
                netns,
            } => self.by_cgroup(hierarchy, id, netns),
            Owner::Path { hierarchy, path } => self.by_path(hierarchy, &path),
            Owner::Netns(netns) => self.by_netns(Some(netns)),
        };
        (
            &mut workload.signals,
            workload.identity.cgroup_path.as_deref(),
        )
    }
}

impl Builder<'_> {
    fn by_cgroup(&mut self, hierarchy: Hierarchy, id: u64, netns: Option<u32>) -> &mut Workload {
        if id == 0 {
            return self.by_netns(netns);
        }
        let workload = match self.naming.paths(hierarchy).path(id) {
            Some(path) => self.by_path(hierarchy, &path),
            None => {
                // A cgroup created and removed between two scans: a container that lived
                // less than a second. Its network namespace still says whose pod it was.
                let pod = netns
                    .and_then(|ns| self.naming.attributor.netns_owner(ns))
                    .map(parse_kube_path)
                    .filter(super::workloads::cgroup::KubeIdentity::is_pod);
                let names = &self.naming.pod_names;
                let uid = pod.and_then(|identity| identity.pod_uid);
                let name = uid.as_deref().and_then(|uid| names.pod(uid));
                let pod_labels = uid
                    .as_deref()
                    .map(|uid| names.labels(uid))
                    .unwrap_or_default();
                self.workloads
                    .entry(Key::UnknownCgroup(hierarchy, id))
                    .or_insert_with(|| Workload {
                        identity: Identity {
                            cgroup_id: Some(id),
                            namespace: name.as_ref().map(|p| p.namespace.clone()),
                            pod: name.map(|p| p.pod),
                            pod_uid: uid,
                            ..Identity::default()
                        },
                        pod_labels,
                        ..Default::default()
                    })
            }
        };
        if workload.identity.netns.is_none() {
            workload.identity.netns = netns;
        }
        workload
    }

    /// The workload of a cgroup path (the same path in every hierarchy).
    fn by_path(&mut self, hierarchy: Hierarchy, path: &str) -> &mut Workload {
        let attributor = &self.naming.attributor;
        // Report the v2 id where the path exists there: it is what sockets carry.
        let id = attributor.cgroups.id_of(path);
        let identity = parse_kube_path(path);
        let netns = if identity.is_pod() && identity.container_id.is_none() {
            attributor.netns_below(path)
        } else {
            attributor.netns_of_cgroup(path)
        };
        let fallback_id = match hierarchy {
            Hierarchy::Unified => None,
            other => self.naming.paths(other).id_of(path),
        };
        let names = &self.naming.pod_names;
        let pod = identity.pod_uid.as_deref().and_then(|uid| names.pod(uid));
        let container = identity
            .container_id
            .as_deref()
            .and_then(|id| names.container(id));
        let pod_labels = identity
            .pod_uid
            .as_deref()
            .map(|uid| names.labels(uid))
            .unwrap_or_default();
        let workload = Workload {
            identity: Identity {
                cgroup_id: id.or(fallback_id),
                cgroup_path: Some(path.to_string()),
                netns,
                pod_uid: identity.pod_uid,
                container_id: identity.container_id,
                namespace: pod.as_ref().map(|p| p.namespace.clone()),
                pod: pod.map(|p| p.pod),
                container: container.map(|c| c.container),
            },
            pod_labels,
            ..Default::default()
        };
        self.workloads
            .entry(Key::Path(path.to_string()))
            .or_insert(workload)
    }

    /// Traffic with no socket: the namespace's owner (the pod living in it) if known.
    fn by_netns(&mut self, netns: Option<u32>) -> &mut Workload {
        let Some(netns) = netns else {
            return self.workloads.entry(Key::Unattributed).or_default();
        };
        match self
            .naming
            .attributor
            .netns_owner(netns)
            .map(str::to_string)
        {
            Some(path) => {
                let workload = self.by_path(Hierarchy::Unified, &path);
                workload.identity.netns.get_or_insert(netns);
                workload
            }
            None => self
                .workloads
                .entry(Key::Netns(netns))
                .or_insert_with(|| Workload {
                    identity: Identity {
                        netns: Some(netns),
                        ..Identity::default()
                    },
                    ..Default::default()
                }),
        }
    }

    /// The workloads, less those whose cgroup is gone from every hierarchy for longer
    /// than the grace period: a deleted pod leaves the report (and the metrics).
    fn finish(self) -> Vec<Workload> {
        let grace = self.grace;
        let expired = |path: &str| {
            let mut views = vec![&self.naming.attributor.cgroups];
            views.extend(self.naming.cpu_paths.as_ref());
            views.extend(self.naming.blkio_paths.as_ref());
            let known: Vec<Option<Duration>> = views
                .iter()
                .filter(|paths| paths.knows(path))
                .map(|paths| paths.gone_for(path))
                .collect();
            !known.is_empty() && known.iter().all(|gone| gone.is_some_and(|g| g > grace))
        };
        self.workloads
            .into_values()
            .filter(|w| !w.identity.cgroup_path.as_deref().is_some_and(expired))
            .collect()
    }
}
