//! Packet drops per workload by the kernel's drop reason (`skb:kfree_skb`), plus the
//! listen-queue overflows that the kernel counts per namespace but does not report
//! through `kfree_skb`. Kernels before 5.17 give no reason: there a drop is named by the
//! kernel function that dropped it, `at:FUNCTION` (see `DropReasons::name_of`).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
};

use probe_common::{DropKey, drops::DROPS_MAP, drops::DropEvent, trace::TraceKind};
use serde::Serialize;

use super::{
    endpoints,
    record::TraceContext,
    source::{Attribution, Dead, Owner, Settings, Shared, Source, delete_entries},
    tcp_retransmit::TcpStats,
};
use crate::{
    kernel::{
        layout,
        loader::{Hook, MapError, Probe, ProgramSpec},
    },
    output::{
        families::{Families, Labels, with},
        parts::{Cell, Detail, TopColumn, truncate_left},
    },
    workloads::{cgroup::Hierarchy, identity::Identity},
};

/// The kernel fields only this signal reads: `(struct, dotted path)`.
const SK_BUFF_DEV: layout::FieldPath = ("sk_buff", "dev");

/// The reason under which listen-queue overflows appear: the kernel counts them in
/// `TcpExtListenOverflows` but does not report them through `kfree_skb`.
pub const TCP_LISTEN_OVERFLOW: &str = "TCP_LISTEN_OVERFLOW";

/// The drop reasons of a packet that needed forwarding: no route, or forwarding off
/// (`IP_INADDRERRORS`), and the firewall's (which cannot tell the forward chain from
/// the input chain).
pub const FORWARDING_REASONS: &[&str] = &["IP_INADDRERRORS", "IP_INNOROUTES", "NETFILTER_DROP"];
/// A full receive buffer of a datagram socket.
pub const RCVBUF_REASONS: &[&str] = &["SOCKET_RCVBUFF"];
/// A full per-CPU input backlog (`net.core.netdev_max_backlog`).
pub const BACKLOG_REASONS: &[&str] = &["CPU_BACKLOG"];

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DropStats {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
    /// The namespace's packets that drop reasons are normalised by (namespace totals:
    /// every workload living in the namespace shows the same numbers).
    pub received_packets: u64,
    pub forwarded_packets: u64,
    pub received_datagrams: u64,
    /// New connections that found the namespace's conntrack table full: evictions of
    /// unconfirmed entries (`early_drop`) and packets dropped with nothing to evict
    /// (`drop`). A namespace total.
    pub conntrack_full: u64,
}

impl DropStats {
    pub fn add(&mut self, reason: &str, count: u64) {
        self.total += count;
        *self.by_reason.entry(reason.to_string()).or_default() += count;
    }

    pub fn listen_overflows(&self) -> u64 {
        self.by_reason
            .get(TCP_LISTEN_OVERFLOW)
            .copied()
            .unwrap_or(0)
    }

    /// Drops of these reasons.
    pub fn of_reasons(&self, reasons: &[&str]) -> u64 {
        reasons.iter().filter_map(|r| self.by_reason.get(*r)).sum()
    }

    /// Drops of `reasons` per packet they were taken from, between two cumulative
    /// reports, with that load; `None` without any. The load is `load` of the
    /// namespace, plus the drops themselves where `load` counts only packets that got
    /// past them (`adds_drops`: the backlog drops a packet before IP counts it).
    pub fn ratio_of(
        before: &Self,
        after: &Self,
        reasons: &[&str],
        load: fn(&Self) -> u64,
        adds_drops: bool,
    ) -> Option<(f64, f64)> {
        let drops = after
            .of_reasons(reasons)
            .checked_sub(before.of_reasons(reasons))?;
        let packets = load(after).checked_sub(load(before))? + if adds_drops { drops } else { 0 };
        (packets > 0).then(|| (drops as f64 / packets as f64, packets as f64))
    }

