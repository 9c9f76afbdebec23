//! The tuning inventory: every knob of the tuning guides that can be read on this node,
//! at its scope (the node, each pod's network namespace, each block device, each mount,
//! each cpu cgroup), next to what the tuning guides recommend.
//!
//! The table of knobs is data: what each one is, where it lives, what the guides
//! recommend, and which signal it should move.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

#[cfg(test)]
mod docs;

use crate::signals::{cpu_throttle::cpustat::CpuLimit, measure::Measure};

/// Where a knob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Scope {
    /// A global sysctl.
    Node,
    /// A sysctl that each network namespace has its own copy of.
    Netns,
    /// `/sys/block/DEV/queue/*`.
    Device,
    /// A mount option.
    Mount,
    /// A cgroup file.
    Cgroup,
}

/// When the kernel applies a new value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applies {
    /// At once, to everything.
    AtOnce,
    /// When a socket calls `listen()`: existing listeners keep the value they had.
    AtListen,
}

/// What the guides recommend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recommendation {
    /// Exactly this value (whitespace-normalised).
    Exactly(&'static str),
    /// At least this number.
    AtLeast(u64),
    /// A number within this range.
    Between(u64, u64),
    /// One of these values.
    OneOf(&'static [&'static str]),
    /// The option is present.
    Set,
    /// No single value: only reported.
    None,
}

impl Recommendation {
    /// Whether `value` follows the recommendation; `None` when there is nothing to check.
    pub(crate) fn followed_by(&self, value: &str) -> Option<bool> {
        let normalised = value.split_whitespace().collect::<Vec<_>>().join(" ");
        let number = normalised.parse::<u64>().ok();
        match *self {
            Self::Exactly(want) => Some(normalised == want),
            Self::AtLeast(min) => number.map(|n| n >= min),
            Self::Between(lo, hi) => number.map(|n| (lo..=hi).contains(&n)),
            Self::OneOf(options) => Some(options.contains(&normalised.as_str())),
            Self::Set => Some(normalised == "on"),
            Self::None => None,
        }
    }

    pub(crate) fn describe(&self) -> Option<String> {
        match *self {
            Self::Exactly(want) => Some(want.to_string()),
            Self::AtLeast(min) => Some(format!(">= {min}")),
            Self::Between(lo, hi) => Some(format!("{lo}-{hi}")),
            Self::OneOf(options) => Some(options.join(" or ")),
            Self::Set => Some("on".to_string()),
            Self::None => None,
        }
    }
}

/// One knob of the guides: where it lives, what the guides recommend, and what it
/// should move.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Knob {
    /// As users name it: `net.core.somaxconn`, `queue/scheduler`, `noatime`, `cpu.max`.
    pub name: &'static str,
    /// The same knob under other names: the cgroup v1 files of a v2 one.
    pub aliases: &'static [&'static str],
    pub scope: Scope,
    pub recommendation: Recommendation,
    /// The measures `verify` judges it on; empty where tuneprobe has no honest signal.
    pub judged_by: &'static [Measure],
    /// Why those measures (or, with none, why it is judged on nothing).
    pub why: &'static str,
    /// For a knob judged on nothing: the signal the guides name, which tuneprobe does
    /// not measure.
    unmeasured: &'static str,
    /// Read by the inventory (`tuneprobe tuning`); a cgroup file that only `verify`
    /// changes is not.
    pub inventoried: bool,
    /// When a change takes effect (`verify` explains a verdict of an `AtListen` knob
    /// with the listeners that still have the old value).
    pub applies: Applies,
}

/// A knob judged on `measures`, because `why`.
const fn judged(
    name: &'static str,
    scope: Scope,
    recommendation: Recommendation,
    measures: &'static [Measure],
    why: &'static str,
) -> Knob {
    Knob {
        name,
        aliases: &[],
        scope,
        recommendation,
        judged_by: measures,
        why,
        unmeasured: "",
        inventoried: true,
        applies: Applies::AtOnce,
    }
}

/// A knob tuneprobe cannot judge: the guides' `signal`, and `why` not.
const fn unjudged(
    name: &'static str,
    scope: Scope,
    recommendation: Recommendation,
    signal: &'static str,
    why: &'static str,
) -> Knob {
    Knob {
        unmeasured: signal,
        ..judged(name, scope, recommendation, &[], why)
    }
}

