//! What every signal module implements, and what the window hands it.

use std::{
    collections::{HashMap, HashSet},
    fmt::Debug,
    path::PathBuf,
    time::Duration,
};

use probe_common::trace::TraceKind;
use serde::Serialize;

use super::record::TraceContext;
use crate::{
    kernel::{
        layout::Resolve,
        loader::{MapError, Probe, ProgramSpec},
    },
    output::{
        families::{Families, Labels},
        parts::{Cell, Detail, TopColumn},
    },
    workloads::{
        cgroup::{CgroupPaths, Hierarchy},
        identity::Identity,
        procfs::NetnsCounters,
    },
};

/// Whose count a kernel key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A cgroup id of a hierarchy, with the network namespace the count was made in;
    /// id 0 (no cgroup) means the owner of that namespace.
    Cgroup {
        hierarchy: Hierarchy,
        id: u64,
        netns: Option<u32>,
    },
    /// A cgroup path (the kubelet gives a container the same path in every hierarchy).
    Path { hierarchy: Hierarchy, path: String },
    /// The owner of a network namespace (the pod living in it): traffic without a
    /// socket.
    Netns(u32),
}

/// A workload's section of one signal, and the workload's cgroup path.
pub struct Slot<'a, S> {
    pub section: &'a mut S,
    pub path: Option<&'a str>,
}

/// Resolves owners to workloads: the window's attribution, as a signal sees it.
pub trait Attribution<S> {
    fn slot(&mut self, owner: Owner) -> Slot<'_, S>;
}

/// One network namespace's own counters over the window.
#[derive(Debug, Clone, Copy)]
pub struct NetnsLoad {
    pub counters: NetnsCounters,
    /// The host's namespace: its load alone must not add a workload for `/`.
    pub host: bool,
}

/// What the window knows beyond the kernel maps.
#[derive(Debug, Default)]
pub struct Shared {
    /// By namespace inode, every namespace seen during the window.
    pub netns: HashMap<u32, NetnsLoad>,
}

/// Cgroups (by hierarchy) and network namespaces gone for longer than the grace period.
#[derive(Debug, Default)]
pub struct Dead {
    pub unified: HashSet<u64>,
    pub cpu: HashSet<u64>,
    pub blkio: HashSet<u64>,
    pub netns: HashSet<u32>,
}

impl Dead {
    /// A socket-side key (a v2 cgroup id and a namespace) whose workload is gone. The
    /// root cgroup (1) and "no cgroup" (0) never die.
    pub fn gone(&self, cgroup_id: u64, netns: u32) -> bool {
        (cgroup_id > 1 && self.unified.contains(&cgroup_id))
            || (netns != 0 && self.netns.contains(&netns))
    }

    /// A cgroup id of `hierarchy` that is gone.
    pub fn cgroup_gone(&self, hierarchy: Hierarchy, id: u64) -> bool {
        let ids = match hierarchy {
            Hierarchy::Unified => &self.unified,
            Hierarchy::Cpu => &self.cpu,
            Hierarchy::Blkio => &self.blkio,
        };
        id > 1 && ids.contains(&id)
    }
}

/// Deletes the entries of the kernel map `map` (values of type `V`) whose keys in `now`
/// are `gone`, and their baselines, so that an entry the kernel makes again counts from
/// zero as the kernel does. Returns the map and how many entries went.
pub fn delete_entries<K, V, C>(
    probe: &mut Probe,
    map: &'static str,
    now: &HashMap<K, C>,
    baseline: &mut HashMap<K, C>,
    gone: impl Fn(&K) -> bool,
) -> Result<(&'static str, u64), MapError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let keys: Vec<K> = now.keys().filter(|k| gone(k)).copied().collect();
    for key in &keys {
        baseline.remove(key);
    }
    Ok((map, probe.remove_entries::<K, V>(map, &keys)?))
}

/// A signal's maps could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[error("{doing} the {signal} maps")]
pub struct SignalError {
    /// `reading`, `expiring in`, `collecting garbage in`.
    pub doing: &'static str,
    pub signal: &'static str,
    #[source]
    pub source: MapError,
}

/// How the signals are set up for a window.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A DNS query without a response after this long is a timeout.
    pub dns_timeout: Duration,
    /// Where sysfs is (block device names and schedulers).
    pub sys_root: PathBuf,
}

