//! The Prometheus exposition: a [`Snapshot`] (cumulative since the probe started) turned
//! into metric families, with a cap on how many workloads get series of their own.
//!
//! Counters are set from the kernel's cumulative counts rather than incremented, so the
//! families are built per scrape and encoded with the `prometheus` crate's text encoder
//! (which also escapes label values).

use std::collections::{BTreeMap, HashSet};

use probe_common::LatencyHistogram;
use prometheus::{
    Encoder as _, TextEncoder,
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::{
    kernel::loader::ProbeStatus,
    report::{Snapshot, Workload, serde_name},
    tuning::{Inventory, Setting},
    verify::Watcher,
};

/// `le` bounds, seconds, for block IO and throttle stalls.
const IO_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// `le` bounds, seconds, for DNS.
const DNS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The label set that folded workloads share.
pub const OTHER: &str = "other";

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
enum Value {
    Counter(f64),
    Gauge(f64),
    /// Sample count, sum in seconds, cumulative counts per bound.
    Histogram {
        count: u64,
        sum: f64,
        buckets: Vec<(f64, u64)>,
    },
}

impl Value {
    fn merge(&mut self, other: Value) {
        match (self, other) {
            (Value::Counter(a), Value::Counter(b)) | (Value::Gauge(a), Value::Gauge(b)) => *a += b,
            (
                Value::Histogram {
                    count,
                    sum,
                    buckets,
                },
                Value::Histogram {
                    count: c,
                    sum: s,
                    buckets: b,
                },
            ) => {
                *count += c;
                *sum += s;
                for ((_, total), (_, more)) in buckets.iter_mut().zip(b) {
                    *total += more;
                }
            }
            _ => {}
        }
    }
}

/// Metric families being built: name -> (help, series by labels).
#[derive(Default)]
struct Families {
    families: BTreeMap<&'static str, (&'static str, BTreeMap<Labels, Value>)>,
}

impl Families {
    fn add(&mut self, name: &'static str, help: &'static str, labels: Labels, value: Value) {
        let (_, series) = self
            .families
            .entry(name)
            .or_insert_with(|| (help, BTreeMap::new()));
        match series.get_mut(&labels) {
            Some(existing) => existing.merge(value),
            None => {
                series.insert(labels, value);
            }
        }
    }

    fn counter(&mut self, name: &'static str, help: &'static str, labels: Labels, value: f64) {
        self.add(name, help, labels, Value::Counter(value));
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, value: f64) {
        self.add(name, help, labels, Value::Gauge(value));
    }

