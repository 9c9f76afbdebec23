//! DNS per workload: `cgroup_skb` programs on the root cgroup see queries leave and
//! responses arrive, match them per flow and transaction id, and count them and their
//! latency per (socket cgroup, resolver, response code, query type). Queries still
//! unanswered after `--dns-timeout` are expired here and counted as timeouts.

pub mod wire;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use aya::maps::MapData;
use probe_common::{
    DnsCounters, DnsFlow, DnsHistogram, DnsLatencyKey, DnsQuery, DnsResolverKey, dns,
    dns::DnsEvent,
    dns::{DNS_COUNTERS_MAP, DNS_IN_FLIGHT_MAP, DNS_LATENCY_MAP},
    trace::TraceKind,
};
use serde::Serialize;

use super::{
    endpoints,
    histogram::{self, Percentiles},
    record::TraceContext,
    source::{Attribution, Dead, Owner, Settings, Shared, Source, delete_entries},
};
use crate::{
    kernel::loader::{Hook, MapError, Probe, ProgramSpec},
    output::{
        families::{DNS_BUCKETS, Families, Labels, prometheus_histogram, with},
        parts::{Cell, Detail, TopColumn, bars, or_dash, truncate_left},
    },
    workloads::{
        cgroup::{CgroupPaths, Hierarchy},
        identity::Identity,
    },
};

/// The metric family the measures are exported in.
pub const LATENCY_SECONDS: &str = "tuneprobe_dns_latency_seconds";
/// The queries, and those without a response within the timeout: the alerts' timeouts
/// per query (`fleet/alerts.rs`).
pub const QUERIES: &str = "tuneprobe_dns_queries_total";
pub const TIMEOUTS: &str = "tuneprobe_dns_timeouts_total";

/// The measures of the signal `verify` judges.
pub mod measures {
    use super::LATENCY_SECONDS;
    use crate::signals::declaration::{Counter, Declaration, Exported};

    const SOURCE: &str = "DNS queries and responses matched in cgroup_skb programs";

    pub const LATENCY_MS: Declaration = Declaration::judged(
        "mean DNS latency, ms",
        Some("dns_responses"),
        SOURCE,
        Exported::mean(Counter::of(LATENCY_SECONDS)),
    );
    pub const LATENCY_P99_MS: Declaration = Declaration::judged(
        "p99 of the DNS latency, ms",
        Some("dns_responses"),
        SOURCE,
        Exported::p99(Counter::of(LATENCY_SECONDS)),
    );
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DnsReport {
    pub queries: u64,
    pub responses: u64,
    /// Queries with no response within the timeout (`--dns-timeout`).
    pub timeouts: u64,
    /// Packets to or from port 53 that are not a parsable DNS message.
    pub malformed: u64,
    /// Responses that matched no query in flight (late after a timeout, or to a query
    /// sent before the probe attached).
    pub unmatched_responses: u64,
    pub by_rcode: BTreeMap<String, u64>,
    /// `A`, `AAAA`, `SRV`, `PTR`, `OTHER`, over answered queries.
    pub by_qtype: BTreeMap<String, u64>,
    pub latency_ms: Percentiles,
    /// By resolver address as the client addressed it (a Service IP stays a Service IP).
    pub by_resolver: BTreeMap<String, ResolverReport>,
    /// Latency distributions per (resolver, response code), for the exporter.
    #[serde(skip)]
    pub latency_series: Vec<DnsLatencySeries>,
}

impl DnsReport {
    /// The latency distribution over every resolver and response code.
    pub fn latency(&self) -> DnsHistogram {
        let mut total = DnsHistogram::ZERO;
        for series in &self.latency_series {
            histogram::add(&mut total, &series.histogram);
        }
        total
    }

