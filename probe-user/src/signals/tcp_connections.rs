//! TCP connections per workload, from the socket state-change tracepoint
//! (`sock:inet_sock_set_state`, a few events per connection) and the reset tracepoints:
//! connects and their failures by cause (refused, timed out, reset, no free local
//! port), accepted connections, closes with their duration and round-trip times, and
//! resets sent and received.

use std::{collections::HashMap, fmt::Write as _};

use probe_common::{
    ConnectionCounters, ConnectionKey, ConnectionTimes, LatencyHistogram,
    tcp_connections::ConnectionEvent,
    tcp_connections::{
        DurationHistogram, ECONNREFUSED, ECONNRESET, ETIMEDOUT, TCP_CONNECTION_TIMES_MAP,
        TCP_CONNECTIONS_MAP,
    },
    trace::TraceKind,
};
use serde::Serialize;

use super::{
    endpoints,
    histogram::{self, LatencySummary},
    record::TraceContext,
    source::{Attribution, Dead, Owner, Settings, Shared, Source, delete_entries},
    tcp_retransmit::tcp_state_name,
};
use crate::{
    kernel::{
        layout,
        loader::{Hook, MapError, Probe, ProgramSpec},
    },
    output::{
        families::{Families, IO_BUCKETS, Labels, prometheus_histogram, with},
        parts::{Cell, Detail, TopColumn, bars, or_dash, truncate_left},
    },
    workloads::{cgroup::Hierarchy, identity::Identity},
};

/// The kernel fields only this signal reads: `(struct, dotted path)`.
const SOCK_PROTOCOL: layout::FieldPath = ("sock", "sk_protocol");
const SOCK_ERR: layout::FieldPath = ("sock", "sk_err");
const TCP_SRTT_US: layout::FieldPath = ("tcp_sock", "srtt_us");
/// A windowed minimum (`struct minmax`): its first sample is the current minimum.
const TCP_RTT_MIN: layout::FieldPath = ("tcp_sock", "rtt_min");
const MINMAX_SAMPLE_V: layout::FieldPath = ("minmax_sample", "v");
const TCP_SEGS_OUT: layout::FieldPath = ("tcp_sock", "segs_out");

/// Metric families the measures are exported in.
pub const CONNECT_ATTEMPTS: &str = "tuneprobe_tcp_connect_attempts_total";
pub const CONNECT_FAILURES: &str = "tuneprobe_tcp_connect_failures_total";
/// The `cause` of a connect that found no free local port (`EADDRNOTAVAIL`).
pub const PORT_EXHAUSTION: &str = "port_exhaustion";
pub const CLOSED: &str = "tuneprobe_tcp_connections_closed_total";
pub const RESETS: &str = "tuneprobe_tcp_resets_total";
pub const SRTT_SECONDS: &str = "tuneprobe_tcp_srtt_seconds";

/// The measures of the signal `verify` judges.
pub mod measures {
    use super::{CLOSED, CONNECT_ATTEMPTS, CONNECT_FAILURES, RESETS, SRTT_SECONDS};
    use crate::signals::declaration::{Counter, Declaration, Exported};

    pub const CONNECT_FAILURE_RATIO: Declaration = Declaration::judged(
        "failed connects (every cause, no free local port included) per connect attempt",
        Some("connect_attempts"),
        "inet_sock_set_state",
        Exported::ratio(Counter::of(CONNECT_FAILURES), Counter::of(CONNECT_ATTEMPTS)),
    );
    pub const SRTT_MS: Declaration = Declaration::judged(
        "mean smoothed round-trip time of the connections that ended, ms",
        Some("closed_connections"),
        "inet_sock_set_state at close",
        Exported::mean(Counter::of(SRTT_SECONDS)),
    );
    pub const RESET_RATIO: Declaration = Declaration::judged(
        "resets received per connection that ended",
        Some("closed_connections"),
        "tcp_receive_reset, inet_sock_set_state",
        Exported::ratio(
            Counter::only(RESETS, "direction", &["received"]),
            Counter::of(CLOSED),
        ),
    );
}

