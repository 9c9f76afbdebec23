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

use anyhow::Context as _;

use crate::{
    kernel::loader::Probe,
    report::{Snapshot, Workload},
    signals::{Counters, Dead, NetnsLoad, Owner, Sections, Settings, Shared, Sources, Workloads},
    workloads::{
        attribution::Attributor,
        cgroup::{CgroupPaths, Hierarchies, Hierarchy, parse_kube_path},
        kube::{ApiConfig, PodWatcher},
        pods::{self, PodNames},
        procfs::{self, NetnsTcpCounters},
    },
};

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
    attributor: Attributor,
    /// `None` where the controller lives on the v2 hierarchy (ids resolve there).
    cpu_paths: Option<CgroupPaths>,
    blkio_paths: Option<CgroupPaths>,
    started: Instant,
    /// When processes and cgroups were last rescanned.
    last_tick: Instant,
    baseline: Counters,
    /// First and latest listen counters of every namespace seen during the window.
    netns_first: HashMap<u32, NetnsTcpCounters>,
    netns_last: HashMap<u32, NetnsTcpCounters>,
    /// Every signal's state over the window.
    sources: Sources,
    pod_names: PodNames,
    options: CollectorOptions,
    /// When each network namespace was last seen alive (or first seen in a key).
    netns_alive: HashMap<u32, Instant>,
    /// Sum of each namespace's kernel counts at the last tick: a change shows it alive.
    netns_activity: HashMap<u32, u64>,
    last_gc: Option<Instant>,
    /// Kernel map entries deleted because their cgroup or namespace was gone for longer
    /// than the grace period, per map.
    gc_deleted: BTreeMap<String, u64>,
}

impl Collector {
    /// Starts a window now, with default options. Counts before this call are excluded.
    pub fn start(probe: Probe) -> anyhow::Result<Self> {
        Self::start_with(probe, CollectorOptions::default())
    }