impl Knob {
    const fn aliases(mut self, names: &'static [&'static str]) -> Self {
        self.aliases = names;
        self
    }

    const fn applied_at_listen(mut self) -> Self {
        self.applies = Applies::AtListen;
        self
    }

    const fn not_inventoried(mut self) -> Self {
        self.inventoried = false;
        self
    }

    /// What it should move, in words: its measures' own declarations, or the guides'
    /// signal that tuneprobe does not measure (the inventory's `signal` field).
    pub(crate) fn signal(&self) -> String {
        if self.judged_by.is_empty() {
            return format!("{} (not measured)", self.unmeasured);
        }
        self.judged_by
            .iter()
            .map(|m| m.declared().what)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The measures a knob should move, by its name or an alias; empty for a knob
/// tuneprobe cannot judge.
pub(crate) fn measures_for(name: &str) -> &'static [Measure] {
    knob_named(name).map_or(&[], |k| k.judged_by)
}

/// Every judged knob name (aliases included) with the measures it should move, for
/// documentation and `--help`.
pub(crate) fn judged_knobs() -> impl Iterator<Item = (&'static str, &'static [Measure])> {
    KNOBS
        .iter()
        .filter(|k| !k.judged_by.is_empty())
        .flat_map(|k| {
            std::iter::once(k.name)
                .chain(k.aliases.iter().copied())
                .map(move |name| (name, k.judged_by))
        })
}

/// The knob named `name`, or having it as an alias.
pub(crate) fn knob_named(name: &str) -> Option<&'static Knob> {
    KNOBS
        .iter()
        .find(|k| k.name == name || k.aliases.contains(&name))
}

use Measure::{
    BacklogDropRatio, BlockQueueMs, BlockServiceMs, BlockServiceP99Ms, BlockWriteMs,
    BlockWriteP99Ms, ConnectFailureRatio, CpuStallP99Ms, CpuThrottledMsPerPeriod,
    CpuThrottledRatio, ForwardDropRatio, ListenOverflowRatio, RcvbufDropRatio, ResetRatio,
    RetransmitRatio, SrttMs, TcpPruneRatio, TcpRcvqDropRatio, WritesPerRead,
};
use Recommendation::{AtLeast, Between, Exactly, OneOf, Set};
use Scope::{Cgroup, Device, Mount, Netns, Node};

const SEND_BUFFER: &str = "a send buffer limits how much a sender keeps in flight, which \
    shows as throughput on long paths; tuneprobe does not measure the time a socket is \
    send-buffer limited (tcp_info's sndbuf_limited), and retransmits or drops do not \
    depend on it, so tuneprobe judges it on nothing rather than on something unrelated";
const PORTS: &str = "a connect that finds no free local port fails (EADDRNOTAVAIL) \
    before it sends anything; more ports, or TIME_WAIT ports reused or freed sooner, \
    leave fewer such failures per attempt";
const LISTEN: &str = "a full accept or SYN queue turns connection attempts away; the \
    kernel counts them as listen overflows, per attempt (a listener takes a new \
    limit when it calls listen() again)";
const WRITEBACK: &str = "dirty-page limits decide when writeback starts and how much it \
    writes at once: bursts of writes queue behind each other";
const ATIME: &str = "a read updates the inode's access time, which the filesystem \
    writes back: a write request per read, gone with noatime";