/// `le` bounds, seconds, for connection durations.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0,
];

/// Connects that failed, by cause.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ConnectFailures {
    /// A RST answered the SYN (`ECONNREFUSED`): nothing listens there.
    pub refused: u64,
    /// No answer to the SYN and its retries (`ETIMEDOUT`).
    pub timed_out: u64,
    pub reset: u64,
    /// Closed before an answer, or another error.
    pub other: u64,
    /// `connect()` found no free local port (`EADDRNOTAVAIL`); no SYN went out.
    pub port_exhaustion: u64,
}

/// A workload's TCP connections over the window.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ConnectionReport {
    /// `connect()` attempts (each socket entering SYN_SENT), including those that found
    /// no local port.
    pub connect_attempts: u64,
    /// Attempts that connected.
    pub connected: u64,
    pub failed: ConnectFailures,
    /// Connections accepted on its listeners (handshakes completed).
    pub accepted: u64,
    /// Established connections that ended.
    pub closed: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Sockets in TIME_WAIT in the workload's network namespace at the end of the window
    /// (a namespace total, `null` when unknown): ports that closed connections still
    /// hold.
    pub time_wait: Option<u64>,
    /// Of the connections that ended: how long they lasted, their smoothed round-trip
    /// time at the end and the lowest round-trip time they saw.
    pub duration_ms: LatencySummary,
    pub srtt_ms: LatencySummary,
    pub min_rtt_ms: LatencySummary,
    #[serde(skip)]
    pub duration_histogram: DurationHistogram,
    #[serde(skip)]
    pub srtt_histogram: LatencyHistogram,
    #[serde(skip)]
    pub min_rtt_histogram: LatencyHistogram,
}

impl ConnectionReport {
    /// Failed connects of every cause.
    pub fn failures(&self) -> u64 {
        let f = &self.failed;
        f.refused + f.timed_out + f.reset + f.other + f.port_exhaustion
    }

    /// Failed connects of every cause per connect attempt between two cumulative
    /// reports, with the attempts; `None` without any.
    pub fn failure_ratio(before: Option<&Self>, after: &Self) -> Option<(f64, f64)> {
        let (attempts_before, failed_before) =
            before.map_or((0, 0), |b| (b.connect_attempts, b.failures()));
        let attempts = after.connect_attempts.checked_sub(attempts_before)?;
        let failed = after.failures().checked_sub(failed_before)?;
        (attempts > 0).then(|| (failed as f64 / attempts as f64, attempts as f64))
    }

    /// Resets received per established connection that ended, with the closes.
    pub fn reset_ratio(before: Option<&Self>, after: &Self) -> Option<(f64, f64)> {
        let (closed_before, resets_before) =
            before.map_or((0, 0), |b| (b.closed, b.resets_received));
        let closed = after.closed.checked_sub(closed_before)?;
        let resets = after.resets_received.checked_sub(resets_before)?;
        (closed > 0).then(|| (resets as f64 / closed as f64, closed as f64))
    }

    /// The smoothed RTTs at close between two cumulative reports.
    pub fn srtt_since(before: Option<&Self>, after: &Self) -> LatencyHistogram {
        since(&after.srtt_histogram, before.map(|b| &b.srtt_histogram))
    }
}

/// `now` less `before`, or `now` for a key new in the window.
fn since<const N: usize, const S: u32>(
    now: &LatencyHistogram<N, S>,
    before: Option<&LatencyHistogram<N, S>>,
) -> LatencyHistogram<N, S> {
    before.map_or(*now, |b| histogram::since(now, b))
}

/// The maps at one instant: counters per CPU summed, and the shared histograms.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    counters: HashMap<ConnectionKey, ConnectionCounters>,
    times: HashMap<ConnectionKey, ConnectionTimes>,
}

