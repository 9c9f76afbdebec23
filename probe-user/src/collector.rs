//! One observation window: counters at its start, periodic scans while it runs (so that
//! short-lived cgroups and namespaces are still named), and the per-workload report at
//! its end.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Instant,
};

use anyhow::Context as _;
use probe_common::{DropKey, RetransmitCounters, RetransmitKey};

use crate::{
    attribution::Attributor,
    cgroup::{CgroupPaths, cgroup2_mount, parse_kube_path},
    loader::Probe,
    procfs::{self, ListenCounters},
    report::{Snapshot, TCP_LISTEN_OVERFLOW, Workload},
};

/// Kernel counters at one instant.
#[derive(Debug, Default, Clone)]
struct Counters {
    retransmits: HashMap<RetransmitKey, RetransmitCounters>,
    drops: HashMap<DropKey, u64>,
}

impl Counters {
    fn read(probe: &Probe) -> anyhow::Result<Self> {
        Ok(Self {
            retransmits: probe.retransmits().context("reading retransmit counters")?,
            drops: probe.drops().context("reading drop counters")?,
        })
    }
}

pub struct Collector {
    probe: Probe,
    proc_root: PathBuf,
    attributor: Attributor,
    started: Instant,
    baseline: Counters,
    /// First and latest listen counters of every namespace seen during the window.
    listen_first: HashMap<u32, ListenCounters>,
    listen_last: HashMap<u32, ListenCounters>,
}

impl Collector {
    /// Starts a window now. Counts before this call are excluded.
    pub fn start(probe: Probe) -> anyhow::Result<Self> {
        let root = cgroup2_mount().context("cgroup v2 is not mounted")?;
        let proc_root = PathBuf::from("/proc");
        let host_netns = Attributor::host_netns(&proc_root);
        let mut collector = Self {
            attributor: Attributor::new(CgroupPaths::new(root), host_netns),
            baseline: Counters::read(&probe)?,
            probe,
            proc_root,
            started: Instant::now(),
            listen_first: HashMap::new(),
            listen_last: HashMap::new(),
        };
        collector.tick()?;
        Ok(collector)
    }

    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// Rescans processes and namespaces and names any new cgroup ids. Call about once a
    /// second.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        let processes = procfs::processes(&self.proc_root);
        self.attributor.observe(&processes);
        let live: Vec<(u32, u32)> = self.attributor.live_netns().collect();
        for (netns, pid) in live {
            if let Some(counters) = ListenCounters::of_pid(&self.proc_root, pid) {
                self.listen_first.entry(netns).or_insert(counters);
                self.listen_last.insert(netns, counters);
            }
        }
        // Name the cgroups behind new keys now, before they can disappear.
        let counters = Counters::read(&self.probe)?;
        let ids = counters
            .retransmits
            .keys()
            .map(|k| k.cgroup_id)
            .chain(counters.drops.keys().map(|k| k.cgroup_id));
        for id in ids.filter(|&id| id != 0) {
            let _ = self.attributor.cgroups.path(id);
        }
        Ok(())
    }

    /// Ends the window: counter deltas since [`start`](Self::start), per workload.
    pub fn finish(mut self) -> anyhow::Result<Snapshot> {
        self.tick()?;
        let now = Counters::read(&self.probe)?;
        let reasons = self.probe.drop_reasons().clone();
        let mut builder = Builder::new(&mut self.attributor);

        for (key, counters) in &now.retransmits {
            let before = self
                .baseline
                .retransmits
                .get(key)
                .copied()
                .unwrap_or_default();
            let delta = RetransmitCounters {
                retransmits: counters.retransmits - before.retransmits,
                segments: counters.segments - before.segments,
                failed: counters.failed - before.failed,
            };
            if delta == RetransmitCounters::default() {
                continue;
            }
            let netns = (key.netns != 0).then_some(key.netns);
            let tcp = &mut builder.by_cgroup(key.cgroup_id, netns).tcp;
            tcp.retransmits += delta.retransmits;
            tcp.retransmitted_segments += delta.segments;
            tcp.failed_retransmits += delta.failed;
        }

        for (key, &count) in &now.drops {
            let delta = count - self.baseline.drops.get(key).copied().unwrap_or(0);
            if delta == 0 {
                continue;
            }
            let reason = reasons.name(key.reason);
            let netns = (key.netns != 0).then_some(key.netns);
            let workload = if key.cgroup_id != 0 {
                builder.by_cgroup(key.cgroup_id, netns)
            } else {
                builder.by_netns(netns)
            };
            workload.drops.add(&reason, delta);
        }

        for (&netns, last) in &self.listen_last {
            let first = self.listen_first.get(&netns).copied().unwrap_or(*last);
            let overflows = last.since(&first).overflows;
            if overflows > 0 {
                builder
                    .by_netns(Some(netns))
                    .drops
                    .add(TCP_LISTEN_OVERFLOW, overflows);
            }
        }

        let workloads = builder.finish();
        let map_overflows: BTreeMap<String, u64> = self
            .probe
            .map_overflows()?
            .into_iter()
            .map(|(name, lost)| (name.to_string(), lost))
            .collect();
        Ok(Snapshot {
            duration_s: self.started.elapsed().as_secs_f64(),
            probes: self.probe.statuses().to_vec(),
            map_overflows,
            workloads,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Cgroup(u64),
    /// A namespace whose owner is not known (its processes were never seen).
    Netns(u32),
    Unattributed,
}

/// Accumulates counts per workload while attributing keys.
struct Builder<'a> {
    attributor: &'a mut Attributor,
    workloads: BTreeMap<Key, Workload>,
}

impl<'a> Builder<'a> {
    fn new(attributor: &'a mut Attributor) -> Self {
        Self {
            attributor,
            workloads: BTreeMap::new(),
        }
    }

    fn by_cgroup(&mut self, cgroup_id: u64, netns: Option<u32>) -> &mut Workload {
        if cgroup_id == 0 {
            return self.by_netns(netns);
        }
        let path = self.attributor.cgroups.path(cgroup_id);
        let workload = self
            .workloads
            .entry(Key::Cgroup(cgroup_id))
            .or_insert_with(|| {
                let identity = path.as_deref().map(parse_kube_path).unwrap_or_default();
                Workload {
                    cgroup_id: Some(cgroup_id),
                    netns: path.as_deref().and_then(|p| {
                        if identity.is_pod() && identity.container_id.is_none() {
                            self.attributor.netns_below(p)
                        } else {
                            self.attributor.netns_of_cgroup(p)
                        }
                    }),
                    cgroup_path: path,
                    pod_uid: identity.pod_uid,
                    container_id: identity.container_id,
                    ..Default::default()
                }
            });
        if workload.netns.is_none() {
            workload.netns = netns;
        }
        workload
    }

    /// Traffic with no socket: the namespace's owner (the pod living in it) if known.
    fn by_netns(&mut self, netns: Option<u32>) -> &mut Workload {
        let Some(netns) = netns else {
            return self.workloads.entry(Key::Unattributed).or_default();
        };
        let owner_id = self
            .attributor
            .netns_owner(netns)
            .map(str::to_string)
            .and_then(|path| self.attributor.cgroups.id_of(&path));
        match owner_id {
            Some(id) => self.by_cgroup(id, Some(netns)),
            None => self
                .workloads
                .entry(Key::Netns(netns))
                .or_insert_with(|| Workload {
                    netns: Some(netns),
                    ..Default::default()
                }),
        }
    }

    fn finish(self) -> Vec<Workload> {
        self.workloads.into_values().collect()
    }
}