    /// The most frequent reason.
    pub fn top_reason(&self) -> Option<(&str, u64)> {
        self.by_reason
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(reason, n)| (reason.as_str(), *n))
    }

    /// Listen overflows per connection attempt (overflows and accepted connections)
    /// between two cumulative reports, with the attempts; `None` without any.
    pub fn listen_overflow_ratio(
        (before, before_tcp): (&Self, &TcpStats),
        (after, after_tcp): (&Self, &TcpStats),
    ) -> Option<(f64, f64)> {
        let overflows = after
            .listen_overflows()
            .checked_sub(before.listen_overflows())?;
        let opens = after_tcp
            .passive_opens
            .checked_sub(before_tcp.passive_opens)?;
        let attempts = overflows + opens;
        (attempts > 0).then(|| (overflows as f64 / attempts as f64, attempts as f64))
    }

    /// Conntrack-full events per received packet (received + those events) between
    /// two cumulative reports, with that load; `None` without any.
    pub fn conntrack_full_ratio(before: &Self, after: &Self) -> Option<(f64, f64)> {
        let full = after.conntrack_full.checked_sub(before.conntrack_full)?;
        let load = after
            .received_packets
            .checked_sub(before.received_packets)?
            + full;
        (load > 0).then(|| (full as f64 / load as f64, load as f64))
    }
}

/// The metric families of the namespace's packet loads.
pub const RECEIVED_PACKETS: &str = "tuneprobe_ip_received_packets_total";
pub const FORWARDED_PACKETS: &str = "tuneprobe_ip_forwarded_packets_total";
pub const RECEIVED_DATAGRAMS: &str = "tuneprobe_udp_received_datagrams_total";
/// The namespace's conntrack-full events.
pub const CONNTRACK_FULL: &str = "tuneprobe_conntrack_full_total";
/// The drops family, by `reason`.
pub const PACKET_DROPS: &str = "tuneprobe_packet_drops_total";

/// The measures of the signal `verify` judges.
pub mod measures {
    use super::{
        BACKLOG_REASONS, CONNTRACK_FULL, FORWARDED_PACKETS, FORWARDING_REASONS, PACKET_DROPS,
        RCVBUF_REASONS, RECEIVED_DATAGRAMS, RECEIVED_PACKETS, TCP_LISTEN_OVERFLOW,
    };
    use crate::signals::{
        declaration::{Counter, Declaration, Exported},
        tcp_retransmit::PASSIVE_OPENS,
    };

    const fn drops_of(reasons: &'static [&'static str]) -> Counter {
        Counter::only(PACKET_DROPS, "reason", reasons)
    }

    pub const LISTEN_OVERFLOW_RATIO: Declaration = Declaration::judged(
        "listen-queue overflows per connection attempt (overflows + accepted)",
        Some("connection_attempts"),
        "the namespace's TcpExt ListenOverflows and Tcp PassiveOpens",
        Exported::ratio_of_sum(drops_of(&[TCP_LISTEN_OVERFLOW]), Counter::of(PASSIVE_OPENS)),
    );
    pub const DROPS: Declaration = Declaration::judged(
        "dropped packets of every reason per interval (no load: only for --signal)",
        None,
        "skb:kfree_skb",
        Exported::Count(Counter::of(PACKET_DROPS)),
    );
    pub const RCVBUF_DROP_RATIO: Declaration = Declaration::judged(
        "SOCKET_RCVBUFF drops per datagram that reached a socket",
        Some("received_datagrams"),
        "kfree_skb drops by reason; the namespace's Udp/Udp6 InDatagrams + RcvbufErrors",
        Exported::ratio(drops_of(RCVBUF_REASONS), Counter::of(RECEIVED_DATAGRAMS)),
    );
    pub const BACKLOG_DROP_RATIO: Declaration = Declaration::judged(
        "CPU_BACKLOG drops per received packet (received + those drops)",
        Some("received_packets"),
        "kfree_skb drops by reason; the namespace's Ip/Ip6 InReceives",
        Exported::ratio_of_sum(drops_of(BACKLOG_REASONS), Counter::of(RECEIVED_PACKETS)),
    );
    pub const FORWARD_DROP_RATIO: Declaration = Declaration::judged(
        "forwarding drops (IP_INADDRERRORS, IP_INNOROUTES, NETFILTER_DROP) per packet to forward (forwarded + those drops)",
        Some("forwarded_packets"),
        "kfree_skb drops by reason; the namespace's ForwDatagrams + Ip6OutForwDatagrams",
        Exported::ratio_of_sum(drops_of(FORWARDING_REASONS), Counter::of(FORWARDED_PACKETS)),
    );
    pub const CONNTRACK_FULL_RATIO: Declaration = Declaration::judged(
        "new connections that found the conntrack table full (entries evicted + packets dropped) per received packet (received + those)",
        Some("received_packets"),
        "the namespace's /proc/net/stat/nf_conntrack early_drop + drop; its Ip/Ip6 InReceives",
        Exported::ratio_of_sum(Counter::of(CONNTRACK_FULL), Counter::of(RECEIVED_PACKETS)),
    );
}