const FIELDS: &[layout::FieldPath] = &[
    SOCK_PROTOCOL,
    layout::SOCK_STATE,
    layout::SOCK_NET,
    layout::SOCK_CGROUP,
    layout::CGROUP_KN,
    layout::KERNFS_NODE_ID,
    layout::NET_INUM,
];

pub struct TcpConnections;

impl Source for TcpConnections {
    const NAME: &'static str = "tcp_connections";
    const TRACE_NAME: &'static str = "connections";
    const LAYOUT: Option<layout::Resolve> = Some(layout);
    const PROGRAMS: &'static [ProgramSpec] = &[
        ProgramSpec {
            name: "inet_sock_set_state",
            signal: Self::NAME,
            // (sk, oldstate, newstate)
            hook: Hook::BtfTracePoint {
                tracepoint: "inet_sock_set_state",
                min_args: 3,
            },
            needs: &[
                SOCK_PROTOCOL,
                layout::SOCK_STATE,
                layout::SOCK_NET,
                layout::SOCK_CGROUP,
                layout::CGROUP_KN,
                layout::KERNFS_NODE_ID,
                layout::NET_INUM,
                SOCK_ERR,
                TCP_SEGS_OUT,
                TCP_SRTT_US,
                TCP_RTT_MIN,
                MINMAX_SAMPLE_V,
            ],
        },
        ProgramSpec {
            name: "tcp_send_reset",
            signal: Self::NAME,
            hook: Hook::BtfTracePoint {
                tracepoint: "tcp_send_reset",
                min_args: 1,
            },
            needs: FIELDS,
        },
        ProgramSpec {
            name: "tcp_receive_reset",
            signal: Self::NAME,
            hook: Hook::BtfTracePoint {
                tracepoint: "tcp_receive_reset",
                min_args: 1,
            },
            needs: FIELDS,
        },
    ];
    type Counters = Counts;
    type Section = Option<Box<ConnectionReport>>;

    fn new(_settings: &Settings) -> Self {
        Self
    }

    fn read(probe: &Probe) -> Result<Counts, MapError> {
        Ok(Counts {
            counters: probe.read_per_cpu(
                TCP_CONNECTIONS_MAP,
                |total: &mut ConnectionCounters, v| {
                    total.add(v);
                },
            )?,
            times: probe.read_hash(TCP_CONNECTION_TIMES_MAP)?,
        })
    }

    fn cgroups(counts: &Counts) -> Vec<(Hierarchy, u64)> {
        counts
            .counters
            .keys()
            .chain(counts.times.keys())
            .map(|k| (Hierarchy::Unified, k.cgroup_id))
            .collect()
    }

    fn netns_counts(counts: &Counts) -> Vec<(u32, u64)> {
        counts
            .counters
            .iter()
            .map(|(k, c)| (k.netns, c.active_opens + c.passive_opens + c.closed))
            .collect()
    }

    fn collect_garbage(
        &mut self,
        probe: &mut Probe,
        now: &Counts,
        baseline: &mut Counts,
        dead: &Dead,
    ) -> Result<Vec<(&'static str, u64)>, MapError> {
        let gone = |k: &ConnectionKey| dead.gone(k.cgroup_id, k.netns);
        Ok(vec![
            delete_entries::<_, ConnectionCounters, _>(
                probe,
                TCP_CONNECTIONS_MAP,
                &now.counters,
                &mut baseline.counters,
                gone,
            )?,
            delete_entries::<_, ConnectionTimes, _>(
                probe,
                TCP_CONNECTION_TIMES_MAP,
                &now.times,
                &mut baseline.times,
                gone,
            )?,
        ])
    }

    fn report(
        &self,
        _probe: &Probe,
        now: &Counts,
        baseline: &Counts,
        _shared: &Shared,
        out: &mut dyn Attribution<Option<Box<ConnectionReport>>>,
    ) {
        let owner = |key: &ConnectionKey| Owner::Cgroup {
            hierarchy: Hierarchy::Unified,
            id: key.cgroup_id,
            netns: (key.netns != 0).then_some(key.netns),
        };
        for (key, counters) in &now.counters {
            let before = baseline.counters.get(key).copied().unwrap_or_default();
            let d = counters.since(&before);
            if d == ConnectionCounters::default() {
                continue;
            }
            let report = out
                .slot(owner(key))
                .section
                .get_or_insert_with(Box::default);
            report.connect_attempts += d.active_opens;
            report.connected += d.connected;
            report.failed.refused += d.refused;
            report.failed.timed_out += d.timed_out;
            report.failed.reset += d.reset;
            report.failed.other += d.other_failures;
            report.failed.port_exhaustion += d.port_exhaustion;
            report.accepted += d.passive_opens;
            report.closed += d.closed;
            report.resets_sent += d.resets_sent;
            report.resets_received += d.resets_received;
        }
        for (key, times) in &now.times {
            let before = baseline.times.get(key);
            let duration = since(&times.duration, before.map(|b| &b.duration));
            let srtt = since(&times.srtt, before.map(|b| &b.srtt));
            let min_rtt = since(&times.min_rtt, before.map(|b| &b.min_rtt));
            if duration.count + srtt.count == 0 {
                continue;
            }
            let report = out
                .slot(owner(key))
                .section
                .get_or_insert_with(Box::default);
            histogram::add(&mut report.duration_histogram, &duration);
            histogram::add(&mut report.srtt_histogram, &srtt);
            histogram::add(&mut report.min_rtt_histogram, &min_rtt);
            report.duration_ms = LatencySummary::of(&report.duration_histogram);
            report.srtt_ms = LatencySummary::of(&report.srtt_histogram);
            report.min_rtt_ms = LatencySummary::of(&report.min_rtt_histogram);
        }
    }

    /// TIME_WAIT belongs to the namespace: every workload there with connections gets it.
    fn complete(shared: &Shared, netns: Option<u32>, report: &mut Option<Box<ConnectionReport>>) {
        if let (Some(report), Some(load)) =
            (report.as_mut(), netns.and_then(|n| shared.netns.get(&n)))
        {
            report.time_wait = Some(load.counters.time_wait);
        }
    }

    fn metrics(report: &Option<Box<ConnectionReport>>, labels: &Labels, f: &mut Families) {
        let Some(c) = report else {
            return;
        };
        f.counter(
            CONNECT_ATTEMPTS,
            "connect() calls that entered SYN_SENT (sock:inet_sock_set_state).",
            labels.clone(),
            c.connect_attempts as f64,
        );
        for (direction, n) in [("active", c.connected), ("passive", c.accepted)] {
            f.counter(
                "tuneprobe_tcp_connections_opened_total",
                "TCP connections established: active (connect) or passive (accepted).",
                with(labels, &[("direction", direction)]),
                n as f64,
            );
        }
        let failed = &c.failed;
        for (cause, n) in [
            ("refused", failed.refused),
            ("timed_out", failed.timed_out),
            ("reset", failed.reset),
            ("other", failed.other),
            (PORT_EXHAUSTION, failed.port_exhaustion),
        ] {
            f.counter(
                CONNECT_FAILURES,
                "Failed connects by cause; port_exhaustion: no free local port (EADDRNOTAVAIL).",
                with(labels, &[("cause", cause)]),
                n as f64,
            );
        }
        f.counter(
            CLOSED,
            "Established TCP connections that ended.",
            labels.clone(),
            c.closed as f64,
        );
        for (direction, n) in [("sent", c.resets_sent), ("received", c.resets_received)] {
            f.counter(
                RESETS,
                "TCP resets sent for and received on the workload's sockets.",
                with(labels, &[("direction", direction)]),
                n as f64,
            );
        }
        if let Some(time_wait) = c.time_wait {
            f.gauge(
                "tuneprobe_tcp_time_wait_sockets",
                "Sockets in TIME_WAIT in the workload's network namespace, a namespace total.",
                labels.clone(),
                time_wait as f64,
            );
        }
        f.add(
            "tuneprobe_tcp_connection_duration_seconds",
            "How long closed TCP connections lasted, from connect or the SYN's arrival.",
            labels.clone(),
            prometheus_histogram(&c.duration_histogram, DURATION_BUCKETS),
        );
        f.add(
            SRTT_SECONDS,
            "Smoothed round-trip time of TCP connections when they ended.",
            labels.clone(),
            prometheus_histogram(&c.srtt_histogram, IO_BUCKETS),
        );
        f.add(
            "tuneprobe_tcp_min_rtt_seconds",
            "Lowest round-trip time TCP connections saw, when they ended.",
            labels.clone(),
            prometheus_histogram(&c.min_rtt_histogram, IO_BUCKETS),
        );
    }

    const TRACE_KIND: TraceKind = TraceKind::Connection;
    type Event = ConnectionEvent;
    type TraceFields = TraceFields;

    fn trace_fields(event: &ConnectionEvent, _context: &mut TraceContext<'_>) -> TraceFields {
        TraceFields::of(event)
    }

    fn trace_detail(fields: &TraceFields) -> String {
        fields.detail()
    }

    fn trace_latency_ms(fields: &TraceFields) -> Option<f64> {
        fields.srtt_ms
    }

    const TOP_COLUMNS: &'static [TopColumn] = &[
        TopColumn {
            name: "connects",
            title: "CONN/s",
            width: 9,
        },
        TopColumn {
            name: "connect-failures",
            title: "CONNFAIL/s",
            width: 10,
        },
        TopColumn {
            name: "srtt-p50",
            title: "SRTT p50",
            width: 9,
        },
    ];

    fn top_cells(
        now: &Option<Box<ConnectionReport>>,
        before: &Option<Box<ConnectionReport>>,
        seconds: f64,
    ) -> Vec<Cell> {
        let of = |r: &Option<Box<ConnectionReport>>, f: fn(&ConnectionReport) -> u64| {
            r.as_deref().map_or(0, f)
        };
        let per_s = |f: fn(&ConnectionReport) -> u64| {
            of(now, f).saturating_sub(of(before, f)) as f64 / seconds
        };
        let p50 = now.as_ref().and_then(|n| {
            histogram::quantile_ms(&ConnectionReport::srtt_since(before.as_deref(), n), 0.5)
        });
        vec![
            Cell::rate(per_s(|r| r.connect_attempts + r.accepted)),
            Cell::rate(per_s(ConnectionReport::failures)),
            Cell::ms(None, p50),
        ]
    }

    fn top_detail(section: &Option<Box<ConnectionReport>>, detail: &mut Detail) {
        let Some(c) = section else {
            return;
        };
        detail.totals.push(format!(
            "{} connects ({} failed), {} accepted",
            c.connect_attempts,
            c.failures(),
            c.accepted
        ));
        detail.histograms.push((
            "TCP smoothed RTT at close".to_string(),
            bars(&c.srtt_histogram),
        ));
    }

    fn table(rows: &[(&Identity, &Option<Box<ConnectionReport>>)]) -> String {
        let mut out = String::new();
        let rows = rows.iter().filter_map(|(w, c)| Some((w, c.as_ref()?)));
        for (i, (workload, c)) in rows.enumerate() {
            if i == 0 {
                let _ = writeln!(
                    out,
                    "{:<50} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9}",
                    "WORKLOAD",
                    "CONNECTS",
                    "ACCEPTED",
                    "REFUSED",
                    "TIMEOUT",
                    "NOPORT",
                    "OTHER",
                    "RST OUT",
                    "CLOSED",
                    "SRTT p50"
                );
            }
            let f = &c.failed;
            let _ = writeln!(
                out,
                "{:<50} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9}",
                truncate_left(&workload.display_name(), 50),
                c.connect_attempts,
                c.accepted,
                f.refused,
                f.timed_out,
                f.port_exhaustion,
                f.reset + f.other,
                c.resets_sent,
                c.closed,
                or_dash(c.srtt_ms.p50, 3),
            );
        }
        out
    }
}