    fn encode(self) -> Vec<MetricFamily> {
        self.families
            .into_iter()
            .map(|(name, (help, series))| {
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                let mut kind = MetricType::GAUGE;
                let metrics = series
                    .into_iter()
                    .map(|(labels, value)| {
                        let mut metric = Metric::default();
                        metric.set_label(
                            labels
                                .into_iter()
                                .map(|(k, v)| {
                                    let mut pair = LabelPair::default();
                                    pair.set_name(k.to_string());
                                    pair.set_value(v);
                                    pair
                                })
                                .collect(),
                        );
                        match value {
                            Value::Counter(v) => {
                                kind = MetricType::COUNTER;
                                let mut counter = Counter::default();
                                counter.set_value(v);
                                metric.set_counter(counter);
                            }
                            Value::Gauge(v) => {
                                let mut gauge = Gauge::default();
                                gauge.set_value(v);
                                metric.set_gauge(gauge);
                            }
                            Value::Histogram {
                                count,
                                sum,
                                buckets,
                            } => {
                                kind = MetricType::HISTOGRAM;
                                let mut histogram = Histogram::default();
                                histogram.set_sample_count(count);
                                histogram.set_sample_sum(sum);
                                histogram.set_bucket(
                                    buckets
                                        .into_iter()
                                        .map(|(le, cumulative)| {
                                            let mut bucket = Bucket::default();
                                            bucket.set_upper_bound(le);
                                            bucket.set_cumulative_count(cumulative);
                                            bucket
                                        })
                                        .collect(),
                                );
                                metric.set_histogram(histogram);
                            }
                        }
                        metric
                    })
                    .collect();
                family.set_field_type(kind);
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

/// A Prometheus histogram from a kernel histogram. The `le` count of a bound counts the
/// kernel buckets that end at or below it, so it never includes a sample above the
/// bound (a sample in a kernel bucket that straddles the bound counts in the next one).
fn prometheus_histogram<const N: usize, const S: u32>(
    h: &LatencyHistogram<N, S>,
    bounds: &[f64],
) -> Value {
    let mut buckets: Vec<(f64, u64)> = bounds.iter().map(|&le| (le, 0)).collect();
    for (index, &count) in h.buckets.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let (_, upper_us) = LatencyHistogram::<N, S>::bounds_us(index);
        let upper = upper_us as f64 / 1e6;
        for (le, cumulative) in &mut buckets {
            if upper <= *le {
                *cumulative += count;
            }
        }
    }
    Value::Histogram {
        count: h.count,
        sum: h.sum_ns as f64 / 1e9,
        buckets,
    }
}

/// Renders snapshots as Prometheus text, keeping at most `max_workloads` workloads with
/// labels of their own; the rest are folded into `cgroup="other"`, and
/// `tuneprobe_folded_workloads` says how many.
#[derive(Debug)]
pub struct Exporter {
    max_workloads: usize,
    /// Pod label keys copied into metrics, with their metric label names.
    pod_labels: Vec<(String, &'static str)>,
    admitted: HashSet<Labels>,
    folded: HashSet<Labels>,
    /// The agent's own failures by stage, exported so that a soak run or an alert sees
    /// them without reading logs.
    errors: BTreeMap<&'static str, u64>,
}

/// Stages whose failures `tuneprobe_agent_errors_total` counts, always exported.
pub const ERROR_STAGES: &[&str] = &["collect", "tuning_inventory", "render"];

impl Exporter {
    /// `pod_labels`: pod label keys to copy into every workload's labels as
    /// `label_<key>` (non-alphanumerics become `_`).
    pub fn new(max_workloads: usize, pod_labels: &[String]) -> Self {
        Self {
            max_workloads,
            pod_labels: pod_labels
                .iter()
                .map(|key| {
                    let name: String = key
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    // Label names live as long as the exporter: leaking a handful of
                    // configured names once is simpler than owning them in every series.
                    (
                        key.clone(),
                        &*Box::leak(format!("label_{name}").into_boxed_str()),
                    )
                })
                .collect(),
            admitted: HashSet::new(),
            folded: HashSet::new(),
            errors: ERROR_STAGES.iter().map(|stage| (*stage, 0)).collect(),
        }
    }

    /// Counts a failure of the agent at `stage` (one of [`ERROR_STAGES`]).
    pub fn count_error(&mut self, stage: &'static str) {
        *self.errors.entry(stage).or_default() += 1;
    }

    /// The workload's label set, or the shared `other` one once the cap is reached. A
    /// workload keeps the answer it got first, so its series stay continuous.
    fn labels(&mut self, workload: &Workload) -> Labels {
        let own = self.own_labels(workload);
        if self.admitted.contains(&own) {
            return own;
        }
        if !self.folded.contains(&own) && self.admitted.len() < self.max_workloads {
            self.admitted.insert(own.clone());
            return own;
        }
        self.folded.insert(own);
        let mut other = vec![
            ("namespace", String::new()),
            ("pod", String::new()),
            ("container", String::new()),
            ("cgroup", OTHER.to_string()),
        ];
        other.extend(
            self.pod_labels
                .iter()
                .map(|(_, name)| (*name, String::new())),
        );
        other
    }

    /// The workload's own label set.
    fn own_labels(&self, workload: &Workload) -> Labels {
        let mut own = workload_labels(workload);
        for (key, name) in &self.pod_labels {
            own.push((
                *name,
                workload.pod_labels.get(key).cloned().unwrap_or_default(),
            ));
        }
        own
    }

    pub fn render(&mut self, snapshot: &Snapshot, scrape_seconds: f64) -> String {
        self.render_with(snapshot, None, None, scrape_seconds)
    }

    /// As [`render`](Self::render), plus the tuning inventory, and the changes seen
    /// with their latest verdicts.
    pub fn render_with(
        &mut self,
        snapshot: &Snapshot,
        inventory: Option<&Inventory>,
        changes: Option<&Watcher>,
        scrape_seconds: f64,
    ) -> String {
        let mut f = Families::default();
        if let Some(inventory) = inventory {
            add_tuning(&mut f, inventory);
        }
        if let Some(watcher) = changes {
            add_changes(&mut f, watcher);
        }
        // Workloads gone from the snapshot (deleted pods past their grace period) give
        // their place back: with pod churn the cap would otherwise fill with the dead.
        let present: HashSet<Labels> = snapshot
            .workloads
            .iter()
            .map(|w| self.own_labels(w))
            .collect();
        self.admitted.retain(|labels| present.contains(labels));
        self.folded.retain(|labels| present.contains(labels));
        for workload in &snapshot.workloads {
            let labels = self.labels(workload);
            add_workload(&mut f, workload, &labels);
        }
        add_probe_health(&mut f, &snapshot.probes, &snapshot.map_overflows);
        for (map, &deleted) in &snapshot.gc_deleted_entries {
            f.counter(
                "tuneprobe_gc_deleted_entries_total",
                "Kernel map entries deleted because their cgroup or network namespace was gone for longer than --pod-grace.",
                vec![("map", map.clone())],
                deleted as f64,
            );
        }
        for program in &snapshot.program_stats {
            let labels = vec![("probe", program.name.clone())];
            f.counter(
                "tuneprobe_program_run_seconds_total",
                "Kernel time spent in the program (0 unless tuneprobe runs with --bpf-stats).",
                labels.clone(),
                program.run_time_ns as f64 / 1e9,
            );
            f.counter(
                "tuneprobe_program_runs_total",
                "Times the kernel ran the program (0 unless tuneprobe runs with --bpf-stats).",
                labels,
                program.run_count as f64,
            );
        }
        f.gauge(
            "tuneprobe_folded_workloads",
            "Workloads past --max-workloads whose series are folded into cgroup=\"other\".",
            vec![],
            self.folded.len() as f64,
        );
        for (stage, &count) in &self.errors {
            f.counter(
                "tuneprobe_agent_errors_total",
                "Failures of the agent itself by stage (collect, tuning_inventory, render); details in its log.",
                vec![("stage", (*stage).to_string())],
                count as f64,
            );
        }
        f.gauge(
            "tuneprobe_scrape_duration_seconds",
            "Time the previous /metrics scrape took to collect and render.",
            vec![],
            scrape_seconds,
        );
        let mut out = Vec::new();
        // Encoding into memory cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&f.encode(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// `namespace`, `pod`, `container` for pods; `cgroup` (the path) for everything else,
/// which is bounded by the number of cgroups on the node and by the workload cap.
fn workload_labels(w: &Workload) -> Labels {
    let is_pod = w.pod_uid.is_some();
    let cgroup = match (&w.cgroup_path, w.netns) {
        _ if is_pod => String::new(),
        (Some(path), _) => path.clone(),
        (None, Some(netns)) => format!("netns:{netns}"),
        (None, None) => "unattributed".to_string(),
    };
    vec![
        ("namespace", w.namespace.clone().unwrap_or_default()),
        (
            "pod",
            w.pod
                .clone()
                .or_else(|| w.pod_uid.clone())
                .unwrap_or_default(),
        ),
        (
            "container",
            w.container
                .clone()
                .or_else(|| {
                    w.container_id
                        .as_ref()
                        .map(|id| id[..12.min(id.len())].to_string())
                })
                .unwrap_or_default(),
        ),
        ("cgroup", cgroup),
    ]
}

fn with(labels: &Labels, more: &[(&'static str, &str)]) -> Labels {
    let mut out = labels.clone();
    out.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
    out
}

fn add_workload(f: &mut Families, w: &Workload, labels: &Labels) {
    if w.tcp.retransmits + w.tcp.failed_retransmits > 0 {
        f.counter(
            "tuneprobe_tcp_retransmits_total",
            "TCP retransmitted skbs that went out (tcp:tcp_retransmit_skb, err == 0).",
            labels.clone(),
            w.tcp.retransmits as f64,
        );
        f.counter(
            "tuneprobe_tcp_retransmitted_segments_total",
            "TCP segments in retransmitted skbs, as RetransSegs counts them.",
            labels.clone(),
            w.tcp.retransmitted_segments as f64,
        );
        f.counter(
            "tuneprobe_tcp_failed_retransmits_total",
            "TCP retransmit attempts that did not go out (err != 0).",
            labels.clone(),
            w.tcp.failed_retransmits as f64,
        );
    }
    for (reason, &count) in &w.drops.by_reason {
        f.counter(
            "tuneprobe_packet_drops_total",
            "Packets the kernel dropped, by drop reason (skb:kfree_skb), plus TCP_LISTEN_OVERFLOW.",
            with(labels, &[("reason", reason)]),
            count as f64,
        );
    }
    if let Some(dns) = &w.dns {
        for (resolver, r) in &dns.by_resolver {
            let l = with(labels, &[("resolver", resolver)]);
            f.counter(
                "tuneprobe_dns_queries_total",
                "DNS queries sent to port 53 (UDP and TCP).",
                l.clone(),
                r.queries as f64,
            );
            f.counter(
                "tuneprobe_dns_timeouts_total",
                "DNS queries without a response within the timeout.",
                l,
                r.timeouts as f64,
            );
        }
        for series in &dns.latency_series {
            f.add(
                "tuneprobe_dns_latency_seconds",
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
    for b in &w.block {
        let l = with(labels, &[("device", &b.device), ("op", &b.op)]);
        f.add(
            "tuneprobe_block_service_seconds",
            "Block request issue to complete; the count is the completed requests.",
            l.clone(),
            prometheus_histogram(&b.service_histogram, IO_BUCKETS),
        );
        f.add(
            "tuneprobe_block_queue_seconds",
            "Block request insert to issue, for requests that went through a scheduler queue.",
            l.clone(),
            prometheus_histogram(&b.queue_histogram, IO_BUCKETS),
        );
        f.counter(
            "tuneprobe_block_bytes_total",
            "Bytes completed by block requests.",
            l.clone(),
            b.bytes as f64,
        );
        f.counter(
            "tuneprobe_block_errors_total",
            "Block requests completed with an error.",
            l,
            b.errors as f64,
        );
    }
    if let Some(cpu) = &w.cpu {
        if let Some(quota) = cpu.quota_ms {
            f.gauge(
                "tuneprobe_cpu_quota_seconds",
                "CFS quota per period (cpu.max, cpu.cfs_quota_us).",
                labels.clone(),
                quota / 1000.0,
            );
        }
        if let Some(period) = cpu.period_ms {
            f.gauge(
                "tuneprobe_cpu_period_seconds",
                "CFS period (cpu.max, cpu.cfs_period_us).",
                labels.clone(),
                period / 1000.0,
            );
        }
        f.counter(
            "tuneprobe_cpu_periods_total",
            "CFS periods with activity (cpu.stat nr_periods).",
            labels.clone(),
            cpu.periods as f64,
        );
        f.counter(
            "tuneprobe_cpu_throttled_periods_total",
            "CFS periods in which the group was throttled (cpu.stat nr_throttled).",
            labels.clone(),
            cpu.throttled_periods as f64,
        );
        f.counter(
            "tuneprobe_cpu_throttled_seconds_total",
            "Time the group was throttled (cpu.stat throttled_time/throttled_usec).",
            labels.clone(),
            cpu.throttled_ms / 1000.0,
        );
        f.counter(
            "tuneprobe_cpu_throttle_events_total",
            "Tasks switched out because the group's quota ran out (sched_switch).",
            labels.clone(),
            cpu.throttle_events as f64,
        );
        f.add(
            "tuneprobe_cpu_throttle_stall_seconds",
            "How long a throttled task waited until it ran again.",
            labels.clone(),
            prometheus_histogram(&cpu.stall_histogram, IO_BUCKETS),
        );
    }
}

/// Every knob as `tuneprobe_tuning_value` (numeric values) and
/// `tuneprobe_tuning_deviation` (1 when it differs from the guides' recommendation).
fn add_tuning(f: &mut Families, inventory: &Inventory) {
    // What could not be read is said as plainly as what was: a DaemonSet without
    // CAP_SYS_ADMIN sees no pod's sysctls, and from its own network namespace not the
    // node's global net ones either.
    let netns_knobs = crate::tuning::KNOBS
        .iter()
        .filter(|k| k.scope == crate::tuning::Scope::Netns)
        .count();
    let unreadable = [(
        "node".to_string(),
        String::new(),
        inventory.node_unreadable.len(),
    )]
    .into_iter()
    .chain(
        inventory
            .netns
            .iter()
            .filter(|ns| ns.error.is_some())
            .map(|ns| {
                (
                    format!("netns:{}", ns.netns),
                    ns.owner.clone().unwrap_or_default(),
                    netns_knobs,
                )
            }),
    );
    for (scope, owner, count) in unreadable {
        f.gauge(
            "tuneprobe_tuning_unreadable",
            "Tuning knobs of a scope that could not be read here (`tuneprobe tuning` says why).",
            vec![("scope", scope), ("owner", owner)],
            count as f64,
        );
    }
    let mut put = |scope: String, owner: &str, settings: &[Setting]| {
        for s in settings {
            let labels = vec![
                ("knob", s.knob.clone()),
                ("scope", scope.clone()),
                ("owner", owner.to_string()),
            ];
            if let Ok(value) = s.value.parse::<f64>() {
                f.gauge(
                    "tuneprobe_tuning_value",
                    "Current value of a tuning knob with a single numeric value.",
                    labels.clone(),
                    value,
                );
            }
            if let Some(deviates) = s.deviates {
                f.gauge(
                    "tuneprobe_tuning_deviation",
                    "1 if the knob differs from what the tuning guides recommend.",
                    labels,
                    f64::from(u8::from(deviates)),
                );
            }
        }
    };
    put("node".into(), "", &inventory.node);
    for ns in &inventory.netns {
        put(
            format!("netns:{}", ns.netns),
            ns.owner.as_deref().unwrap_or(""),
            &ns.settings,
        );
    }
    for d in &inventory.devices {
        put(format!("device:{}", d.device), "", &d.settings);
    }
    for m in &inventory.mounts {
        put(format!("mount:{}", m.mountpoint), "", &m.settings);
    }
    for c in &inventory.cgroups {
        put(
            format!("cgroup:{}", c.cgroup_path),
            &c.cgroup_path,
            &c.settings,
        );
    }
}

/// At most this many `tuneprobe_tuning_verdict` series.
const MAX_VERDICT_SERIES: usize = 1000;

/// `tuneprobe_tuning_changes_total` per knob and scope kind, and the latest verdict of
/// each recent change as `tuneprobe_tuning_verdict` (1 on the verdict's label).
fn add_changes(f: &mut Families, watcher: &Watcher) {
    for ((knob, scope), &count) in &watcher.changes_total {
        f.counter(
            "tuneprobe_tuning_changes_total",
            "Changes of tuning knobs seen, by knob and scope kind (node, netns, device, mount, cgroup).",
            vec![("knob", knob.clone()), ("scope", scope.clone())],
            count as f64,
        );
    }
    // Newest changes first, bounded: a node-wide change judged on every workload must
    // not flood Prometheus with series.
    let verdicts = watcher
        .recent
        .iter()
        .rev()
        .flat_map(|report| report.verdicts.iter().map(move |v| (report, v)))
        .take(MAX_VERDICT_SERIES);
    {
        for (report, v) in verdicts {
            // The same workload labels as the workload's own series.
            let workload = Workload {
                cgroup_path: v.cgroup_path.clone(),
                netns: v.netns,
                pod_uid: v.pod_uid.clone(),
                container_id: v.container_id.clone(),
                namespace: v.namespace.clone(),
                pod: v.pod.clone(),
                container: v.container.clone(),
                ..Workload::default()
            };
            let mut labels = workload_labels(&workload);
            labels.extend([
                ("knob", report.change.knob.clone()),
                ("scope", report.change.scope.clone()),
                ("signal", v.signal.name()),
                ("verdict", crate::report::serde_name(&v.comparison.verdict)),
                ("final", report.is_final.to_string()),
            ]);
            f.gauge(
                "tuneprobe_tuning_verdict",
                "1 for the latest verdict on a recent tuning change, per affected workload and signal.",
                labels,
                1.0,
            );
        }
    }
}

fn add_probe_health(
    f: &mut Families,
    probes: &[ProbeStatus],
    map_overflows: &BTreeMap<String, u64>,
) {
    for probe in probes {
        let signal = serde_name(&probe.signal);
        f.gauge(
            "tuneprobe_probe_attached",
            "1 if the kernel program is attached, 0 if this kernel cannot run it.",
            vec![("probe", probe.name.clone()), ("signal", signal)],
            f64::from(u8::from(probe.attached)),
        );
    }
    for (map, &lost) in map_overflows {
        f.counter(
            "tuneprobe_map_overflows_total",
            "Updates lost because a kernel map was full (BLOCK_IN_FLIGHT: completions without state).",
            vec![("map", map.clone())],
            lost as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DropStats, TcpStats};

    fn workload(pod: &str) -> Workload {
        let mut drops = DropStats::default();
        drops.add("NO_SOCKET", 3);
        Workload {
            cgroup_id: Some(7),
            cgroup_path: Some(format!("/kubepods/{pod}")),
            pod_uid: Some(format!("uid-{pod}")),
            namespace: Some("shop".into()),
            pod: Some(pod.into()),
            container: Some("app".into()),
            tcp: TcpStats {
                retransmits: 2,
                retransmitted_segments: 5,
                failed_retransmits: 0,
                ..TcpStats::default()
            },
            drops,
            ..Workload::default()
        }
    }

    fn snapshot(workloads: Vec<Workload>) -> Snapshot {
        Snapshot {
            duration_s: 1.0,
            probes: vec![],
            map_overflows: BTreeMap::from([("DROPS".to_string(), 0)]),
            gc_deleted_entries: BTreeMap::from([("DROPS".to_string(), 4)]),
            program_stats: vec![],
            workloads,
        }
    }

    #[test]
    fn renders_counters_with_pod_labels() {
        let text = Exporter::new(10, &[]).render(&snapshot(vec![workload("api")]), 0.01);
        assert!(
            text.contains(
                "tuneprobe_packet_drops_total{namespace=\"shop\",pod=\"api\",container=\"app\",cgroup=\"\",reason=\"NO_SOCKET\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE tuneprobe_tcp_retransmits_total counter"),
            "{text}"
        );
        assert!(
            text.contains("tuneprobe_map_overflows_total{map=\"DROPS\"} 0")
                && text.contains("tuneprobe_gc_deleted_entries_total{map=\"DROPS\"} 4"),
            "{text}"
        );
    }

    #[test]
    fn the_cap_folds_later_workloads_into_other_and_counts_them() {
        let mut exporter = Exporter::new(2, &[]);
        let all = vec![workload("a"), workload("b"), workload("c"), workload("d")];
        let text = exporter.render(&snapshot(all.clone()), 0.0);
        assert!(
            text.contains("pod=\"a\"") && text.contains("pod=\"b\""),
            "{text}"
        );
        assert!(
            !text.contains("pod=\"c\"") && !text.contains("pod=\"d\""),
            "{text}"
        );
        // c and d summed into one series.
        assert!(
            text.contains("tuneprobe_packet_drops_total{namespace=\"\",pod=\"\",container=\"\",cgroup=\"other\",reason=\"NO_SOCKET\"} 6"),
            "{text}"
        );
        assert!(text.contains("tuneprobe_folded_workloads 2"), "{text}");
        // The next scrape keeps the same answer for each workload.
        let again = exporter.render(&snapshot(all), 0.0);
        assert!(again.contains("pod=\"a\"") && !again.contains("pod=\"c\""));
    }

    #[test]
    fn workloads_gone_from_the_snapshot_give_their_place_back() {
        let mut exporter = Exporter::new(2, &[]);
        exporter.render(&snapshot(vec![workload("a"), workload("b")]), 0.0);
        // a and b expired (deleted pods past their grace period): c and d get labels.
        let text = exporter.render(&snapshot(vec![workload("c"), workload("d")]), 0.0);
        assert!(
            text.contains("pod=\"c\"") && text.contains("pod=\"d\"") && !text.contains("pod=\"a\""),
            "{text}"
        );
        assert!(text.contains("tuneprobe_folded_workloads 0"), "{text}");
    }

    #[test]
    fn pod_labels_are_copied_only_when_asked() {
        let mut w = workload("api");
        w.pod_labels
            .insert("app.kubernetes.io/name".into(), "shop-api".into());
        let text = Exporter::new(10, &["app.kubernetes.io/name".to_string()])
            .render(&snapshot(vec![w.clone()]), 0.0);
        assert!(
            text.contains("label_app_kubernetes_io_name=\"shop-api\""),
            "{text}"
        );
        let plain = Exporter::new(10, &[]).render(&snapshot(vec![w]), 0.0);
        assert!(!plain.contains("label_"), "{plain}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut odd = workload("x");
        odd.pod_uid = None;
        odd.namespace = None;
        odd.pod = None;
        odd.container = None;
        odd.cgroup_path = Some("/system.slice/a\\x2db \"q\"\nline.service".into());
        let text = Exporter::new(10, &[]).render(&snapshot(vec![odd]), 0.0);
        assert!(
            text.contains(r#"cgroup="/system.slice/a\\x2db \"q\"\nline.service""#),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_never_overcount() {
        let mut h: LatencyHistogram = LatencyHistogram::ZERO;
        for ns in [800_000u64, 8_000_000, 80_000_000] {
            h.count += 1;
            h.sum_ns += ns;
            h.buckets[probe_common::histogram::bucket_index(ns)] += 1;
        }
        let Value::Histogram {
            count,
            sum,
            buckets,
        } = prometheus_histogram(&h, IO_BUCKETS)
        else {
            panic!()
        };
        assert_eq!(count, 3);
        assert!((sum - 0.0888).abs() < 1e-9);
        let at = |le: f64| buckets.iter().find(|(b, _)| *b == le).unwrap().1;
        assert_eq!(at(0.0005), 0);
        assert_eq!(at(0.001), 1);
        assert_eq!(at(0.01), 2);
        assert_eq!(at(0.1), 3);
        assert_eq!(at(10.0), 3);
    }
}