pub struct Drops;

impl Source for Drops {
    const NAME: &'static str = "drops";
    const TRACE_NAME: &'static str = "drops";
    const LAYOUT: Option<layout::Resolve> = Some(layout);
    const PROGRAMS: &'static [ProgramSpec] = &[ProgramSpec {
        name: "kfree_skb",
        signal: Self::NAME,
        // (skb, location[, reason]): the reason argument exists since 5.17; before,
        // drops are keyed by location.
        hook: Hook::BtfTracePoint {
            tracepoint: "kfree_skb",
            min_args: 2,
        },
        needs: &[
            layout::SK_BUFF_SK,
            SK_BUFF_DEV,
            layout::SOCK_STATE,
            layout::SOCK_NET,
            layout::SOCK_CGROUP,
            layout::CGROUP_KN,
            layout::KERNFS_NODE_ID,
            layout::NET_DEVICE_NET,
            layout::NET_INUM,
        ],
    }];
    type Counters = HashMap<DropKey, u64>;
    type Section = DropStats;

    fn new(_settings: &Settings) -> Self {
        Self
    }

    fn read(probe: &Probe) -> Result<Self::Counters, MapError> {
        probe.read_per_cpu(DROPS_MAP, |total: &mut u64, v| *total += v)
    }

    fn cgroups(counters: &Self::Counters) -> Vec<(Hierarchy, u64)> {
        counters
            .keys()
            .map(|k| (Hierarchy::Unified, k.cgroup_id))
            .collect()
    }

    fn netns_counts(counters: &Self::Counters) -> Vec<(u32, u64)> {
        counters.iter().map(|(k, &n)| (k.netns, n)).collect()
    }

    fn collect_garbage(
        &mut self,
        probe: &mut Probe,
        now: &Self::Counters,
        baseline: &mut Self::Counters,
        dead: &Dead,
    ) -> Result<Vec<(&'static str, u64)>, MapError> {
        Ok(vec![delete_entries::<_, u64, _>(
            probe,
            DROPS_MAP,
            now,
            baseline,
            |k| dead.gone(k.cgroup_id, k.netns),
        )?])
    }

    fn report(
        &self,
        probe: &Probe,
        now: &Self::Counters,
        baseline: &Self::Counters,
        shared: &Shared,
        out: &mut dyn Attribution<DropStats>,
    ) {
        let reasons = probe.drop_reasons();
        for (key, &count) in now {
            let delta = count.saturating_sub(baseline.get(key).copied().unwrap_or(0));
            if delta == 0 {
                continue;
            }
            let owner = Owner::Cgroup {
                hierarchy: Hierarchy::Unified,
                id: key.cgroup_id,
                netns: (key.netns != 0).then_some(key.netns),
            };
            out.slot(owner)
                .section
                .add(&reasons.name_of(key.reason, key.location), delta);
        }
        // The namespaces' own counters: listen overflows for the pod living there, and
        // that pod reported at all when its namespace had TCP load (the load its
        // signals are normalised by). The host namespace always has traffic; its load
        // alone would add a workload for `/` to every report.
        for (&netns, load) in &shared.netns {
            let tcp = load.counters;
            // A full conntrack table is a pod's trouble whatever its traffic.
            let conntrack = tcp.conntrack_full > 0 && !load.host;
            if !conntrack && (!tcp.has_tcp_load() || (load.host && tcp.listen_overflows == 0)) {
                continue;
            }
            let drops = out.slot(Owner::Netns(netns)).section;
            if tcp.listen_overflows > 0 {
                drops.add(TCP_LISTEN_OVERFLOW, tcp.listen_overflows);
            }
        }
    }

    /// The packets drops are normalised by belong to the namespace: every workload
    /// living there gets its totals.
    fn complete(shared: &Shared, netns: Option<u32>, drops: &mut DropStats) {
        if let Some(load) = netns.and_then(|n| shared.netns.get(&n)) {
            drops.received_packets = load.counters.received_packets;
            drops.forwarded_packets = load.counters.forwarded_packets;
            drops.received_datagrams = load.counters.received_datagrams;
            drops.conntrack_full = load.counters.conntrack_full;
        }
    }

    fn metrics(drops: &DropStats, labels: &Labels, f: &mut Families) {
        // The loads, from their first non-zero value on, so that a ratio's denominator
        // exists when its numerator is 0. Namespace totals.
        f.nonzero_counters(
            labels,
            &[
            (
                RECEIVED_PACKETS,
                "Packets received by the workload's network namespace (Ip InReceives + Ip6InReceives), a namespace total.",
                drops.received_packets,
            ),
            (
                FORWARDED_PACKETS,
                "Packets forwarded by the workload's network namespace (ForwDatagrams + Ip6OutForwDatagrams), a namespace total.",
                drops.forwarded_packets,
            ),
            (
                RECEIVED_DATAGRAMS,
                "UDP datagrams that reached a socket of the workload's network namespace, delivered or refused by a full buffer (InDatagrams + RcvbufErrors, IPv4 and IPv6), a namespace total.",
                drops.received_datagrams,
            ),
            (
                CONNTRACK_FULL,
                "New connections that found the workload's network namespace's conntrack table full: unconfirmed entries evicted to make room (early_drop) and packets dropped with nothing to evict (drop), a namespace total.",
                drops.conntrack_full,
            ),
            ],
        );
        for (reason, &count) in &drops.by_reason {
            f.counter(
                PACKET_DROPS,
                "Packets the kernel dropped, by drop reason (skb:kfree_skb; before kernel 5.17 at:FUNCTION, where it was dropped), plus TCP_LISTEN_OVERFLOW.",
                with(labels, &[("reason", reason)]),
                count as f64,
            );
        }
    }

    const TRACE_KIND: TraceKind = TraceKind::Drop;
    type Event = DropEvent;
    type TraceFields = TraceFields;

    fn trace_fields(event: &DropEvent, context: &mut TraceContext<'_>) -> TraceFields {
        TraceFields::of(
            event,
            context
                .probe
                .drop_reasons()
                .name_of(event.reason, event.location),
            context.symbols.name(event.location),
        )
    }

    fn trace_detail(fields: &TraceFields) -> String {
        fields.detail()
    }

    const TOP_COLUMNS: &'static [TopColumn] = &[
        TopColumn {
            name: "drops",
            title: "DROPS/s",
            width: 9,
        },
        TopColumn {
            name: "top-drop",
            title: "TOP DROP",
            width: 18,
        },
    ];

    fn top_cells(now: &DropStats, before: &DropStats, seconds: f64) -> Vec<Cell> {
        vec![
            Cell::rate(now.total.saturating_sub(before.total) as f64 / seconds),
            // Since `top` started: a reason that stops is still the one to look at.
            Cell::Text(now.top_reason().map(|(reason, _)| reason.to_string())),
        ]
    }

    fn top_detail(section: &DropStats, detail: &mut Detail) {
        let mut reasons: Vec<(&String, &u64)> = section.by_reason.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
        detail.totals.push(if reasons.is_empty() {
            "drops: none".to_string()
        } else {
            format!("drops: {}", reasons.join(", "))
        });
    }

    fn table(rows: &[(&Identity, &DropStats)]) -> String {
        let mut out = String::new();
        for (i, (workload, d)) in rows.iter().filter(|(_, d)| d.total > 0).enumerate() {
            if i == 0 {
                let _ = writeln!(
                    out,
                    "{:<60} {:>10} {:>8}  TOP DROP REASON",
                    "WORKLOAD", "NETNS", "DROPS"
                );
            }
            let top = d
                .top_reason()
                .map(|(reason, n)| format!("{reason} ({n})"))
                .unwrap_or_default();
            let netns = workload.netns.map_or_else(|| "-".into(), |n| n.to_string());
            let _ = writeln!(
                out,
                "{:<60} {:>10} {:>8}  {top}",
                truncate_left(&workload.display_name(), 60),
                netns,
                d.total,
            );
        }
        out
    }
}

