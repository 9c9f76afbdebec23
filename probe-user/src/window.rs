//! One observation window: counters at its start, periodic scans while it runs (so that
//! short-lived cgroups and namespaces are still named), and the per-workload report at
//! its end.
//!
//! Workloads are keyed by cgroup path: on hybrid nodes one container has a v2 cgroup
//! (its sockets), a v1 cpu cgroup and a v1 blkio cgroup, each with its own id, and the
//! kubelet gives them the same path in every hierarchy.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use probe_common::{
    BlockKey, BlockStats, DnsCounters, DnsFlow, DnsHistogram, DnsLatencyKey, DnsQuery,
    DnsResolverKey, DropKey, RetransmitCounters, RetransmitKey, ThrottleStats,
    block_io::BLOCK_IO_MAP,
    cpu_throttle::CPU_THROTTLE_MAP,
    dns,
    dns::{DNS_COUNTERS_MAP, DNS_IN_FLIGHT_MAP, DNS_LATENCY_MAP},
    drops::DROPS_MAP,
    tcp_retransmit::TCP_RETRANSMITS_MAP,
};

use crate::{
    workloads::attribution::Attributor,
    workloads::cgroup::{CgroupPaths, Hierarchies, parse_kube_path},
    signals::cpustat::{CpuAccounting, CpuLimit},
    kernel::devices,
    signals::histogram::{self, LatencySummary},
    workloads::kube::{ApiConfig, PodWatcher},
    kernel::loader::Probe,
    workloads::pods::{self, PodNames},
    workloads::procfs::{self, NetnsTcpCounters},
    report::{
        BlockReport, CpuReport, DnsLatencySeries, DnsReport, Percentiles, Snapshot,
        TCP_LISTEN_OVERFLOW, Workload, rcode_name,
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

/// Kernel counters at one instant.
#[derive(Debug, Default, Clone)]
struct Counters {
    retransmits: HashMap<RetransmitKey, RetransmitCounters>,
    drops: HashMap<DropKey, u64>,
    block: HashMap<BlockKey, BlockStats>,
    throttle: HashMap<u64, ThrottleStats>,
    dns: HashMap<DnsResolverKey, DnsCounters>,
    dns_latency: HashMap<DnsLatencyKey, DnsHistogram>,
}

impl Counters {
    fn read(probe: &Probe) -> anyhow::Result<Self> {
        Ok(Self {
            retransmits: probe.retransmits().context("reading retransmit counters")?,
            drops: probe.drops().context("reading drop counters")?,
            block: probe.block_io().context("reading block IO statistics")?,
            throttle: probe
                .cpu_throttle()
                .context("reading throttle statistics")?,
            dns: probe.dns_counters().context("reading DNS counters")?,
            dns_latency: probe.dns_latency().context("reading DNS latency")?,
        })
    }
}

/// Which hierarchy a kernel cgroup id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hierarchy {
    /// cgroup v2: sockets, and netns owners.
    Unified,
    Cpu,
    Blkio,
}

/// The cpu hierarchy's view of one cgroup with a CFS quota.
#[derive(Debug, Clone, Copy)]
struct CpuWatch {
    first: CpuAccounting,
    last: CpuAccounting,
    limit: CpuLimit,
}

pub struct Collector {
    probe: Probe,
    proc_root: PathBuf,
    sys_root: PathBuf,
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
    /// cpu cgroups with a quota, by path.
    cpu_watch: HashMap<String, CpuWatch>,
    /// `cpu.stat` at the window's start of the cpu cgroups that had no quota then
    /// (`None` before the first scan): a quota set later counts from there, and a
    /// cgroup created since counts from zero, as its counters do.
    cpu_at_start: Option<HashMap<String, CpuAccounting>>,
    pod_names: PodNames,
    options: CollectorOptions,
    /// DNS queries that timed out during the window, per (workload, resolver).
    dns_timeouts: HashMap<DnsResolverKey, u64>,
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
        let mut collector = Self {
            cpu_paths: separate(&hierarchies.cpu),
            blkio_paths: separate(&hierarchies.blkio),
            attributor: Attributor::new(CgroupPaths::new(unified), host_netns),
            baseline: Counters::read(&probe)?,
            probe,
            proc_root,
            sys_root: PathBuf::from("/sys"),
            started: Instant::now(),
            last_tick: Instant::now(),
            netns_first: HashMap::new(),
            netns_last: HashMap::new(),
            cpu_watch: HashMap::new(),
            cpu_at_start: None,
            pod_names: pod_names(&options)?,
            options,
            dns_timeouts: HashMap::new(),
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
        Builder::new(self).by_cgroup(hierarchy, id, netns).clone()
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
        let counters = Counters::read(&self.probe)?;
        let ids: Vec<(Hierarchy, u64)> = counters
            .retransmits
            .keys()
            .map(|k| (Hierarchy::Unified, k.cgroup_id))
            .chain(
                counters
                    .drops
                    .keys()
                    .map(|k| (Hierarchy::Unified, k.cgroup_id)),
            )
            .chain(
                counters
                    .block
                    .keys()
                    .map(|k| (Hierarchy::Blkio, k.cgroup_id)),
            )
            .chain(counters.throttle.keys().map(|&id| (Hierarchy::Cpu, id)))
            .chain(
                counters
                    .dns
                    .keys()
                    .map(|k| (Hierarchy::Unified, k.cgroup_id)),
            )
            .filter(|&(_, id)| id != 0)
            .collect();
        for (hierarchy, id) in ids {
            let _ = self.paths(hierarchy).path(id);
        }
        self.watch_cpu_quotas();
        // Scrapes tick too, and may come in bursts: collecting once a second is enough.
        if self.last_gc.is_none_or(|at| at.elapsed() >= GC_INTERVAL) {
            self.collect_garbage()?;
            self.last_gc = Some(Instant::now());
        }
        self.expire_dns_queries()?;
        Ok(())
    }

    /// Deletes the kernel map entries and baselines of cgroups and network namespaces
    /// gone for longer than the grace period (nothing else ever removes them: on a node
    /// with pod churn the maps would fill), and later forgets their names too.
    fn collect_garbage(&mut self) -> anyhow::Result<()> {
        // Read afresh, just before deleting: namespace inodes are recycled, and an entry
        // a new namespace has just counted into must be seen to be alive.
        let counters = &Counters::read(&self.probe)?;
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
        let keyed: Vec<u32> = counters
            .retransmits
            .keys()
            .map(|k| k.netns)
            .chain(counters.drops.keys().map(|k| k.netns))
            .filter(|&netns| netns != 0)
            .collect();
        for netns in keyed {
            self.netns_alive.entry(netns).or_insert(now);
        }
        // The kernel recycles namespace inodes: counts that still move mean a namespace
        // lives under that inode (one without processes or mounts, or a new one).
        let mut activity: HashMap<u32, u64> = HashMap::new();
        for (key, count) in &counters.drops {
            *activity.entry(key.netns).or_default() += count;
        }
        for (key, c) in &counters.retransmits {
            *activity.entry(key.netns).or_default() += c.retransmits;
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
        let unified: HashSet<u64> = self
            .paths_ref(Hierarchy::Unified)
            .dead_longer_than(grace)
            .into_iter()
            .collect();
        let cpu: HashSet<u64> = self
            .paths_ref(Hierarchy::Cpu)
            .dead_longer_than(grace)
            .into_iter()
            .collect();
        let blkio: HashSet<u64> = self
            .paths_ref(Hierarchy::Blkio)
            .dead_longer_than(grace)
            .into_iter()
            .collect();
        // Root (id 1) and "no cgroup" (0) never die.
        let gone = |cgroup_id: u64, netns: u32| {
            (cgroup_id > 1 && unified.contains(&cgroup_id))
                || (netns != 0 && dead_netns.contains(&netns))
        };

        let retransmits: Vec<RetransmitKey> = counters
            .retransmits
            .keys()
            .filter(|k| gone(k.cgroup_id, k.netns))
            .copied()
            .collect();
        let drops: Vec<DropKey> = counters
            .drops
            .keys()
            .filter(|k| gone(k.cgroup_id, k.netns))
            .copied()
            .collect();
        let dns_keys: Vec<DnsResolverKey> = counters
            .dns
            .keys()
            .filter(|k| gone(k.cgroup_id, 0))
            .copied()
            .collect();
        let dns_latency: Vec<DnsLatencyKey> = counters
            .dns_latency
            .keys()
            .filter(|k| gone(k.cgroup_id, 0))
            .copied()
            .collect();
        let block: Vec<BlockKey> = counters
            .block
            .keys()
            .filter(|k| k.cgroup_id > 1 && blkio.contains(&k.cgroup_id))
            .copied()
            .collect();
        let throttle: Vec<u64> = counters
            .throttle
            .keys()
            .filter(|&&id| id > 1 && cpu.contains(&id))
            .copied()
            .collect();
        // Queries of a dead workload still waiting: they would time out later and
        // bring it back.
        let in_flight: Vec<DnsFlow> = self
            .probe
            .dns_in_flight()?
            .into_iter()
            .filter(|flow| gone(flow.cgroup_id, 0))
            .collect();

        let probe = &mut self.probe;
        let deleted = [
            (
                TCP_RETRANSMITS_MAP,
                probe.remove_entries::<_, RetransmitCounters>(TCP_RETRANSMITS_MAP, &retransmits)?,
            ),
            (
                DROPS_MAP,
                probe.remove_entries::<_, u64>(DROPS_MAP, &drops)?,
            ),
            (
                DNS_COUNTERS_MAP,
                probe.remove_entries::<_, DnsCounters>(DNS_COUNTERS_MAP, &dns_keys)?,
            ),
            (
                DNS_LATENCY_MAP,
                probe.remove_entries::<_, DnsHistogram>(DNS_LATENCY_MAP, &dns_latency)?,
            ),
            (
                DNS_IN_FLIGHT_MAP,
                probe.remove_entries::<_, DnsQuery>(DNS_IN_FLIGHT_MAP, &in_flight)?,
            ),
            (
                BLOCK_IO_MAP,
                probe.remove_entries::<_, BlockStats>(BLOCK_IO_MAP, &block)?,
            ),
            (
                CPU_THROTTLE_MAP,
                probe.remove_entries::<_, ThrottleStats>(CPU_THROTTLE_MAP, &throttle)?,
            ),
        ];
        for (map, count) in deleted {
            *self.gc_deleted.entry(map.to_string()).or_default() += count;
        }
        // Without the baseline an entry the kernel creates again counts from zero, as
        // the kernel does.
        let baseline = &mut self.baseline;
        for key in &retransmits {
            baseline.retransmits.remove(key);
        }
        for key in &drops {
            baseline.drops.remove(key);
        }
        for key in &dns_keys {
            baseline.dns.remove(key);
        }
        for key in &dns_latency {
            baseline.dns_latency.remove(key);
        }
        for key in &block {
            baseline.block.remove(key);
        }
        for id in &throttle {
            baseline.throttle.remove(id);
        }
        self.dns_timeouts.retain(|k, _| !gone(k.cgroup_id, 0));

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
                    self.cpu_watch.remove(&path);
                    if let Some(at_start) = self.cpu_at_start.as_mut() {
                        at_start.remove(&path);
                    }
                }
            }
        }
        Ok(())
    }

    /// Counts and forgets the DNS queries older than the timeout.
    fn expire_dns_queries(&mut self) -> anyhow::Result<()> {
        let deadline = monotonic_ns().saturating_sub(self.options.dns_timeout.as_nanos() as u64);
        for flow in self.probe.expire_dns_queries(deadline)? {
            let key = DnsResolverKey {
                cgroup_id: flow.cgroup_id,
                resolver: flow.server,
            };
            *self.dns_timeouts.entry(key).or_default() += 1;
        }
        Ok(())
    }

    /// Starts following `cpu.stat` of cgroups with a quota as they appear.
    fn watch_cpu_quotas(&mut self) {
        let paths = self.paths(Hierarchy::Cpu);
        paths.refresh();
        let root = paths.root().to_path_buf();
        let known: Vec<String> = paths.known().map(|(_, p)| p.to_string()).collect();
        let first_scan = self.cpu_at_start.is_none();
        let at_start = self.cpu_at_start.get_or_insert_with(HashMap::new);
        for path in known {
            let dir = join(&root, &path);
            if let Some(watch) = self.cpu_watch.get_mut(&path) {
                if let Some(now) = CpuAccounting::read(&dir) {
                    watch.last = now;
                }
                continue;
            }
            // Checked again every tick: a quota may be set after the cgroup appears
            // (runtimes create, then configure) or changed later (in-place resize).
            let (Some(limit), Some(now)) = (CpuLimit::read(&dir), CpuAccounting::read(&dir)) else {
                continue;
            };
            if limit.quota_us.is_none() {
                if first_scan {
                    at_start.insert(path, now);
                }
                continue;
            }
            // Counted from the window's start, not from the tick that noticed the quota:
            // a container is throttled hardest in its first second, before that tick.
            let first = if first_scan {
                now
            } else {
                at_start.remove(&path).unwrap_or_default()
            };
            self.cpu_watch.insert(
                path,
                CpuWatch {
                    first,
                    last: now,
                    limit,
                },
            );
        }
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
        let now = Counters::read(&self.probe)?;
        let reasons = self.probe.drop_reasons().clone();
        let block_ops = self.probe.block_ops().clone();
        let sys_root = self.sys_root.clone();
        let baseline = self.baseline.clone();
        let cpu_watch = self.cpu_watch.clone();
        let netns_tcp: Vec<(u32, NetnsTcpCounters)> = self
            .netns_last
            .iter()
            .map(|(&netns, last)| {
                let first = self.netns_first.get(&netns).copied().unwrap_or(*last);
                (netns, last.since(&first))
            })
            .collect();
        let mut builder = Builder::new(self);

        for (key, counters) in &now.retransmits {
            let before = baseline.retransmits.get(key).copied().unwrap_or_default();
            let delta = counters.since(&before);
            if delta == RetransmitCounters::default() {
                continue;
            }
            let netns = (key.netns != 0).then_some(key.netns);
            let tcp = &mut builder
                .by_cgroup(Hierarchy::Unified, key.cgroup_id, netns)
                .tcp;
            tcp.retransmits += delta.retransmits;
            tcp.retransmitted_segments += delta.segments;
            tcp.failed_retransmits += delta.failed;
        }

        for (key, &count) in &now.drops {
            let delta = count.saturating_sub(baseline.drops.get(key).copied().unwrap_or(0));
            if delta == 0 {
                continue;
            }
            let reason = reasons.name(key.reason);
            let netns = (key.netns != 0).then_some(key.netns);
            builder
                .by_cgroup(Hierarchy::Unified, key.cgroup_id, netns)
                .drops
                .add(&reason, delta);
        }

        for (netns, tcp) in &netns_tcp {
            // The host namespace always has traffic; its load alone would add a
            // workload for `/` to every report.
            let host = builder.collector.attributor.netns_owner(*netns) == Some("/");
            if *tcp == NetnsTcpCounters::default() || (host && tcp.listen_overflows == 0) {
                continue;
            }
            let workload = builder.by_netns(Some(*netns));
            if tcp.listen_overflows > 0 {
                workload
                    .drops
                    .add(TCP_LISTEN_OVERFLOW, tcp.listen_overflows);
            }
        }

        let mut block_keys: Vec<&BlockKey> = now.block.keys().collect();
        block_keys.sort_by_key(|k| (k.cgroup_id, k.dev, k.op));
        for key in block_keys {
            let stats = &now.block[key];
            let before = baseline.block.get(key).copied().unwrap_or(BlockStats::ZERO);
            let service = histogram::since(&stats.service, &before.service);
            if service.count == 0 {
                continue;
            }
            let queue = histogram::since(&stats.queue, &before.queue);
            let device = devices::name(&sys_root, key.dev);
            let report = BlockReport {
                scheduler: devices::scheduler(&sys_root, &device),
                device,
                op: block_ops.name(key.op).to_string(),
                requests: service.count,
                // Shared values are read while the kernel adds to them: never underflow.
                bytes: stats.bytes.saturating_sub(before.bytes),
                errors: stats.errors.saturating_sub(before.errors),
                service_ms: LatencySummary::of(&service),
                queue_ms: LatencySummary::of(&queue),
                service_histogram: service,
                queue_histogram: queue,
            };
            builder
                .by_cgroup(Hierarchy::Blkio, key.cgroup_id, None)
                .block
                .push(report);
        }

        let mut cpu_paths: BTreeMap<String, CpuReport> = BTreeMap::new();
        for (&id, stats) in &now.throttle {
            let before = baseline
                .throttle
                .get(&id)
                .copied()
                .unwrap_or(ThrottleStats::ZERO);
            let events = stats.events.saturating_sub(before.events);
            if events == 0 {
                continue;
            }
            let stall = histogram::since(&stats.stall, &before.stall);
            let workload = builder.by_cgroup(Hierarchy::Cpu, id, None);
            let cpu = workload.cpu.get_or_insert_with(CpuReport::default);
            cpu.throttle_events += events;
            cpu.stall_ms = LatencySummary::of(&stall);
            cpu.stall_total_ms = histogram::round_ms(stall.sum_ns as f64 / 1e6);
            cpu.stall_histogram = stall;
            if let Some(path) = workload.cgroup_path.clone() {
                cpu_paths.insert(path, cpu.clone());
            }
        }
        for (path, watch) in cpu_watch {
            let window = watch.last.since(&watch.first);
            let seen = cpu_paths.contains_key(&path);
            if window.periods == 0 && !seen {
                continue;
            }
            let cpu = builder
                .by_path(Hierarchy::Cpu, &path)
                .cpu
                .get_or_insert_with(CpuReport::default);
            cpu.quota_ms = watch.limit.quota_us.map(|us| us as f64 / 1000.0);
            cpu.period_ms = Some(watch.limit.period_us as f64 / 1000.0);
            cpu.periods = window.periods;
            cpu.throttled_periods = window.throttled_periods;
            cpu.throttled_ms = histogram::round_ms(window.throttled_ns as f64 / 1e6);
        }

        let dns_timeouts = builder.collector.dns_timeouts.clone();
        for (cgroup_id, report) in dns_reports(&now, &baseline, &dns_timeouts) {
            builder.by_cgroup(Hierarchy::Unified, cgroup_id, None).dns = Some(report);
        }

        let mut workloads = builder.finish();
        // The load that network signals are normalised by belongs to the namespace:
        // every workload living there (the pod, each container) gets its totals.
        let netns_tcp: HashMap<u32, NetnsTcpCounters> = netns_tcp.into_iter().collect();
        for workload in &mut workloads {
            if let Some(tcp) = workload.netns.and_then(|n| netns_tcp.get(&n)) {
                workload.tcp.passive_opens = tcp.passive_opens;
                workload.tcp.sent_segments = tcp.sent_segments;
            }
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

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// `1.2.3.4` for IPv4-mapped addresses, the IPv6 form otherwise.
fn resolver_name(address: [u8; 16]) -> String {
    let v6 = Ipv6Addr::from(address);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4).to_string(),
        None => IpAddr::V6(v6).to_string(),
    }
}