/// The one knob table: the knobs of the tuning guides (listed in docs/tuning.md) and the
/// cgroup files `verify` can change.
pub(crate) const KNOBS: &[Knob] = &[
    judged(
        "net.core.somaxconn",
        Netns,
        AtLeast(65535),
        &[ListenOverflowRatio],
        LISTEN,
    )
    .applied_at_listen(),
    judged(
        "net.ipv4.tcp_max_syn_backlog",
        Netns,
        AtLeast(8096),
        &[ListenOverflowRatio],
        LISTEN,
    ),
    judged(
        "net.ipv4.tcp_rmem",
        Netns,
        Exactly("4096 87380 16777216"),
        &[TcpRcvqDropRatio, TcpPruneRatio],
        "a receive buffer that fills makes the kernel collapse and prune the receive \
         queue, then drop segments; received segments are the load",
    ),
    unjudged(
        "net.ipv4.tcp_wmem",
        Netns,
        Exactly("4096 65536 16777216"),
        "throughput of senders on long paths",
        SEND_BUFFER,
    ),
    judged(
        "net.ipv4.tcp_congestion_control",
        Netns,
        Exactly("bbr"),
        &[RetransmitRatio, SrttMs],
        "congestion control decides how hard to push into loss and queues: retransmits \
         and queueing delay (RTT) both move, often in opposite directions",
    ),
    judged(
        "net.ipv4.tcp_tw_reuse",
        Netns,
        Exactly("1"),
        &[ConnectFailureRatio],
        PORTS,
    ),
    judged(
        "net.ipv4.tcp_fin_timeout",
        Netns,
        Exactly("30"),
        &[ConnectFailureRatio],
        PORTS,
    ),
    judged(
        "net.ipv4.ip_local_port_range",
        Netns,
        Exactly("1024 65535"),
        &[ConnectFailureRatio],
        PORTS,
    ),
    judged(
        "net.ipv4.tcp_keepalive_time",
        Netns,
        Exactly("1200"),
        &[ResetRatio],
        "idle connections that middleboxes forget are reset when used again; keepalives \
         sent sooner keep them alive",
    ),
    judged(
        "net.ipv4.tcp_syncookies",
        Netns,
        Exactly("1"),
        &[ListenOverflowRatio],
        "with cookies a full SYN queue answers instead of dropping the SYN",
    ),
    judged(
        "net.ipv4.ip_forward",
        Netns,
        Exactly("1"),
        &[ForwardDropRatio],
        "a packet for another host is forwarded, or dropped (IP_INADDRERRORS with \
         forwarding off, or by the firewall); drops of other reasons and traffic to the \
         namespace itself are not its load",
    ),
    judged(
        "net.core.netdev_max_backlog",
        Node,
        AtLeast(5000),
        &[BacklogDropRatio],
        "the per-CPU input backlog drops packets (CPU_BACKLOG) once it holds this many; \
         every received packet passes it",
    ),
    judged(
        "net.core.rmem_max",
        Node,
        AtLeast(16_777_216),
        &[RcvbufDropRatio, TcpRcvqDropRatio],
        "it caps the receive buffer an application can ask for (SO_RCVBUF): a datagram \
         socket's full buffer drops (SOCKET_RCVBUFF), a TCP socket's prunes and drops",
    ),
    unjudged(
        "net.core.wmem_max",
        Node,
        AtLeast(16_777_216),
        "throughput of senders on long paths",
        SEND_BUFFER,
    ),
    judged(
        "net.core.rmem_default",
        Node,
        Recommendation::None,
        &[RcvbufDropRatio],
        "the receive buffer of datagram sockets that set none: a full one drops \
         (SOCKET_RCVBUFF); TCP sizes its own from tcp_rmem",
    ),
    unjudged(
        "net.bridge.bridge-nf-call-iptables",
        Node,
        Exactly("1"),
        "NETFILTER_DROP of bridged packets",
        "bridged frames pass no IP counter of the namespace (InReceives, ForwDatagrams), \
         so its drops have no honest load; `verify --exec ... --signal drops` shows the \
         count",
    ),
    unjudged(
        "vm.swappiness",
        Node,
        Between(1, 10),
        "swap IO and reclaim stalls",
        "tuneprobe measures neither reclaim nor swap IO apart from other block IO",
    ),
    judged(
        "vm.dirty_ratio",
        Node,
        Between(15, 60),
        &[BlockWriteMs, BlockWriteP99Ms],
        WRITEBACK,
    ),
    judged(
        "vm.dirty_background_ratio",
        Node,
        Between(5, 30),
        &[BlockWriteMs, BlockWriteP99Ms],
        WRITEBACK,
    ),
    unjudged(
        "fs.file-max",
        Node,
        AtLeast(2_097_152),
        "EMFILE/ENFILE",
        "its signal is a failed system call, which tuneprobe does not trace",
    ),
    unjudged(
        "fs.inotify.max_user_watches",
        Node,
        AtLeast(1_048_576),
        "inotify failures",
        "its signal is a failed system call, which tuneprobe does not trace",
    ),
    unjudged(
        "fs.inotify.max_user_instances",
        Node,
        AtLeast(8192),
        "inotify failures",
        "its signal is a failed system call, which tuneprobe does not trace",
    ),
    judged(
        "queue/scheduler",
        Device,
        OneOf(&["none", "mq-deadline"]),
        &[BlockServiceMs, BlockServiceP99Ms],
        "the scheduler orders and merges requests: their latency and its tail move",
    ),
    judged(
        "queue/nr_requests",
        Device,
        Recommendation::None,
        &[BlockQueueMs, BlockServiceMs],
        "the scheduler's queue depth: how long requests wait before the device",
    ),
    judged(
        "queue/read_ahead_kb",
        Device,
        Recommendation::None,
        &[BlockQueueMs, BlockServiceMs],
        "read-ahead changes request sizes, and with them queueing and service time",
    ),
    unjudged(
        "queue/rotational",
        Device,
        Recommendation::None,
        "request latency",
        "it only tells the kernel what the device is; no signal of its own",
    ),
    judged("noatime", Mount, Set, &[WritesPerRead], ATIME),
    judged("nodiratime", Mount, Set, &[WritesPerRead], ATIME),
    judged(
        "cpu.max",
        Cgroup,
        Recommendation::None,
        &[CpuThrottledRatio, CpuThrottledMsPerPeriod, CpuStallP99Ms],
        "a limit below demand throttles the container: a raise that stays below demand \
         still throttles every period but for less time, so throttled time per period \
         and the stall tail judge it beside the share of throttled periods",
    )
    .aliases(&["cpu.cfs_quota_us", "cpu.cfs_period_us"]),
    // Block throttles: cgroup files `verify` changes and judges, not inventoried.
    judged(
        "io.max",
        Cgroup,
        Recommendation::None,
        &[BlockServiceMs, BlockServiceP99Ms],
        "a throttle holds requests back: their service time and its tail",
    )
    .aliases(&[
        "blkio.throttle.read_iops_device",
        "blkio.throttle.write_iops_device",
        "blkio.throttle.read_bps_device",
        "blkio.throttle.write_bps_device",
    ])
    .not_inventoried(),
];

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
    fn new(knob: &Knob, value: String) -> Self {
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

/// A knob whose value changed between two inventories.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Change {
    pub knob: String,
    /// `node`, `netns:<inode>`, `device:<name>`, `mount:<path>`, `cgroup:<path>`.
    pub scope: String,
    /// The scope's owner, when it has one (the pod cgroup of a namespace).
    pub owner: Option<String>,
    /// `null` when the knob appeared (a new namespace, a new cgroup quota).
    pub old: Option<String>,
    /// `null` when the knob disappeared.
    pub new: Option<String>,
}