/// A drop as `trace` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceFields {
    pub reason: String,
    pub location: String,
    pub protocol: Option<String>,
    pub saddr: Option<String>,
    pub daddr: Option<String>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

impl TraceFields {
    /// `reason` named from the kernel's BTF (or, before 5.17, `at:FUNCTION`), `location`
    /// from its symbols.
    pub fn of(e: &DropEvent, reason: String, location: String) -> Self {
        let known = endpoints::known(&e.endpoints);
        let ports = known && matches!(e.endpoints.protocol, 6 | 17);
        Self {
            reason,
            location,
            protocol: known.then(|| endpoints::protocol_name(e.endpoints.protocol)),
            saddr: known.then(|| endpoints::address(e.endpoints.saddr)),
            daddr: known.then(|| endpoints::address(e.endpoints.daddr)),
            sport: ports.then_some(e.endpoints.sport),
            dport: ports.then_some(e.endpoints.dport),
        }
    }

    pub fn detail(&self) -> String {
        format!(
            "{} at {} {} {} -> {}",
            self.reason,
            self.location,
            self.protocol.as_deref().unwrap_or("-"),
            endpoints::endpoint(self.saddr.as_ref(), self.sport),
            endpoints::endpoint(self.daddr.as_ref(), self.dport)
        )
    }
}