    /// The latency distribution between two cumulative reports (all of `after`'s
    /// without an earlier one).
    pub fn latency_since(before: Option<&Self>, after: &Self) -> DnsHistogram {
        let mut interval = DnsHistogram::ZERO;
        for series in &after.latency_series {
            let earlier = before.and_then(|b| {
                b.latency_series
                    .iter()
                    .find(|s| s.resolver == series.resolver && s.rcode == series.rcode)
            });
            let delta = match earlier {
                Some(e) => histogram::since(&series.histogram, &e.histogram),
                None => series.histogram,
            };
            histogram::add(&mut interval, &delta);
        }
        interval
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsLatencySeries {
    pub resolver: String,
    pub rcode: String,
    pub histogram: DnsHistogram,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ResolverReport {
    pub queries: u64,
    pub responses: u64,
    pub timeouts: u64,
    pub latency_ms: Percentiles,
}

/// Response code names (RFC 1035, 2136, 6895); others as `RCODE<n>`.
pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        other => return format!("RCODE{other}"),
    }
    .to_string()
}

/// The kernel's counts and latencies at one instant.
#[derive(Debug, Clone, Default)]
pub struct DnsCounts {
    counters: HashMap<DnsResolverKey, DnsCounters>,
    latency: HashMap<DnsLatencyKey, DnsHistogram>,
}

pub struct Dns {
    timeout: Duration,
    /// Queries that timed out during the window, per (workload, resolver).
    timeouts: HashMap<DnsResolverKey, u64>,
}

impl Source for Dns {
    const NAME: &'static str = "dns";
    const TRACE_NAME: &'static str = "dns";
    const PROGRAMS: &'static [ProgramSpec] = &[
        ProgramSpec {
            name: "dns_egress",
            signal: Self::NAME,
            hook: Hook::CgroupSkb(aya::programs::CgroupSkbAttachType::Egress),
            needs: &[],
        },
        ProgramSpec {
            name: "dns_ingress",
            signal: Self::NAME,
            hook: Hook::CgroupSkb(aya::programs::CgroupSkbAttachType::Ingress),
            needs: &[],
        },
    ];
    type Counters = DnsCounts;
    type Section = Option<Box<DnsReport>>;

    fn new(settings: &Settings) -> Self {
        Self {
            timeout: settings.dns_timeout,
            timeouts: HashMap::new(),
        }
    }

    fn read(probe: &Probe) -> Result<DnsCounts, MapError> {
        Ok(DnsCounts {
            counters: probe.read_per_cpu(DNS_COUNTERS_MAP, |total: &mut DnsCounters, v| {
                total.add(v);
            })?,
            latency: probe.read_hash(DNS_LATENCY_MAP)?,
        })
    }

    fn cgroups(counts: &DnsCounts) -> Vec<(Hierarchy, u64)> {
        counts
            .counters
            .keys()
            .map(|k| (Hierarchy::Unified, k.cgroup_id))
            .collect()
    }