impl Inventory {
    /// Every setting with its scope key and owner.
    fn flatten(&self) -> BTreeMap<(String, String), (Option<String>, String)> {
        let mut out = BTreeMap::new();
        let mut put = |scope: String, owner: Option<&String>, settings: &[Setting]| {
            for s in settings {
                out.insert(
                    (scope.clone(), s.knob.clone()),
                    (owner.cloned(), s.value.clone()),
                );
            }
        };
        put("node".into(), None, &self.node);
        for ns in &self.netns {
            put(
                format!("netns:{}", ns.netns),
                ns.owner.as_ref(),
                &ns.settings,
            );
        }
        for d in &self.devices {
            put(format!("device:{}", d.device), None, &d.settings);
        }
        for m in &self.mounts {
            put(format!("mount:{}", m.mountpoint), None, &m.settings);
        }
        for c in &self.cgroups {
            put(
                format!("cgroup:{}", c.cgroup_path),
                Some(&c.cgroup_path),
                &c.settings,
            );
        }
        out
    }

    /// What changed from `earlier` to `self`. A scope that came or went entirely (a pod
    /// started or ended, a quota set on a new container) is not a tuning change and is
    /// left out; a knob that appeared or disappeared within a scope that stayed is one.
    /// (Container cgroups are listed with or without a quota, so a limit added to a
    /// running container is a change; other cgroups only while they have a quota.)
    pub(crate) fn changes_since(&self, earlier: &Inventory) -> Vec<Change> {
        let (before, after) = (earlier.flatten(), self.flatten());
        let scopes = |map: &BTreeMap<(String, String), (Option<String>, String)>| {
            map.keys()
                .map(|(scope, _)| scope.clone())
                .collect::<std::collections::BTreeSet<_>>()
        };
        let (scopes_before, scopes_after) = (scopes(&before), scopes(&after));
        let stable = |scope: &String| scopes_before.contains(scope) && scopes_after.contains(scope);
        let mut changes = Vec::new();
        let keys: std::collections::BTreeSet<_> =
            before.keys().chain(after.keys()).cloned().collect();
        for key in keys {
            let (old, new) = (before.get(&key), after.get(&key));
            if old.map(|o| &o.1) == new.map(|n| &n.1) || !stable(&key.0) {
                continue;
            }
            changes.push(Change {
                owner: new.or(old).and_then(|(owner, _)| owner.clone()),
                knob: key.1.clone(),
                scope: key.0.clone(),
                old: old.map(|(_, v)| v.clone()),
                new: new.map(|(_, v)| v.clone()),
            });
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommendations() {
        assert_eq!(AtLeast(65535).followed_by("4096"), Some(false));
        assert_eq!(AtLeast(65535).followed_by("65535\n"), Some(true));
        assert_eq!(
            Exactly("4096 87380 16777216").followed_by("4096\t87380\t16777216\n"),
            Some(true)
        );
        assert_eq!(Between(1, 10).followed_by("60"), Some(false));
        assert_eq!(
            OneOf(&["none", "mq-deadline"]).followed_by("bfq"),
            Some(false)
        );
        assert_eq!(Set.followed_by("on"), Some(true));
        assert_eq!(Recommendation::None.followed_by("x"), None);
        assert_eq!(AtLeast(5).followed_by("not a number"), None);
    }

    #[test]
    fn every_knob_of_the_guide_is_in_the_table() {
        for name in [
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.core.netdev_max_backlog",
            "net.ipv4.tcp_congestion_control",
            "vm.swappiness",
            "queue/scheduler",
            "noatime",
            "cpu.max",
        ] {
            assert!(KNOBS.iter().any(|k| k.name == name), "{name}");
        }
    }

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
    fn changes_between_inventories() {
        let somaxconn = KNOBS
            .iter()
            .find(|k| k.name == "net.core.somaxconn")
            .unwrap();
        let cpu = KNOBS.iter().find(|k| k.name == "cpu.max").unwrap();
        let ns = |inode: u32, value: &str| NetnsSettings {
            netns: inode,
            owner: Some(format!("/pod{inode}")),
            settings: vec![Setting::new(somaxconn, value.into())],
            error: None,
        };
        let before = Inventory {
            netns: vec![ns(1, "4096"), ns(2, "4096")],
            ..Inventory::default()
        };
        let after = Inventory {
            netns: vec![ns(1, "65535"), ns(3, "4096")],
            cgroups: vec![CgroupSettings {
                cgroup_path: "/c".into(),
                settings: vec![Setting::new(cpu, "20000 100000".into())],
            }],
            ..Inventory::default()
        };
        let changes = after.changes_since(&before);
        // netns 1 changed; netns 2 ended, 3 started and a container with a quota
        // appeared: pods coming and going, not tuning.
        assert_eq!(changes.len(), 1, "{changes:#?}");
        assert_eq!(
            changes[0],
            Change {
                knob: "net.core.somaxconn".into(),
                scope: "netns:1".into(),
                owner: Some("/pod1".into()),
                old: Some("4096".into()),
                new: Some("65535".into()),
            }
        );
        // The container's quota raised in place: a change of that cgroup.
        let mut raised = after.clone();
        raised.cgroups[0].settings = vec![Setting::new(cpu, "100000 100000".into())];
        let changes = raised.changes_since(&after);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].scope.as_str(), changes[0].new.as_deref()),
            ("cgroup:/c", Some("100000 100000"))
        );
        assert_eq!(after.changes_since(&after.clone()), vec![]);
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
