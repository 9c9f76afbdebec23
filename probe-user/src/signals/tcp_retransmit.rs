//! TCP retransmits per workload: `tcp:tcp_retransmit_skb` counts retransmitted skbs,
//! their segments and failed attempts per (socket cgroup, network namespace); the load
//! they are judged by is the namespace's own `OutSegs`.

use std::{collections::HashMap, fmt::Write as _};

use probe_common::{
    RetransmitCounters, RetransmitKey, tcp_retransmit::RetransmitEvent,
    tcp_retransmit::TCP_RETRANSMITS_MAP, trace::TraceKind,
};
use serde::Serialize;

use super::{
    endpoints,
    record::TraceContext,
    source::{Attribution, Dead, Owner, Settings, Shared, Source, delete_entries},
};
use crate::{
    kernel::{
        layout,
        loader::{Hook, MapError, Probe, ProgramSpec},
    },
    output::{
        families::{Families, Labels},
        parts::{Cell, Detail, TopColumn, truncate_left},
    },
    workloads::{cgroup::Hierarchy, identity::Identity},
};

/// The kernel fields only this signal reads: `(struct, dotted path)`.
const SK_BUFF_CB: layout::FieldPath = ("sk_buff", "cb");
const TCP_SKB_CB_GSO_SEGS: layout::FieldPath = ("tcp_skb_cb", "tcp_gso_segs");

/// A workload's retransmits over the window, and its namespace's TCP load.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct TcpStats {
    pub retransmits: u64,
    pub retransmitted_segments: u64,
    pub failed_retransmits: u64,
    /// Connections accepted in the workload's network namespace (`PassiveOpens`), the
    /// load that listen overflows are normalised by. A namespace total: every workload
    /// in the namespace (a pod and its containers) shows the same number.
    pub passive_opens: u64,
    /// Segments sent from its network namespace (`OutSegs`), the load for retransmits;
    /// a namespace total too.
    pub sent_segments: u64,
    /// Segments received by its namespace (`InSegs`), the load for receive-queue drops.
    pub received_segments: u64,
    /// Segments its namespace dropped for want of receive buffer (`TCPRcvQDrop`,
    /// `TCPOFODrop`, `RcvPruned`).
    pub rcvq_drops: u64,
    /// Receive queues its namespace pruned or collapsed (`PruneCalled`).
    pub rcvq_prunes: u64,
}

impl TcpStats {
    /// Retransmitted segments per sent segment between two cumulative reports, with the
    /// sent segments; `None` without any.
    pub fn retransmit_ratio(before: &Self, after: &Self) -> Option<(f64, f64)> {
        let retransmitted = after
            .retransmitted_segments
            .checked_sub(before.retransmitted_segments)?;
        let sent = after.sent_segments.checked_sub(before.sent_segments)?;
        (sent > 0).then(|| (retransmitted as f64 / sent as f64, sent as f64))
    }

    /// `part` (receive-queue drops or prunes) per received segment between two
    /// cumulative reports, with the received segments; `None` without any.
    pub fn per_received_segment(
        before: &Self,
        after: &Self,
        part: fn(&Self) -> u64,
    ) -> Option<(f64, f64)> {
        let n = part(after).checked_sub(part(before))?;
        let received = after
            .received_segments
            .checked_sub(before.received_segments)?;
        (received > 0).then(|| (n as f64 / received as f64, received as f64))
    }
}

/// Metric families of the namespace's TCP counters.
pub const SENT_SEGMENTS: &str = "tuneprobe_tcp_sent_segments_total";
pub const RETRANSMITTED_SEGMENTS: &str = "tuneprobe_tcp_retransmitted_segments_total";
pub const RECEIVED_SEGMENTS: &str = "tuneprobe_tcp_received_segments_total";
pub const RCVQ_DROPS: &str = "tuneprobe_tcp_rcvq_drops_total";
pub const RCVQ_PRUNES: &str = "tuneprobe_tcp_rcvq_prunes_total";
pub const PASSIVE_OPENS: &str = "tuneprobe_tcp_passive_opens_total";

/// The measures of the signal `verify` judges.
pub mod measures {
    use super::{
        RCVQ_DROPS, RCVQ_PRUNES, RECEIVED_SEGMENTS, RETRANSMITTED_SEGMENTS, SENT_SEGMENTS,
    };
    use crate::signals::declaration::{Counter, Declaration, Exported};