/// The end of a connection as `trace` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceFields {
    pub saddr: Option<String>,
    pub daddr: Option<String>,
    pub sport: u16,
    pub dport: u16,
    /// `active` (connect) or `passive` (accepted).
    pub direction: &'static str,
    /// `closed`, or why the connect failed: `refused`, `timed_out`, `reset`, `failed`.
    pub outcome: &'static str,
    /// The state it entered.
    pub state: String,
    /// Since connect or the SYN's arrival; `null` if the start was not seen.
    pub duration_ms: Option<f64>,
    pub srtt_ms: Option<f64>,
    pub min_rtt_ms: Option<f64>,
}

impl TraceFields {
    pub fn of(e: &ConnectionEvent) -> Self {
        let known = endpoints::known(&e.endpoints);
        let established = e.old_state == 1;
        let ms = |us: u64| (us > 0).then(|| us as f64 / 1000.0);
        Self {
            saddr: known.then(|| endpoints::address(e.endpoints.saddr)),
            daddr: known.then(|| endpoints::address(e.endpoints.daddr)),
            sport: e.endpoints.sport,
            dport: e.endpoints.dport,
            direction: if e.active != 0 { "active" } else { "passive" },
            outcome: match (established, e.error as i32) {
                (true, _) => "closed",
                (false, ECONNREFUSED) => "refused",
                (false, ETIMEDOUT) => "timed_out",
                (false, ECONNRESET) => "reset",
                (false, _) => "failed",
            },
            state: tcp_state_name(e.new_state),
            duration_ms: ms(e.duration_us),
            srtt_ms: ms(u64::from(e.srtt_us)),
            min_rtt_ms: ms(u64::from(e.min_rtt_us)),
        }
    }