    /// Counts and forgets the queries older than the timeout.
    fn tick(&mut self, probe: &mut Probe, _cpu_paths: &mut CgroupPaths) -> Result<(), MapError> {
        let deadline = monotonic_ns().saturating_sub(self.timeout.as_nanos() as u64);
        let mut in_flight = aya::maps::HashMap::<&mut MapData, DnsFlow, DnsQuery>::try_from(
            probe.map_mut(DNS_IN_FLIGHT_MAP)?,
        )
        .map_err(MapError::access(DNS_IN_FLIGHT_MAP))?;
        let expired: Vec<DnsFlow> = in_flight
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, query)| query.sent_ns < deadline)
            .map(|(flow, _)| flow)
            .collect();
        for flow in expired {
            // A response may have removed it meanwhile: then it did not time out.
            if in_flight.remove(&flow).is_ok() {
                let key = DnsResolverKey {
                    cgroup_id: flow.cgroup_id,
                    resolver: flow.server,
                };
                *self.timeouts.entry(key).or_default() += 1;
            }
        }
        Ok(())
    }

    fn collect_garbage(
        &mut self,
        probe: &mut Probe,
        now: &DnsCounts,
        baseline: &mut DnsCounts,
        dead: &Dead,
    ) -> Result<Vec<(&'static str, u64)>, MapError> {
        let gone = |cgroup_id: u64| dead.gone(cgroup_id, 0);
        // Queries of a dead workload still waiting: they would time out later and
        // bring it back.
        let in_flight: Vec<DnsFlow> = probe
            .read_hash::<DnsFlow, DnsQuery>(DNS_IN_FLIGHT_MAP)?
            .into_keys()
            .filter(|flow| gone(flow.cgroup_id))
            .collect();
        self.timeouts.retain(|k, _| !gone(k.cgroup_id));
        Ok(vec![
            delete_entries::<_, DnsCounters, _>(
                probe,
                DNS_COUNTERS_MAP,
                &now.counters,
                &mut baseline.counters,
                |k| gone(k.cgroup_id),
            )?,
            delete_entries::<_, DnsHistogram, _>(
                probe,
                DNS_LATENCY_MAP,
                &now.latency,
                &mut baseline.latency,
                |k| gone(k.cgroup_id),
            )?,
            (
                DNS_IN_FLIGHT_MAP,
                probe.remove_entries::<_, DnsQuery>(DNS_IN_FLIGHT_MAP, &in_flight)?,
            ),
        ])
    }

    fn report(
        &self,
        _probe: &Probe,
        now: &DnsCounts,
        baseline: &DnsCounts,
        _shared: &Shared,
        out: &mut dyn Attribution<Option<Box<DnsReport>>>,
    ) {
        for (cgroup_id, report) in reports(now, baseline, &self.timeouts) {
            let owner = Owner::Cgroup {
                hierarchy: Hierarchy::Unified,
                id: cgroup_id,
                netns: None,
            };
            *out.slot(owner).section = Some(Box::new(report));
        }
    }

    fn metrics(dns: &Option<Box<DnsReport>>, labels: &Labels, f: &mut Families) {
        let Some(dns) = dns else {
            return;
        };
        for (resolver, r) in &dns.by_resolver {
            let l = with(labels, &[("resolver", resolver)]);
            f.counter(
                QUERIES,
                "DNS queries sent to port 53 (UDP and TCP).",
                l.clone(),
                r.queries as f64,
            );
            f.counter(
                TIMEOUTS,
                "DNS queries without a response within the timeout.",
                l,
                r.timeouts as f64,
            );
        }
        for series in &dns.latency_series {
            f.add(
                LATENCY_SECONDS,
                "Query to response, per resolver and response code; the count is the responses.",
                with(
                    labels,
                    &[("resolver", &series.resolver), ("rcode", &series.rcode)],
                ),
                prometheus_histogram(&series.histogram, DNS_BUCKETS),
            );
        }
        f.counter(
            "tuneprobe_dns_malformed_total",
            "Packets to or from port 53 that are not a parsable DNS message.",
            labels.clone(),
            dns.malformed as f64,
        );
    }

    const TRACE_KIND: TraceKind = TraceKind::Dns;
    type Event = DnsEvent;
    type TraceFields = TraceFields;

    fn trace_fields(event: &DnsEvent, _context: &mut TraceContext<'_>) -> TraceFields {
        TraceFields::of(event)
    }

    fn trace_detail(fields: &TraceFields) -> String {
        fields.detail()
    }

    fn trace_latency_ms(fields: &TraceFields) -> Option<f64> {
        Some(fields.latency_ms)
    }

    const TOP_COLUMNS: &'static [TopColumn] = &[
        TopColumn {
            name: "dns",
            title: "DNS/s",
            width: 9,
        },
        TopColumn {
            name: "dns-p99",
            title: "DNS p99",
            width: 9,
        },
    ];

    fn top_cells(
        now: &Option<Box<DnsReport>>,
        before: &Option<Box<DnsReport>>,
        seconds: f64,
    ) -> Vec<Cell> {
        let queries = |d: &Option<Box<DnsReport>>| d.as_ref().map_or(0, |d| d.queries);
        let p99 = now.as_ref().and_then(|d| {
            histogram::quantile_ms(&DnsReport::latency_since(before.as_deref(), d), 0.99)
        });
        vec![
            Cell::rate(queries(now).saturating_sub(queries(before)) as f64 / seconds),
            Cell::ms(None, p99),
        ]
    }

    fn top_detail(section: &Option<Box<DnsReport>>, detail: &mut Detail) {
        let queries = section.as_ref().map_or(0, |d| d.queries);
        detail.totals.push(format!("{queries} DNS queries"));
        if let Some(d) = section {
            detail
                .histograms
                .push(("DNS latency".to_string(), bars(&d.latency())));
        }
    }

    fn table(rows: &[(&Identity, &Option<Box<DnsReport>>)]) -> String {
        let mut out = String::new();
        let rows = rows.iter().filter_map(|(w, d)| Some((w, d.as_ref()?)));
        for (i, (workload, d)) in rows.enumerate() {
            if i == 0 {
                let _ = writeln!(
                    out,
                    "{:<50} {:>8} {:>9} {:>8} {:>9} {:>8} {:>8}  RESOLVERS",
                    "WORKLOAD", "QUERIES", "RESPONSES", "TIMEOUTS", "MALFORMED", "P50 ms", "P99 ms"
                );
            }
            let resolvers: Vec<&str> = d.by_resolver.keys().map(String::as_str).collect();
            let _ = writeln!(
                out,
                "{:<50} {:>8} {:>9} {:>8} {:>9} {:>8} {:>8}  {}",
                truncate_left(&workload.display_name(), 50),
                d.queries,
                d.responses,
                d.timeouts,
                d.malformed,
                or_dash(d.latency_ms.p50, 2),
                or_dash(d.latency_ms.p99, 2),
                resolvers.join(" "),
            );
        }
        out
    }
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
fn reports(
    now: &DnsCounts,
    baseline: &DnsCounts,
    timeouts: &HashMap<DnsResolverKey, u64>,
) -> BTreeMap<u64, DnsReport> {
    let mut reports: BTreeMap<u64, DnsReport> = BTreeMap::new();
    let mut latency: BTreeMap<u64, DnsHistogram> = BTreeMap::new();
    let mut resolver_latency: BTreeMap<(u64, String), DnsHistogram> = BTreeMap::new();

    add_counters(&mut reports, now, baseline);
    for (key, &count) in timeouts {
        let report = reports.entry(key.cgroup_id).or_default();
        report.timeouts += count;
        report
            .by_resolver
            .entry(resolver_name(key.resolver))
            .or_default()
            .timeouts += count;
    }
    for (key, histogram) in &now.latency {
        let before = baseline
            .latency
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

/// Adds the window's query, response, unmatched and malformed counts of each workload,
/// and per resolver, to `reports`.
fn add_counters(reports: &mut BTreeMap<u64, DnsReport>, now: &DnsCounts, baseline: &DnsCounts) {
    for (key, counters) in &now.counters {
        let before = baseline.counters.get(key).copied().unwrap_or_default();
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
}

/// An answered query as `trace` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceFields {
    pub qname: Option<String>,
    pub qtype: Option<String>,
    pub rcode: Option<String>,
    pub latency_ms: f64,
    pub resolver: String,
    pub transport: &'static str,
    /// Why the captured message could not be decoded (then the names are null).
    pub decode_error: Option<String>,
}

impl TraceFields {
    /// Decodes the captured response; every read is bounds-checked (`wire`).
    pub fn of(e: &DnsEvent) -> Self {
        let captured = (e.captured as usize).min(e.message.len());
        let (qname, qtype, rcode, decode_error) = match wire::decode(&e.message[..captured]) {
            Ok(q) => (
                Some(q.qname),
                Some(wire::qtype_name(q.qtype)),
                Some(rcode_name(q.rcode)),
                None,
            ),
            Err(err) => (None, None, None, Some(err.to_string())),
        };
        Self {
            qname,
            qtype,
            rcode,
            latency_ms: endpoints::ms(e.latency_ns),
            resolver: endpoints::address(e.resolver),
            transport: if e.proto == 6 { "tcp" } else { "udp" },
            decode_error,
        }
    }

    pub fn detail(&self) -> String {
        let (latency_ms, resolver) = (self.latency_ms, &self.resolver);
        match &self.decode_error {
            None => format!(
                "{} {} {} {latency_ms:.3}ms via {resolver}/{}",
                self.qname.as_deref().unwrap_or("-"),
                self.qtype.as_deref().unwrap_or("-"),
                self.rcode.as_deref().unwrap_or("-"),
                self.transport,
            ),
            Some(err) => format!("(undecodable: {err}) {latency_ms:.3}ms via {resolver}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes_have_names() {
        assert_eq!(rcode_name(3), "NXDOMAIN");
        assert_eq!(rcode_name(15), "RCODE15");
    }
}