    pub const RETRANSMIT_RATIO: Declaration = Declaration::judged(
        "retransmitted segments per sent segment",
        Some("sent_segments"),
        "tcp_retransmit_skb; the namespace's Tcp OutSegs",
        Exported::ratio(
            Counter::of(RETRANSMITTED_SEGMENTS),
            Counter::of(SENT_SEGMENTS),
        ),
    );
    pub const RCVQ_DROP_RATIO: Declaration = Declaration::judged(
        "TCP segments dropped for want of receive buffer per received segment",
        Some("received_segments"),
        "the namespace's TcpExt TCPRcvQDrop + TCPOFODrop + RcvPruned, Tcp InSegs",
        Exported::ratio(Counter::of(RCVQ_DROPS), Counter::of(RECEIVED_SEGMENTS)),
    );
    pub const PRUNE_RATIO: Declaration = Declaration::judged(
        "TCP receive queues pruned or collapsed per received segment",
        Some("received_segments"),
        "the namespace's TcpExt PruneCalled, Tcp InSegs",
        Exported::ratio(Counter::of(RCVQ_PRUNES), Counter::of(RECEIVED_SEGMENTS)),
    );
}

pub struct TcpRetransmit;

impl Source for TcpRetransmit {
    const NAME: &'static str = "tcp_retransmit";
    const TRACE_NAME: &'static str = "retransmits";
    const LAYOUT: Option<layout::Resolve> = Some(layout);
    const PROGRAMS: &'static [ProgramSpec] = &[ProgramSpec {
        name: "tcp_retransmit_skb",
        signal: Self::NAME,
        // (sk, skb); `err` is read only where the kernel passes it (6.11+).
        hook: Hook::BtfTracePoint {
            tracepoint: "tcp_retransmit_skb",
            min_args: 2,
        },
        needs: &[
            SK_BUFF_CB,
            TCP_SKB_CB_GSO_SEGS,
            layout::SOCK_STATE,
            layout::SOCK_NET,
            layout::SOCK_CGROUP,
            layout::CGROUP_KN,
            layout::KERNFS_NODE_ID,
            layout::NET_INUM,
        ],
    }];
    type Counters = HashMap<RetransmitKey, RetransmitCounters>;
    type Section = TcpStats;

    fn new(_settings: &Settings) -> Self {
        Self
    }

    fn read(probe: &Probe) -> Result<Self::Counters, MapError> {
        probe.read_per_cpu(TCP_RETRANSMITS_MAP, |total: &mut RetransmitCounters, v| {
            total.add(v);
        })
    }

    fn cgroups(counters: &Self::Counters) -> Vec<(Hierarchy, u64)> {
        counters
            .keys()
            .map(|k| (Hierarchy::Unified, k.cgroup_id))
            .collect()
    }

    fn netns_counts(counters: &Self::Counters) -> Vec<(u32, u64)> {
        counters
            .iter()
            .map(|(k, c)| (k.netns, c.retransmits))
            .collect()
    }

    fn collect_garbage(
        &mut self,
        probe: &mut Probe,
        now: &Self::Counters,
        baseline: &mut Self::Counters,
        dead: &Dead,
    ) -> Result<Vec<(&'static str, u64)>, MapError> {
        Ok(vec![delete_entries::<_, RetransmitCounters, _>(
            probe,
            TCP_RETRANSMITS_MAP,
            now,
            baseline,
            |k| dead.gone(k.cgroup_id, k.netns),
        )?])
    }

    fn report(
        &self,
        _probe: &Probe,
        now: &Self::Counters,
        baseline: &Self::Counters,
        _shared: &Shared,
        out: &mut dyn Attribution<TcpStats>,
    ) {
        for (key, counters) in now {
            let before = baseline.get(key).copied().unwrap_or_default();
            let delta = counters.since(&before);
            if delta == RetransmitCounters::default() {
                continue;
            }
            let owner = Owner::Cgroup {
                hierarchy: Hierarchy::Unified,
                id: key.cgroup_id,
                netns: (key.netns != 0).then_some(key.netns),
            };
            let tcp = out.slot(owner).section;
            tcp.retransmits += delta.retransmits;
            tcp.retransmitted_segments += delta.segments;
            tcp.failed_retransmits += delta.failed;
        }
    }

    /// The load that network signals are normalised by belongs to the namespace: every
    /// workload living there (the pod, each container) gets its totals.
    fn complete(shared: &Shared, netns: Option<u32>, tcp: &mut TcpStats) {
        if let Some(load) = netns.and_then(|n| shared.netns.get(&n)) {
            tcp.passive_opens = load.counters.passive_opens;
            tcp.sent_segments = load.counters.sent_segments;
            tcp.received_segments = load.counters.received_segments;
            tcp.rcvq_drops = load.counters.rcvq_drops;
            tcp.rcvq_prunes = load.counters.rcvq_prunes;
        }
    }

    fn metrics(tcp: &TcpStats, labels: &Labels, f: &mut Families) {
        // The loads, each from its first non-zero value on and independently of the
        // retransmits, so that a ratio's denominator exists when its numerator is 0.
        // Namespace totals: every workload in the namespace shows the same value.
        f.nonzero_counters(
            labels,
            &[
            (
                RECEIVED_SEGMENTS,
                "TCP segments received by the workload's network namespace (InSegs), a namespace total.",
                tcp.received_segments,
            ),
            (
                RCVQ_DROPS,
                "TCP segments the workload's network namespace dropped for want of receive buffer (TCPRcvQDrop + TCPOFODrop + RcvPruned), a namespace total.",
                tcp.rcvq_drops,
            ),
            (
                RCVQ_PRUNES,
                "TCP receive queues the workload's network namespace pruned or collapsed under buffer pressure (PruneCalled), a namespace total.",
                tcp.rcvq_prunes,
            ),
            ],
        );
        if tcp.sent_segments > 0 {
            f.counter(
                SENT_SEGMENTS,
                "TCP segments sent from the workload's network namespace (OutSegs), a namespace total.",
                labels.clone(),
                tcp.sent_segments as f64,
            );
        }
        if tcp.passive_opens > 0 {
            f.counter(
                PASSIVE_OPENS,
                "TCP connections accepted in the workload's network namespace (PassiveOpens), a namespace total.",
                labels.clone(),
                tcp.passive_opens as f64,
            );
        }
        if tcp.retransmits + tcp.failed_retransmits == 0 {
            return;
        }
        f.counter(
            "tuneprobe_tcp_retransmits_total",
            "TCP retransmitted skbs that went out (tcp:tcp_retransmit_skb, err == 0).",
            labels.clone(),
            tcp.retransmits as f64,
        );
        f.counter(
            RETRANSMITTED_SEGMENTS,
            "TCP segments in retransmitted skbs, as RetransSegs counts them.",
            labels.clone(),
            tcp.retransmitted_segments as f64,
        );
        f.counter(
            "tuneprobe_tcp_failed_retransmits_total",
            "TCP retransmit attempts that did not go out (err != 0).",
            labels.clone(),
            tcp.failed_retransmits as f64,
        );
    }

    const TRACE_KIND: TraceKind = TraceKind::Retransmit;
    type Event = RetransmitEvent;
    type TraceFields = TraceFields;

    fn trace_fields(event: &RetransmitEvent, _context: &mut TraceContext<'_>) -> TraceFields {
        TraceFields::of(event)
    }

    fn trace_detail(fields: &TraceFields) -> String {
        fields.detail()
    }

    const TOP_COLUMNS: &'static [TopColumn] = &[TopColumn {
        name: "retransmits",
        title: "RETX/s",
        width: 9,
    }];

    fn top_cells(now: &TcpStats, before: &TcpStats, seconds: f64) -> Vec<Cell> {
        vec![Cell::rate(
            now.retransmits.saturating_sub(before.retransmits) as f64 / seconds,
        )]
    }

    fn top_detail(section: &TcpStats, detail: &mut Detail) {
        detail
            .totals
            .push(format!("{} retransmits", section.retransmits));
    }

    fn table(rows: &[(&Identity, &TcpStats)]) -> String {
        let mut out = String::new();
        let rows = rows.iter().filter(|(_, t)| {
            t.retransmits > 0 || t.retransmitted_segments > 0 || t.failed_retransmits > 0
        });
        for (i, (workload, t)) in rows.enumerate() {
            if i == 0 {
                let _ = writeln!(
                    out,
                    "{:<60} {:>10} {:>8} {:>8} {:>6}",
                    "WORKLOAD", "NETNS", "RETRANS", "SEGS", "FAILED"
                );
            }
            let netns = workload.netns.map_or_else(|| "-".into(), |n| n.to_string());
            let _ = writeln!(
                out,
                "{:<60} {:>10} {:>8} {:>8} {:>6}",
                truncate_left(&workload.display_name(), 60),
                netns,
                t.retransmits,
                t.retransmitted_segments,
                t.failed_retransmits,
            );
        }
        out
    }
}