    pub fn detail(&self) -> String {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}ms"));
        format!(
            "{} -> {} {} {} after {} srtt={} min_rtt={}",
            endpoints::endpoint(self.saddr.as_ref(), Some(self.sport)),
            endpoints::endpoint(self.daddr.as_ref(), Some(self.dport)),
            self.direction,
            self.outcome,
            ms(self.duration_ms),
            ms(self.srtt_ms),
            ms(self.min_rtt_ms),
        )
    }
}

/// The connection programs' layout: what they read of a TCP socket.
fn layout(r: &mut layout::Resolver) -> layout::Global {
    let rtt_min = r.offset(TCP_RTT_MIN);
    let minmax_v = r.offset(MINMAX_SAMPLE_V);
    let layout = probe_common::tcp_connections::ConnectionLayout {
        sock_protocol: r.offset(SOCK_PROTOCOL),
        sock_err: r.offset(SOCK_ERR),
        tcp_srtt_us: r.offset(TCP_SRTT_US),
        tcp_min_rtt_us: rtt_min.saturating_add(minmax_v),
        tcp_segs_out: r.offset(TCP_SEGS_OUT),
    };
    layout::Global::of(
        probe_common::tcp_connections::ConnectionLayout::GLOBAL,
        &layout,
    )
}

#[cfg(test)]
mod tests {
    /// Its layout from this kernel's BTF: every field placed, each where BTF says.
    #[test]
    fn layout_resolves_from_the_running_kernel() {
        let (btf, l): (_, probe_common::tcp_connections::ConnectionLayout) =
            crate::kernel::layout::resolved_alone(super::layout);
        let at = |ty: &str, path: &str| btf.field_offset(ty, path).unwrap().bytes;
        assert_eq!(l.tcp_srtt_us, at("tcp_sock", "srtt_us"));
        assert_eq!(
            l.tcp_min_rtt_us,
            at("tcp_sock", "rtt_min") + at("minmax_sample", "v")
        );
    }
}