fn qtype_name(class: u8) -> &'static str {
    match class {
        dns::QTYPE_A => "A",
        dns::QTYPE_AAAA => "AAAA",
        dns::QTYPE_SRV => "SRV",
        dns::QTYPE_PTR => "PTR",
        _ => "OTHER",
    }
}

/// Per workload (cgroup v2 id): the window's DNS counts, latency and timeouts.
fn dns_reports(
    now: &Counters,
    baseline: &Counters,
    timeouts: &HashMap<DnsResolverKey, u64>,
) -> BTreeMap<u64, DnsReport> {
    let mut reports: BTreeMap<u64, DnsReport> = BTreeMap::new();
    let mut latency: BTreeMap<u64, DnsHistogram> = BTreeMap::new();
    let mut resolver_latency: BTreeMap<(u64, String), DnsHistogram> = BTreeMap::new();

    for (key, counters) in &now.dns {
        let before = baseline.dns.get(key).copied().unwrap_or_default();
        let delta = counters.since(&before);
        if delta == DnsCounters::default() {
            continue;
        }
        let report = reports.entry(key.cgroup_id).or_default();
        report.queries += delta.queries;
        report.responses += delta.responses;
        report.unmatched_responses += delta.unmatched;
        report.malformed += delta.malformed;
        if delta.queries + delta.responses > 0 {
            let resolver = report
                .by_resolver
                .entry(resolver_name(key.resolver))
                .or_default();
            resolver.queries += delta.queries;
            resolver.responses += delta.responses;
        }
    }
    for (key, &count) in timeouts {
        let report = reports.entry(key.cgroup_id).or_default();
        report.timeouts += count;
        report
            .by_resolver
            .entry(resolver_name(key.resolver))
            .or_default()
            .timeouts += count;
    }
    for (key, histogram) in &now.dns_latency {
        let before = baseline
            .dns_latency
            .get(key)
            .copied()
            .unwrap_or(DnsHistogram::ZERO);
        let window = histogram::since(histogram, &before);
        if window.count == 0 {
            continue;
        }
        let report = reports.entry(key.cgroup_id).or_default();
        *report.by_rcode.entry(rcode_name(key.rcode)).or_default() += window.count;
        *report
            .by_qtype
            .entry(qtype_name(key.qtype).to_string())
            .or_default() += window.count;
        histogram::add(
            latency.entry(key.cgroup_id).or_insert(DnsHistogram::ZERO),
            &window,
        );
        histogram::add(
            resolver_latency
                .entry((key.cgroup_id, resolver_name(key.resolver)))
                .or_insert(DnsHistogram::ZERO),
            &window,
        );
        let series = DnsLatencySeries {
            resolver: resolver_name(key.resolver),
            rcode: rcode_name(key.rcode),
            histogram: window,
        };
        match report
            .latency_series
            .iter_mut()
            .find(|s| s.resolver == series.resolver && s.rcode == series.rcode)
        {
            // Query types are kept apart in the kernel; the exporter does not label them.
            Some(existing) => histogram::add(&mut existing.histogram, &series.histogram),
            None => report.latency_series.push(series),
        }
    }
    for (cgroup_id, histogram) in latency {
        if let Some(report) = reports.get_mut(&cgroup_id) {
            report.latency_ms = Percentiles::of(&histogram);
        }
    }
    for ((cgroup_id, resolver), histogram) in resolver_latency {
        if let Some(report) = reports.get_mut(&cgroup_id) {
            report.by_resolver.entry(resolver).or_default().latency_ms =
                Percentiles::of(&histogram);
        }
    }
    reports
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

fn join(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
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

/// Accumulates counts per workload while attributing keys.
struct Builder<'a> {
    collector: &'a mut Collector,
    workloads: BTreeMap<Key, Workload>,
}

impl<'a> Builder<'a> {
    fn new(collector: &'a mut Collector) -> Self {
        Self {
            collector,
            workloads: BTreeMap::new(),
        }
    }

    fn by_cgroup(&mut self, hierarchy: Hierarchy, id: u64, netns: Option<u32>) -> &mut Workload {
        if id == 0 {
            return self.by_netns(netns);
        }
        let workload = match self.collector.paths(hierarchy).path(id) {
            Some(path) => self.by_path(hierarchy, &path),
            None => {
                // A cgroup created and removed between two scans: a container that lived
                // less than a second. Its network namespace still says whose pod it was.
                let pod = netns
                    .and_then(|ns| self.collector.attributor.netns_owner(ns))
                    .map(parse_kube_path)
                    .filter(|identity| identity.is_pod());
                let names = &self.collector.pod_names;
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
        let attributor = &self.collector.attributor;
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
            other => self.collector.paths(other).id_of(path),
        };
        let names = &self.collector.pod_names;
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
            .collector
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
        let collector = self.collector;
        let grace = collector.options.pod_grace;
        let expired = |path: &str| {
            let mut views = vec![&collector.attributor.cgroups];
            views.extend(collector.cpu_paths.as_ref());
            views.extend(collector.blkio_paths.as_ref());
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
