//! The one knob table: what each knob of the tuning guides is, where it lives, what the
//! guides recommend, when a change applies, and the measures `verify` judges it on.

use serde::Serialize;

use super::advice::{self, Rule};
use crate::signals::measure::Measure;

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
    /// The DNS resolver a workload queries: a deployment of the cluster, not a file on
    /// the node.
    Resolver,
}

/// When the kernel applies a new value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applies {
    /// At once, to everything.
    AtOnce,
    /// When a socket calls `listen()`: existing listeners keep the value they had.
    AtListen,
    /// To sockets created after the change: open ones keep the value they were made with.
    NewSockets,
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
    /// When `tuneprobe advise` recommends it.
    pub advice: Option<Rule>,
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
        advice: None,
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

    const fn applied_to_new_sockets(mut self) -> Self {
        self.applies = Applies::NewSockets;
        self
    }

    const fn advised(mut self, rule: Rule) -> Self {
        self.advice = Some(rule);
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
    BlockWriteP99Ms, ConnectFailureRatio, ConntrackFullRatio, CpuStallP99Ms,
    CpuThrottledMsPerPeriod, CpuThrottledRatio, ForwardDropRatio, ListenOverflowRatio,
    RcvbufDropRatio, ResetRatio, RetransmitRatio, SrttMs, TcpPruneRatio, TcpRcvqDropRatio,
    WritesPerRead,
};
use Recommendation::{AtLeast, Between, Exactly, OneOf, Set};
use Scope::{Cgroup, Device, Mount, Netns, Node, Resolver};

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
    .advised(advice::LISTEN_OVERFLOWS)
    .applied_at_listen(),
    judged(
        "net.ipv4.tcp_max_syn_backlog",
        Netns,
        AtLeast(8096),
        &[ListenOverflowRatio],
        LISTEN,
    ),
    // Not advised on listen overflows: those are the accept queue's, whose limit is the
    // listener's backlog capped by somaxconn; a full SYN queue (without syncookies)
    // drops SYNs as ListenDrops, which no measure isolates yet.
    judged(
        "net.ipv4.tcp_rmem",
        Netns,
        Exactly("4096 87380 16777216"),
        &[TcpRcvqDropRatio, TcpPruneRatio],
        "a receive buffer that fills makes the kernel collapse and prune the receive \
         queue, then drop segments; received segments are the load",
    )
    .advised(advice::TCP_RCVQ_DROPS),
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
    )
    // Not advised: under loss BBR did not lower the retransmit ratio in the lab (random
    // loss: the path's rate either way) and raised it twentyfold behind a shallow
    // bottleneck buffer; tuneprobe has no throughput measure to show what it gains.
    .applied_to_new_sockets(),
    judged(
        "net.ipv4.tcp_tw_reuse",
        Netns,
        Exactly("1"),
        &[ConnectFailureRatio],
        PORTS,
    )
    .advised(advice::TIME_WAIT_PORTS),
    judged(
        "net.ipv4.tcp_fin_timeout",
        Netns,
        Exactly("30"),
        &[ConnectFailureRatio],
        PORTS,
    ),
    // Not advised for ports held in TIME_WAIT, as guides do: it times out FIN_WAIT_2,
    // and TIME_WAIT lasts its fixed 60 s whatever it says (proven in the lab: connect
    // failures 1.0 before and after setting it to 30).
    judged(
        "net.ipv4.ip_local_port_range",
        Netns,
        Exactly("1024 65535"),
        &[ConnectFailureRatio],
        PORTS,
    )
    .advised(advice::PORT_EXHAUSTION),
    judged(
        "net.ipv4.tcp_keepalive_time",
        Netns,
        Exactly("1200"),
        &[ResetRatio],
        "idle connections that middleboxes forget are reset when used again; keepalives \
         sent sooner keep them alive",
    )
    .advised(advice::RESETS),
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
    )
    .advised(advice::BACKLOG_DROPS),
    judged(
        "net.netfilter.nf_conntrack_max",
        Node,
        AtLeast(131_072),
        &[ConntrackFullRatio],
        "a new connection past the limit evicts an unconfirmed entry (early_drop) or, \
         with none to evict, is dropped; kube-proxy sets at least 131,072 (32,768 per \
         core). The limit is global; each namespace counts its own entries against it",
    )
    .advised(advice::CONNTRACK_FULL),
    judged(
        "net.core.rmem_max",
        Node,
        AtLeast(16_777_216),
        &[RcvbufDropRatio, TcpRcvqDropRatio],
        "it caps the receive buffer an application can ask for (SO_RCVBUF): a datagram \
         socket's full buffer drops (SOCKET_RCVBUFF), a TCP socket's prunes and drops",
    )
    .advised(advice::RCVBUF_DROPS),
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
    )
    .advised(advice::RCVBUF_DROPS_DEFAULT)
    .applied_to_new_sockets(),
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
    )
    .advised(advice::WRITEBACK_BURSTS),
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
    )
    .advised(advice::SCHEDULER_QUEUE),
    judged(
        "queue/nr_requests",
        Device,
        Recommendation::None,
        &[BlockQueueMs, BlockServiceMs],
        "the scheduler's queue depth: how long requests wait before the device",
    )
    .advised(advice::QUEUE_DEPTH),
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
    judged("noatime", Mount, Set, &[WritesPerRead], ATIME).advised(advice::ATIME_WRITES),
    judged("nodiratime", Mount, Set, &[WritesPerRead], ATIME),
    unjudged(
        "relatime",
        Mount,
        Recommendation::None,
        "access-time writes",
        "the kernel's default: a read writes the access time at most once a day per file; \
         only without it (strictatime) does every read write, which `advise` looks for",
    ),
    judged(
        "cpu.max",
        Cgroup,
        Recommendation::None,
        &[CpuThrottledRatio, CpuThrottledMsPerPeriod, CpuStallP99Ms],
        "a limit below demand throttles the container: a raise that stays below demand \
         still throttles every period but for less time, so throttled time per period \
         and the stall tail judge it beside the share of throttled periods",
    )
    .advised(advice::THROTTLING)
    .aliases(&["cpu.cfs_quota_us", "cpu.cfs_period_us"]),
    unjudged(
        "nodelocaldns",
        Resolver,
        Set,
        "DNS latency and timeouts to the cluster resolver",
        "a DNS cache on every node (NodeLocal DNSCache, 169.254.20.10) answers repeated \
         names at once and keeps queries off conntrack and the Service path; it is a \
         deployment, not a knob on the node: tuneprobe sees whether a pod queries it (its \
         resolver address) but cannot change it, so `verify` judges its rollout only with \
         --exec and --expect dns_latency_p99_ms:lower, and `fleet verify` with --signal",
    )
    .not_inventoried()
    .advised(advice::DNS_LATENCY),
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
}