/// One signal's user side: its programs, reading and windowing its maps, naming and
/// garbage-collecting its keys, its section of a workload and how that is shown.
pub trait Source: Sized {
    /// Its name in `probes[].signal`, in `check` and in the `signal` label of
    /// `tuneprobe_probe_attached`.
    const NAME: &'static str;
    /// Its name on `trace`'s command line and in its events' `signal` (published before
    /// the names above, and kept).
    const TRACE_NAME: &'static str;
    /// Its kernel programs.
    const PROGRAMS: &'static [ProgramSpec];
    /// Its layout global, resolved from BTF at load time (the fields its programs read
    /// beyond the shared ones), if it has one.
    const LAYOUT: Option<Resolve> = None;
    /// Its kernel maps at one instant (cumulative counts).
    type Counters: Clone + Default;
    /// Its part of a workload, as `snapshot --json` prints it.
    type Section: Clone + Debug + Default + PartialEq + Serialize;

    fn new(settings: &Settings) -> Self;

    fn read(probe: &Probe) -> Result<Self::Counters, MapError>;

    /// The cgroup ids its keys carry, to be named while they still exist.
    fn cgroups(counters: &Self::Counters) -> Vec<(Hierarchy, u64)>;

    /// Its counts per network namespace: a count that moves shows a namespace alive.
    fn netns_counts(_counters: &Self::Counters) -> Vec<(u32, u64)> {
        Vec::new()
    }

    /// Upkeep once a second (expiring, following cgroup files).
    fn tick(&mut self, _probe: &mut Probe, _cpu_paths: &mut CgroupPaths) -> Result<(), MapError> {
        Ok(())
    }

    /// Deletes the kernel entries of dead workloads, and their baselines, so that an
    /// entry the kernel makes again counts from zero as the kernel does. Returns the
    /// deleted count per map.
    fn collect_garbage(
        &mut self,
        probe: &mut Probe,
        now: &Self::Counters,
        baseline: &mut Self::Counters,
        dead: &Dead,
    ) -> Result<Vec<(&'static str, u64)>, MapError>;

    /// Forgets what it keeps about a cgroup path whose name is forgotten.
    fn forget(&mut self, _hierarchy: Hierarchy, _path: &str) {}

    /// Adds the window's counts (`now` less `baseline`) to the workloads they belong to.
    fn report(
        &self,
        probe: &Probe,
        now: &Self::Counters,
        baseline: &Self::Counters,
        shared: &Shared,
        out: &mut dyn Attribution<Self::Section>,
    );

    /// Last touches once every workload is known: namespace totals for every workload
    /// living in `netns`.
    fn complete(_shared: &Shared, _netns: Option<u32>, _section: &mut Self::Section) {}

    /// Its metric families for one workload with `labels`.
    fn metrics(section: &Self::Section, labels: &Labels, families: &mut Families);

    /// The kind of its `trace` records.
    const TRACE_KIND: TraceKind;
    /// The cgroup hierarchy of its records' cgroup ids.
    const TRACE_HIERARCHY: Hierarchy = Hierarchy::Unified;
    /// Its `trace` record, as the kernel writes it (header first).
    type Event: aya::Pod;
    /// Its fields of a `trace` event (`trace --json`).
    type TraceFields: Clone + Debug + PartialEq + Serialize;

    fn trace_fields(event: &Self::Event, context: &mut TraceContext<'_>) -> Self::TraceFields;

    /// Its part of a `trace` line.
    fn trace_detail(fields: &Self::TraceFields) -> String;

    /// The event's latency in milliseconds, for `trace --min-latency`.
    fn trace_latency_ms(_fields: &Self::TraceFields) -> Option<f64> {
        None
    }

    /// Its columns in `top`.
    const TOP_COLUMNS: &'static [TopColumn] = &[];

    /// Its `top` cells over an interval, one per column; `now` and `before` are
    /// cumulative (`before` is empty for a workload new in this interval).
    fn top_cells(_now: &Self::Section, _before: &Self::Section, _seconds: f64) -> Vec<Cell> {
        Vec::new()
    }

    /// Its part of a workload's detail view in `top` (totals since `top` started).
    fn top_detail(_section: &Self::Section, _detail: &mut Detail) {}

    /// Its table in `snapshot`: a header and a row per workload with activity, or
    /// nothing.
    fn table(_rows: &[(&Identity, &Self::Section)]) -> String {
        String::new()
    }
}