/// The retransmit program's layout: the skb's segment count, and whether the
/// tracepoint passes `err`.
fn layout(r: &mut layout::Resolver) -> layout::Global {
    let sk_buff_cb = r.offset(SK_BUFF_CB);
    let gso_segs = r.offset(TCP_SKB_CB_GSO_SEGS);
    let layout = probe_common::tcp_retransmit::RetransmitLayout {
        sk_buff_tcp_gso_segs: sk_buff_cb.saturating_add(gso_segs),
        tcp_retransmit_has_err: u32::from(r.tracepoint_args("tcp_retransmit_skb") >= 3),
    };
    layout::Global::of(
        probe_common::tcp_retransmit::RetransmitLayout::GLOBAL,
        &layout,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Its layout from this kernel's BTF: every field placed, each where BTF says.
    #[test]
    fn layout_resolves_from_the_running_kernel() {
        let (btf, l): (_, probe_common::tcp_retransmit::RetransmitLayout) =
            crate::kernel::layout::resolved_alone(super::layout);
        let at = |ty: &str, path: &str| btf.field_offset(ty, path).unwrap().bytes;
        assert_eq!(l.sk_buff_tcp_gso_segs, at("sk_buff", "cb") + 8);
        // 6.11+: the tracepoint passes `err`.
        assert_eq!(l.tcp_retransmit_has_err, 1);
    }

    /// Every family's series as (name, value) pairs, in name order.
    fn rendered(tcp: &TcpStats) -> Vec<(String, f64)> {
        let mut f = Families::default();
        let labels: Labels = vec![("namespace", "shop".into()), ("pod", "api".into())];
        TcpRetransmit::metrics(tcp, &labels, &mut f);
        f.encode()
            .iter()
            .flat_map(|family| {
                family.get_metric().iter().map(move |m| {
                    let labels: Vec<(&str, &str)> = m
                        .get_label()
                        .iter()
                        .map(|l| (l.name(), l.value()))
                        .collect();
                    assert_eq!(labels, [("namespace", "shop"), ("pod", "api")]);
                    (family.name().to_string(), m.get_counter().get_value())
                })
            })
            .collect()
    }

    #[test]
    fn loads_are_exported_without_retransmits() {
        let tcp = TcpStats {
            sent_segments: 1200,
            passive_opens: 7,
            ..TcpStats::default()
        };
        assert_eq!(
            rendered(&tcp),
            [
                ("tuneprobe_tcp_passive_opens_total".to_string(), 7.0),
                ("tuneprobe_tcp_sent_segments_total".to_string(), 1200.0),
            ]
        );
        // Each on its own: a sender that accepts nothing, and nothing at all.
        let sender = TcpStats {
            sent_segments: 5,
            ..TcpStats::default()
        };
        assert_eq!(
            rendered(&sender),
            [("tuneprobe_tcp_sent_segments_total".to_string(), 5.0)]
        );
        assert!(rendered(&TcpStats::default()).is_empty());
    }

    #[test]
    fn retransmits_keep_their_families() {
        let tcp = TcpStats {
            retransmits: 2,
            retransmitted_segments: 3,
            failed_retransmits: 1,
            passive_opens: 0,
            sent_segments: 100,
            ..TcpStats::default()
        };
        assert_eq!(
            rendered(&tcp),
            [
                ("tuneprobe_tcp_failed_retransmits_total".to_string(), 1.0),
                ("tuneprobe_tcp_retransmits_total".to_string(), 2.0),
                (
                    "tuneprobe_tcp_retransmitted_segments_total".to_string(),
                    3.0
                ),
                ("tuneprobe_tcp_sent_segments_total".to_string(), 100.0),
            ]
        );
        // Failed attempts alone still export all three, as before.
        let failed = TcpStats {
            failed_retransmits: 1,
            ..TcpStats::default()
        };
        assert_eq!(rendered(&failed).len(), 3);
    }
}

/// A retransmit as `trace` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceFields {
    pub saddr: Option<String>,
    pub daddr: Option<String>,
    pub sport: u16,
    pub dport: u16,
    pub state: String,
    pub failed: bool,
    pub segments: u32,
}

impl TraceFields {
    pub fn of(e: &RetransmitEvent) -> Self {
        let known = endpoints::known(&e.endpoints);
        Self {
            saddr: known.then(|| endpoints::address(e.endpoints.saddr)),
            daddr: known.then(|| endpoints::address(e.endpoints.daddr)),
            sport: e.endpoints.sport,
            dport: e.endpoints.dport,
            state: tcp_state_name(e.state),
            failed: e.failed != 0,
            segments: e.segments,
        }
    }

    pub fn detail(&self) -> String {
        format!(
            "{} -> {} {} segs={}{}",
            endpoints::endpoint(self.saddr.as_ref(), Some(self.sport)),
            endpoints::endpoint(self.daddr.as_ref(), Some(self.dport)),
            self.state,
            self.segments,
            if self.failed { " FAILED" } else { "" }
        )
    }
}

/// TCP states (`include/net/tcp_states.h`, part of the user ABI).
pub fn tcp_state_name(state: u32) -> String {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        other => return format!("STATE{other}"),
    }
    .to_string()
}