/// The drop program's layout: what `kfree_skb` passes on this kernel, and the skb's
/// device.
fn layout(r: &mut layout::Resolver) -> layout::Global {
    let args = r.tracepoint_args("kfree_skb");
    let layout = probe_common::drops::DropsLayout {
        sk_buff_dev: r.offset(SK_BUFF_DEV),
        kfree_skb_has_rx_sk: u32::from(args >= 4),
        kfree_skb_has_reason: u32::from(args >= 3),
        drop_reason_consumed: r
            .btf
            .enum_value("skb_drop_reason", "SKB_CONSUMED")
            .map_or(u32::MAX, |v| v as u32),
    };
    layout::Global::of(probe_common::drops::DropsLayout::GLOBAL, &layout)
}

#[cfg(test)]
mod tests {
    /// Its layout from this kernel's BTF: every field placed, each where BTF says.
    #[test]
    fn layout_resolves_from_the_running_kernel() {
        let (btf, l): (_, probe_common::drops::DropsLayout) =
            crate::kernel::layout::resolved_alone(super::layout);
        let at = |ty: &str, path: &str| btf.field_offset(ty, path).unwrap().bytes;
        assert_eq!(l.drop_reason_consumed, 1);
        // This machine's kernel (6.18) passes the receiving socket and a reason.
        assert_eq!((l.kfree_skb_has_rx_sk, l.kfree_skb_has_reason), (1, 1));
        assert_eq!(l.sk_buff_dev, at("sk_buff", "dev"));
    }
}