    /// Starts a window now. Counts before this call are excluded.
    pub fn start_with(probe: Probe, options: CollectorOptions) -> anyhow::Result<Self> {
        let hierarchies = Hierarchies::of_this_node();
        let unified = hierarchies
            .unified
            .clone()
            .context("cgroup v2 is not mounted")?;
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
        let mut collector = Self {
            cpu_paths: separate(&hierarchies.cpu),
            blkio_paths: separate(&hierarchies.blkio),
            attributor: Attributor::new(CgroupPaths::new(unified), host_netns),
            baseline: Sources::read(&probe)?,
            probe,
            proc_root,
            started: Instant::now(),
            last_tick: Instant::now(),
            netns_first: HashMap::new(),
            netns_last: HashMap::new(),
            sources,
            pod_names: pod_names(&options)?,
            options,
            netns_alive: HashMap::new(),
            netns_activity: HashMap::new(),
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
        let mut builder = Builder {
            attributor: &mut self.attributor,
            cpu_paths: &mut self.cpu_paths,
            blkio_paths: &mut self.blkio_paths,
            pod_names: &self.pod_names,
            grace: self.options.pod_grace,
            workloads: BTreeMap::new(),
        };
        builder.by_cgroup(hierarchy, id, netns).clone()
    }

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

    /// Rescans processes, namespaces and cpu quotas, and names any new cgroup ids. Call
    /// about once a second.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        self.last_tick = Instant::now();
        let processes = procfs::processes(&self.proc_root);
        self.attributor.observe(&processes);
        self.pod_names.refresh();
        // New cgroups get named, removed ones start their grace period.
        self.attributor.cgroups.refresh();
        if let Some(blkio) = self.blkio_paths.as_mut() {
            blkio.refresh();
        }
        let live: Vec<(u32, u32)> = self.attributor.live_netns().collect();
        for (netns, pid) in live {
            if let Some(counters) = NetnsTcpCounters::of_pid(&self.proc_root, pid) {
                self.netns_first.entry(netns).or_insert(counters);
                self.netns_last.insert(netns, counters);
            }
        }
        // Name the cgroups behind new keys now, before they can disappear.
        let counters = Sources::read(&self.probe)?;
        for (hierarchy, id) in Sources::cgroups(&counters) {
            if id != 0 {
                let _ = self.paths(hierarchy).path(id);
            }
        }
        let cpu_paths = match self.cpu_paths.as_mut() {
            Some(paths) => paths,
            None => &mut self.attributor.cgroups,
        };
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
    fn collect_garbage(&mut self) -> anyhow::Result<()> {
        // Read afresh, just before deleting: namespace inodes are recycled, and an entry
        // a new namespace has just counted into must be seen to be alive.
        let counters = &Sources::read(&self.probe)?;
        let grace = self.options.pod_grace;
        let now = Instant::now();

        // A namespace lives while a process is in it or a bind mount (`ip netns add`,
        // CNI plugins) holds it. One only ever seen in keys is dead from then on.
        let live: Vec<u32> = self
            .attributor
            .live_netns()
            .map(|(netns, _)| netns)
            .chain(mounted_netns(&self.proc_root))
            .collect();
        for netns in live {
            self.netns_alive.insert(netns, now);
        }
        let counts = Sources::netns_counts(counters);
        let keyed: Vec<u32> = counts
            .iter()
            .map(|&(netns, _)| netns)
            .filter(|&netns| netns != 0)
            .collect();
        for netns in keyed {
            self.netns_alive.entry(netns).or_insert(now);
        }
        // The kernel recycles namespace inodes: counts that still move mean a namespace
        // lives under that inode (one without processes or mounts, or a new one).
        let mut activity: HashMap<u32, u64> = HashMap::new();
        for (netns, count) in counts {
            *activity.entry(netns).or_default() += count;
        }
        activity.remove(&0);
        for (netns, total) in &activity {
            // Also a first entry after its earlier ones were deleted: a new namespace.
            if self.netns_activity.get(netns) != Some(total) {
                self.netns_alive.insert(*netns, now);
            }
        }
        self.netns_activity = activity;
        let netns_dead_for = |alive: &HashMap<u32, Instant>, after: Duration| -> HashSet<u32> {
            alive
                .iter()
                .filter(|(_, seen)| now.duration_since(**seen) > after)
                .map(|(&netns, _)| netns)
                .collect()
        };
        let dead_netns = netns_dead_for(&self.netns_alive, grace);
        // Their entries go below, so their totals start again from zero: a recycled
        // inode's first count must read as movement, not as the old total again.
        self.netns_activity
            .retain(|netns, _| !dead_netns.contains(netns));
        let dead = Dead {
            unified: self.dead_cgroups(Hierarchy::Unified, grace),
            cpu: self.dead_cgroups(Hierarchy::Cpu, grace),
            blkio: self.dead_cgroups(Hierarchy::Blkio, grace),
            netns: dead_netns,
        };
        let deleted =
            self.sources
                .collect_garbage(&mut self.probe, counters, &mut self.baseline, &dead)?;
        for (map, count) in deleted {
            *self.gc_deleted.entry(map.to_string()).or_default() += count;
        }

        // Names are kept a grace period longer: a late kernel entry (a request still in
        // flight when its cgroup went) is still known as expired, not as a new unknown.
        let forget_after = grace * 2;
        for netns in netns_dead_for(&self.netns_alive, forget_after) {
            self.netns_alive.remove(&netns);
            self.netns_first.remove(&netns);
            self.netns_last.remove(&netns);
            self.attributor.forget_netns(netns);
        }
        for hierarchy in [Hierarchy::Unified, Hierarchy::Cpu, Hierarchy::Blkio] {
            let dead = self.paths_ref(hierarchy).dead_longer_than(forget_after);
            for id in dead {
                let Some(path) = self.paths(hierarchy).forget(id) else {
                    continue;
                };
                if self.paths_ref(hierarchy).root() == self.attributor.cgroups.root() {
                    self.attributor.forget_cgroup(&path);
                }
                if self.paths_ref(hierarchy).root() == self.paths_ref(Hierarchy::Cpu).root() {
                    self.sources.forget(Hierarchy::Cpu, &path);
                }
            }
        }
        Ok(())
    }

    fn dead_cgroups(&self, hierarchy: Hierarchy, grace: Duration) -> HashSet<u64> {
        self.paths_ref(hierarchy)
            .dead_longer_than(grace)
            .into_iter()
            .collect()
    }

    /// Ends the window: counter deltas since [`start`](Self::start), per workload.
    pub fn finish(mut self) -> anyhow::Result<Snapshot> {
        self.report()
    }

    /// The window so far, without ending it.
    pub fn report(&mut self) -> anyhow::Result<Snapshot> {
        self.tick()?;
        self.build_report()
    }

    /// As [`report`](Self::report), but without rescanning processes and cgroups when
    /// the last scan is younger than `max_age` (`serve` scans every second already; a
    /// scrape then only reads the maps, and ids new since the scan are named on sight).
    pub fn report_recent(&mut self, max_age: std::time::Duration) -> anyhow::Result<Snapshot> {
        if self.last_tick.elapsed() > max_age {
            self.tick()?;
        }
        self.build_report()
    }

    fn build_report(&mut self) -> anyhow::Result<Snapshot> {
        let now = Sources::read(&self.probe)?;
        let netns_tcp: HashMap<u32, NetnsLoad> = self
            .netns_last
            .iter()
            .map(|(&netns, last)| {
                let first = self.netns_first.get(&netns).copied().unwrap_or(*last);
                let load = NetnsLoad {
                    tcp: last.since(&first),
                    host: self.attributor.netns_owner(netns) == Some("/"),
                };
                (netns, load)
            })
            .collect();
        let shared = Shared { netns_tcp };
        let mut builder = Builder {
            attributor: &mut self.attributor,
            cpu_paths: &mut self.cpu_paths,
            blkio_paths: &mut self.blkio_paths,
            pod_names: &self.pod_names,
            grace: self.options.pod_grace,
            workloads: BTreeMap::new(),
        };
        self.sources
            .report(&self.probe, &now, &self.baseline, &shared, &mut builder);
        let mut workloads = builder.finish();
        for workload in &mut workloads {
            workload.signals.complete(&shared, workload.netns);
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
fn pod_names(options: &CollectorOptions) -> anyhow::Result<PodNames> {
    // A pod's series go `pod_grace` after its cgroup does, and its name is seen gone
    // at a different moment (log directory, API, runtime): names are kept twice as
    // long, so a series never loses its name in its last seconds.
    let grace = options.pod_grace * 2;
    let mut names = PodNames::new(&options.pod_logs_dir, grace);
    if let Some(api) = options.kube_api.clone() {
        let watcher = PodWatcher::start(api, options.node_name.clone(), grace)
            .context("starting the pod watcher")?;
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
            Err(err) if asked_for => return Err(err).context("--cri-socket"),
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

/// Accumulates counts per workload while attributing keys: the collector's naming
/// state, borrowed for one report.
struct Builder<'a> {
    attributor: &'a mut Attributor,
    cpu_paths: &'a mut Option<CgroupPaths>,
    blkio_paths: &'a mut Option<CgroupPaths>,
    pod_names: &'a PodNames,
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
        (&mut workload.signals, workload.cgroup_path.as_deref())
    }
}

impl Builder<'_> {
    fn paths(&mut self, hierarchy: Hierarchy) -> &mut CgroupPaths {
        match hierarchy {
            Hierarchy::Cpu => self.cpu_paths.as_mut(),
            Hierarchy::Blkio => self.blkio_paths.as_mut(),
            Hierarchy::Unified => None,
        }
        .unwrap_or(&mut self.attributor.cgroups)
    }

    fn by_cgroup(&mut self, hierarchy: Hierarchy, id: u64, netns: Option<u32>) -> &mut Workload {
        if id == 0 {
            return self.by_netns(netns);
        }
        let workload = match self.paths(hierarchy).path(id) {
            Some(path) => self.by_path(hierarchy, &path),
            None => {
                // A cgroup created and removed between two scans: a container that lived
                // less than a second. Its network namespace still says whose pod it was.
                let pod = netns
                    .and_then(|ns| self.attributor.netns_owner(ns))
                    .map(parse_kube_path)
                    .filter(|identity| identity.is_pod());
                let names = &self.pod_names;
                let uid = pod.and_then(|identity| identity.pod_uid);
                let name = uid.as_deref().and_then(|uid| names.pod(uid));
                let pod_labels = uid
                    .as_deref()
                    .map(|uid| names.labels(uid))
                    .unwrap_or_default();
                self.workloads
                    .entry(Key::UnknownCgroup(hierarchy, id))
                    .or_insert_with(|| Workload {
                        cgroup_id: Some(id),
                        namespace: name.as_ref().map(|p| p.namespace.clone()),
                        pod: name.map(|p| p.pod),
                        pod_labels,
                        pod_uid: uid,
                        ..Default::default()
                    })
            }
        };
        if workload.netns.is_none() {
            workload.netns = netns;
        }
        workload
    }

    /// The workload of a cgroup path (the same path in every hierarchy).
    fn by_path(&mut self, hierarchy: Hierarchy, path: &str) -> &mut Workload {
        let attributor = &self.attributor;
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
            other => self.paths(other).id_of(path),
        };
        let names = &self.pod_names;
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
            cgroup_id: id.or(fallback_id),
            cgroup_path: Some(path.to_string()),
            netns,
            namespace: pod.as_ref().map(|p| p.namespace.clone()),
            pod: pod.map(|p| p.pod),
            container: container.map(|c| c.container),
            pod_labels,
            pod_uid: identity.pod_uid,
            container_id: identity.container_id,
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
            .attributor
            .netns_owner(netns)
            .map(str::to_string)
        {
            Some(path) => {
                let workload = self.by_path(Hierarchy::Unified, &path);
                workload.netns.get_or_insert(netns);
                workload
            }
            None => self
                .workloads
                .entry(Key::Netns(netns))
                .or_insert_with(|| Workload {
                    netns: Some(netns),
                    ..Default::default()
                }),
        }
    }

    /// The workloads, less those whose cgroup is gone from every hierarchy for longer
    /// than the grace period: a deleted pod leaves the report (and the metrics).
    fn finish(self) -> Vec<Workload> {
        let grace = self.grace;
        let expired = |path: &str| {
            let mut views = vec![&self.attributor.cgroups];
            views.extend(self.cpu_paths.as_ref());
            views.extend(self.blkio_paths.as_ref());
            let known: Vec<Option<Duration>> = views
                .iter()
                .filter(|paths| paths.knows(path))
                .map(|paths| paths.gone_for(path))
                .collect();
            !known.is_empty() && known.iter().all(|gone| gone.is_some_and(|g| g > grace))
        };
        self.workloads
            .into_values()
            .filter(|w| !w.cgroup_path.as_deref().is_some_and(expired))
            .collect()
    }
}
