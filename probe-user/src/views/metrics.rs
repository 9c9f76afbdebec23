//! The Prometheus exposition: a [`Snapshot`] (cumulative since the probe started) turned
//! into metric families (each signal adds its own), with a cap on how many workloads get
//! series of their own; plus the agent's health, the tuning inventory and verdicts.
//!
//! Counters are set from the kernel's cumulative counts rather than incremented, so the
//! families are built per scrape and encoded with the `prometheus` crate's text encoder
//! (which also escapes label values).

use std::collections::{BTreeMap, HashSet};

use prometheus::{Encoder as _, TextEncoder, proto::MetricFamily};

use crate::{
    advise::Adviser,
    kernel::loader::ProbeStatus,
    output::families::{Families, Labels},
    report::{Snapshot, Workload},
    tuning::{Inventory, Setting},
    verify::Watcher,
};

/// The label set that folded workloads share.
pub(crate) const OTHER: &str = "other";

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
pub(crate) const ERROR_STAGES: &[&str] = &["collect", "tuning_inventory", "render", "otlp_push"];

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
    pub(crate) fn count_error(&mut self, stage: &'static str) {
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
        let mut own = workload.identity.labels();
        for (key, name) in &self.pod_labels {
            own.push((
                *name,
                workload.pod_labels.get(key).cloned().unwrap_or_default(),
            ));
        }
        own
    }

    /// The exposition of `snapshot` alone (no inventory, no verdicts).
    pub fn render(&mut self, snapshot: &Snapshot, scrape_seconds: f64) -> String {
        self.render_with(snapshot, None, None, None, scrape_seconds)
    }

    /// As [`render`](Self::render), plus the tuning inventory, and the changes seen
    /// with their latest verdicts.
    pub(crate) fn render_with(
        &mut self,
        snapshot: &Snapshot,
        inventory: Option<&Inventory>,
        changes: Option<&Watcher>,
        advice: Option<&Adviser>,
        scrape_seconds: f64,
    ) -> String {
        encode(&self.families(snapshot, inventory, changes, advice, scrape_seconds))
    }

    /// The metric families [`render_with`](Self::render_with) encodes (also what the
    /// generated metrics reference, `docs/metrics.md`, lists).
    pub(crate) fn families(
        &mut self,
        snapshot: &Snapshot,
        inventory: Option<&Inventory>,
        changes: Option<&Watcher>,
        advice: Option<&Adviser>,
        scrape_seconds: f64,
    ) -> Vec<MetricFamily> {
        let mut f = Families::default();
        if let Some(inventory) = inventory {
            add_tuning(&mut f, inventory);
        }
        if let Some(watcher) = changes {
            watcher.metrics(&mut f);
        }
        if let Some(adviser) = advice {
            adviser.metrics(&mut f);
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
            workload.signals.metrics(&labels, &mut f);
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
                "Failures of the agent itself by stage (collect, tuning_inventory, render, otlp_push); details in its log.",
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
        f.encode()
    }
}

/// `families` as Prometheus text format 0.0.4.
pub(crate) fn encode(families: &[MetricFamily]) -> String {
    let mut out = Vec::new();
    // Encoding into memory cannot fail for well-formed families.
    let _ = TextEncoder::new().encode(families, &mut out);
    String::from_utf8_lossy(&out).into_owned()
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
    add_settings(f, "node".into(), "", &inventory.node);
    for ns in &inventory.netns {
        add_settings(
            f,
            format!("netns:{}", ns.netns),
            ns.owner.as_deref().unwrap_or(""),
            &ns.settings,
        );
    }
    for d in &inventory.devices {
        add_settings(f, format!("device:{}", d.device), "", &d.settings);
    }
    for m in &inventory.mounts {
        add_settings(f, format!("mount:{}", m.mountpoint), "", &m.settings);
    }
    for c in &inventory.cgroups {
        add_settings(
            f,
            format!("cgroup:{}", c.cgroup_path),
            &c.cgroup_path,
            &c.settings,
        );
    }
}

/// The value and deviation of each of one scope's `settings`.
fn add_settings(f: &mut Families, scope: String, owner: &str, settings: &[Setting]) {
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
}

fn add_probe_health(
    f: &mut Families,
    probes: &[ProbeStatus],
    map_overflows: &BTreeMap<String, u64>,
) {
    for probe in probes {
        let signal = probe.signal.to_string();
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
    use probe_common::LatencyHistogram;

    use crate::{
        output::families::{IO_BUCKETS, Value, prometheus_histogram},
        signals::{Sections, drops::DropStats, tcp_retransmit::TcpStats},
        workloads::identity::Identity,
    };

    fn workload(pod: &str) -> Workload {
        let mut drops = DropStats::default();
        drops.add("NO_SOCKET", 3);
        Workload {
            identity: Identity {
                cgroup_id: Some(7),
                cgroup_path: Some(format!("/kubepods/{pod}")),
                pod_uid: Some(format!("uid-{pod}")),
                namespace: Some("shop".into()),
                pod: Some(pod.into()),
                container: Some("app".into()),
                ..Identity::default()
            },
            signals: Sections {
                tcp: TcpStats {
                    retransmits: 2,
                    retransmitted_segments: 5,
                    failed_retransmits: 0,
                    ..TcpStats::default()
                },
                drops,
                ..Sections::default()
            },
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
        odd.identity.pod_uid = None;
        odd.identity.namespace = None;
        odd.identity.pod = None;
        odd.identity.container = None;
        odd.identity.cgroup_path = Some("/system.slice/a\\x2db \"q\"\nline.service".into());
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
