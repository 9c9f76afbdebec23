//! `tuneprobe fleet verify`: did a tuning rollout help across nodes? The canary nodes'
//! shift after the change against the control nodes' shift over the same intervals
//! (difference in differences), from the series every agent already exports, through
//! Prometheus's query API.

pub mod ab;
pub mod alerts;
pub mod did;
pub mod gate;
pub mod prom;
pub mod rules;
pub mod series;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::{
    signals::declaration::Exported,
    signals::measure::Measure,
    tuning,
    verify::stats::{self, Comparison},
};
use did::{Paired, Side};
use prom::{Matchers, PromError, Prometheus, Series};
use series::{Instance, NODE_LABEL, Sample, Samples};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Prometheus(#[from] PromError),
    #[error("{0} has no signal of tuneprobe's to judge it by; name one with --signal ({1})")]
    NoSignal(String, String),
    #[error("no canary node: {0}")]
    NoCanary(String),
    #[error("no control node: {0}")]
    NoControl(String),
}

/// How verdicts are grouped besides the overall one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum By {
    /// Each canary pod's container against the control's pods of the same workload.
    Pod,
    /// A workload's canary pods together against its control pods.
    Workload,
    /// Each canary node's matched pods together.
    Node,
}

/// What to judge.
#[derive(Debug, Clone)]
pub struct Options {
    /// The knob whose change is judged; its change time per node comes from the metrics.
    pub knob: Option<String>,
    /// A change time shared by every canary node (unix seconds).
    pub at: Option<f64>,
    pub canary: Matchers,
    pub control: Matchers,
    pub before: f64,
    pub after: f64,
    pub interval: f64,
    /// With `knob`: how far back from `now` its changes are looked for.
    pub since: f64,
    pub signals: Vec<Measure>,
    pub by: By,
    pub now: f64,
}

/// A canary node and when its change happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryNode {
    pub node: String,
    /// The change time used: `--at`, or the first step at which the node's metrics show
    /// the knob changed.
    pub changed_at: f64,
    /// Changes of the knob seen on the node in the searched range (`null` with `--at`);
    /// only the first is judged.
    pub changes: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowLengths {
    pub before_s: f64,
    pub after_s: f64,
    pub interval_s: f64,
}

/// Per-interval values of one side of a verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SideSamples {
    pub before: Vec<f64>,
    pub after: Vec<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerdictSamples {
    pub canary: SideSamples,
    pub control: SideSamples,
    /// `canary - control` per interval: what the verdict's rank test compares.
    pub difference: SideSamples,
}

/// The fleet verdict of one group (or overall) on one signal.
#[derive(Debug, Clone, Serialize)]
pub struct FleetVerdict {
    /// How the table names it: `namespace/pod/container@node`, `namespace/workload/
    /// container`, `node`, or `overall`.
    pub group: String,
    pub node: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub signal: Measure,
    pub load: Option<&'static str>,
    /// Canary pods (containers) judged, and the control's pods they were matched with.
    pub canary_pods: usize,
    pub control_pods: usize,
    pub control_nodes: Vec<String>,
    #[serde(flatten)]
    pub did: Comparison,
    pub canary: Side,
    pub control: Side,
    pub relative_load_change: Option<f64>,
    pub load_changed: bool,
    pub control_moved: bool,
    pub notes: Vec<String>,
    pub samples: VerdictSamples,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub prometheus: String,
    pub knob: Option<String>,
    pub at: Option<f64>,
    pub windows: WindowLengths,
    pub by: By,
    pub signals: Vec<Measure>,
    pub canary: Vec<CanaryNode>,
    pub control: Vec<String>,
    pub notes: Vec<String>,
    /// Why the data behind the verdicts may be incomplete: the warnings the store
    /// answered with (Thanos with a store down), a store that has not caught up with
    /// the end of the after window. A gate never passes a partial report.
    pub partial: Vec<String>,
    /// One per signal: every matched canary pod against its control.
    pub overall: Vec<FleetVerdict>,
    pub verdicts: Vec<FleetVerdict>,
}

/// The signals to judge: those asked for, else the knob's own (every signal `verify`
/// judges is rebuilt from the exported metrics; a knob without one needs --signal).
pub fn signals(knob: Option<&str>, asked: &[Measure]) -> Result<Vec<Measure>, FleetError> {
    let chosen: Vec<Measure> = match (asked, knob) {
        ([], Some(knob)) => tuning::measures_for(knob).to_vec(),
        (asked, _) => asked.to_vec(),
    };
    if chosen.is_empty() {
        let names: Vec<String> = Measure::judged().map(Measure::name).collect();
        return Err(FleetError::NoSignal(
            knob.unwrap_or("the change").to_string(),
            names.join(", "),
        ));
    }
    Ok(chosen)
}

/// Nodes with an agent reporting at some point of `[end - range, end]` that match the
/// matchers.
fn nodes(
    prometheus: &Prometheus,
    matchers: &Matchers,
    end: f64,
    range: f64,
) -> Result<BTreeSet<String>, PromError> {
    let selector = Matchers::parse(&format!("{NODE_LABEL}!=\"\""))
        .expect("a valid matcher")
        .and(matchers);
    let query = format!(
        "count by ({NODE_LABEL}) (count_over_time({}[{}s]))",
        selector.select("tuneprobe_probe_attached"),
        range.ceil() as u64
    );
    Ok(prometheus
        .query(&query, end)?
        .iter()
        .map(|s| s.label(NODE_LABEL).to_string())
        .collect())
}

/// When each node's knob changed: the grid points at which its change counter rose or
/// appeared (it is exported from the first change on), or its numeric value differed
/// from the step before.
pub fn change_times(
    changes: &[Series],
    values: &[Series],
    start: f64,
) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for s in changes {
        let times = out.entry(s.label(NODE_LABEL).to_string()).or_default();
        for (i, &(t, v)) in s.points.iter().enumerate() {
            let changed = match i {
                // A series there from the range's start holds changes made before it.
                0 => t > start + 1e-6 && v > 0.0,
                _ => v > s.points[i - 1].1,
            };
            if changed {
                times.push(t);
            }
        }
    }
    for s in values {
        let times = out.entry(s.label(NODE_LABEL).to_string()).or_default();
        for pair in s.points.windows(2) {
            if pair[1].1 != pair[0].1 {
                times.push(pair[1].0);
            }
        }
    }
    for times in out.values_mut() {
        times.sort_by(f64::total_cmp);
        times.dedup();
    }
    out.retain(|_, times| !times.is_empty());
    out
}

/// The canary nodes with their change time, and the control nodes.
fn groups(
    prometheus: &Prometheus,
    options: &Options,
    notes: &mut Vec<String>,
) -> Result<(Vec<CanaryNode>, Vec<String>, f64), FleetError> {
    let step = options.interval.max(options.since / 10_000.0);
    let canary_set = nodes(prometheus, &options.canary, options.now, options.since)?;
    let control_set = nodes(prometheus, &options.control, options.now, options.since)?;
    match (&options.knob, options.at) {
        (_, Some(at)) => {
            let (canary, control) = groups_at(at, &canary_set, &control_set, notes);
            Ok((canary, control, 0.0))
        }
        (Some(knob), None) => {
            let (canary, control) = groups_by_change(
                prometheus,
                options,
                knob,
                step,
                (&canary_set, &control_set),
                notes,
            )?;
            Ok((canary, control, step))
        }
        (None, None) => unreachable!("the command line requires --knob or --at"),
    }
}

/// With `--at`: every canary node changed then; the control nodes are those that are not
/// canaries too (noted).
fn groups_at(
    at: f64,
    canary_set: &BTreeSet<String>,
    control_set: &BTreeSet<String>,
    notes: &mut Vec<String>,
) -> (Vec<CanaryNode>, Vec<String>) {
    let canary: Vec<CanaryNode> = canary_set
        .iter()
        .map(|node| CanaryNode {
            node: node.clone(),
            changed_at: at,
            changes: None,
        })
        .collect();
    let overlap: Vec<&String> = control_set.intersection(canary_set).collect();
    if !overlap.is_empty() {
        notes.push(format!(
            "{} node(s) match both --canary and --control and count as canary only: {}",
            overlap.len(),
            overlap
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let control: Vec<String> = control_set.difference(canary_set).cloned().collect();
    (canary, control)
}

/// With `--knob`: the canary nodes whose metrics show it changed, at their first change
/// (more changes noted); the control nodes are those where it did not change.
fn groups_by_change(
    prometheus: &Prometheus,
    options: &Options,
    knob: &str,
    step: f64,
    (canary_set, control_set): (&BTreeSet<String>, &BTreeSet<String>),
    notes: &mut Vec<String>,
) -> Result<(Vec<CanaryNode>, Vec<String>), FleetError> {
    // On the step grid (from the epoch), so that the same data gives the same
    // change times, and so the same windows, whenever it is asked.
    let start = ((options.now - options.since) / step).floor() * step;
    let knob_matcher = Matchers::equal("knob", knob)
        .and(&Matchers::parse(&format!("{NODE_LABEL}!=\"\"")).expect("valid"));
    let changes = prometheus.query_range(
        &format!(
            "sum by ({NODE_LABEL}) ({})",
            knob_matcher.select("tuneprobe_tuning_changes_total")
        ),
        start,
        options.now,
        step,
    )?;
    let values = prometheus.query_range(
        &format!(
            "max by ({NODE_LABEL}, scope) ({})",
            knob_matcher.select("tuneprobe_tuning_value")
        ),
        start,
        options.now,
        step,
    )?;
    let times = change_times(&changes, &values, start);
    let canary: Vec<CanaryNode> = times
        .iter()
        .filter(|(node, _)| canary_set.contains(*node))
        .map(|(node, times)| CanaryNode {
            node: node.clone(),
            changed_at: times[0],
            changes: Some(times.len()),
        })
        .collect();
    for c in canary.iter().filter(|c| c.changes > Some(1)) {
        notes.push(format!(
            "{} changed {knob} {} times in the searched range; the first change is judged",
            c.node,
            c.changes.unwrap_or(0)
        ));
    }
    let control: Vec<String> = control_set
        .iter()
        .filter(|node| !times.contains_key(*node))
        .cloned()
        .collect();
    Ok((canary, control))
}

/// One canary pod's paired intervals, by window and index from the change.
#[derive(Debug, Clone, Default)]
struct Pairs {
    before: BTreeMap<i64, Paired>,
    after: BTreeMap<i64, Paired>,
}

/// Where the windows are for a change known to lie in `(lo, hi]`, on a grid of `step`:
/// before, intervals ending at or before `lo`; after, intervals starting at least one
/// step after `hi` (a step's value is the last scrape before it, which may be that much
/// older).
#[derive(Debug, Clone, Copy)]
pub struct ChangeWindow {
    pub lo: f64,
    pub hi: f64,
}

impl ChangeWindow {
    /// `Some((after, index))` for an interval ending at `t` inside a window.
    pub fn place(&self, t: f64, before: f64, after: f64, step: f64) -> Option<(bool, i64)> {
        let eps = step / 10.0;
        if t <= self.lo + eps && t > self.lo - before + eps {
            Some((false, ((self.lo - t) / step).round() as i64))
        } else if t >= self.hi + 2.0 * step - eps && t <= self.hi + step + after + eps {
            Some((true, ((t - self.hi) / step).round() as i64))
        } else {
            None
        }
    }
}

fn median_of(values: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = values.collect();
    (!v.is_empty()).then(|| stats::median(&v))
}

/// Pairs each canary instance's intervals with the control's same intervals.
fn pair(
    canary: &Samples,
    control: &[(&Instance, &BTreeMap<i64, Sample>)],
    window: ChangeWindow,
    options: &Options,
) -> BTreeMap<Instance, Pairs> {
    let mut out = BTreeMap::new();
    for (instance, samples) in canary {
        let mut pairs = Pairs::default();
        for (&at, sample) in samples {
            let t = at as f64 / 1000.0;
            let Some((after, index)) =
                window.place(t, options.before, options.after, options.interval)
            else {
                continue;
            };
            let matched: Vec<&Sample> = control.iter().filter_map(|(_, s)| s.get(&at)).collect();
            let Some(control_value) = median_of(matched.iter().map(|s| s.value)) else {
                continue;
            };
            let paired = Paired {
                canary: sample.value,
                control: control_value,
                canary_load: sample.load,
                control_load: median_of(matched.iter().filter_map(|s| s.load)),
            };
            if after {
                pairs.after.insert(index, paired);
            } else {
                pairs.before.insert(index, paired);
            }
        }
        out.insert(instance.clone(), pairs);
    }
    out
}

/// A group's windows: per index from the change, the median over its members.
fn combine(members: &[&Pairs]) -> did::Windows {
    let side = |pick: fn(&Pairs) -> &BTreeMap<i64, Paired>| {
        let indices: BTreeSet<i64> = members
            .iter()
            .flat_map(|m| pick(m).keys().copied())
            .collect();
        indices
            .into_iter()
            .filter_map(|i| {
                let at: Vec<&Paired> = members.iter().filter_map(|m| pick(m).get(&i)).collect();
                Some(Paired {
                    canary: median_of(at.iter().map(|p| p.canary))?,
                    control: median_of(at.iter().map(|p| p.control))?,
                    canary_load: median_of(at.iter().filter_map(|p| p.canary_load)),
                    control_load: median_of(at.iter().filter_map(|p| p.control_load)),
                })
            })
            .collect()
    };
    did::Windows {
        before: side(|p| &p.before),
        after: side(|p| &p.after),
    }
}

/// The workload key pods are matched by across nodes.
fn key(instance: &Instance) -> (String, String, String) {
    (
        instance.namespace.clone(),
        did::workload_name(&instance.pod).to_string(),
        instance.container.clone(),
    )
}

/// One group's verdict with its labels filled in by the caller.
#[allow(clippy::too_many_arguments)]
fn verdict(
    group: String,
    members: &[(&Instance, &Pairs)],
    controls: &BTreeMap<(String, String, String), Vec<&Instance>>,
    signal: Measure,
) -> FleetVerdict {
    let pairs: Vec<&Pairs> = members.iter().map(|(_, p)| *p).collect();
    let windows = combine(&pairs);
    let judgement = did::judge(&windows, signal.lower_is_better(), signal.load());
    let matched: BTreeSet<&Instance> = members
        .iter()
        .flat_map(|(i, _)| controls.get(&key(i)).into_iter().flatten().copied())
        .collect();
    let mut notes = judgement.notes;
    let unmatched: Vec<String> = members
        .iter()
        .filter(|(i, _)| !controls.contains_key(&key(i)))
        .map(|(i, _)| format!("{}/{}/{}@{}", i.namespace, i.pod, i.container, i.node))
        .collect();
    if !unmatched.is_empty() {
        notes.push(format!(
            "no pod of the same workload on a control node for {}",
            unmatched.join(", ")
        ));
    }
    let column = |w: &[Paired], f: fn(&Paired) -> f64| w.iter().map(f).collect::<Vec<f64>>();
    // A label shared by every member, else none.
    let one = |f: fn(&Instance) -> &str| {
        let values: BTreeSet<&str> = members.iter().map(|(i, _)| f(i)).collect();
        (values.len() == 1)
            .then(|| values.into_iter().next().map(str::to_string))
            .flatten()
    };
    FleetVerdict {
        group,
        node: one(|i| &i.node),
        namespace: one(|i| &i.namespace),
        workload: one(|i| did::workload_name(&i.pod)),
        pod: one(|i| &i.pod),
        container: one(|i| &i.container),
        signal,
        load: signal.load(),
        canary_pods: members.len(),
        control_pods: matched.len(),
        control_nodes: matched
            .iter()
            .map(|i| i.node.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        did: judgement.did,
        canary: judgement.canary,
        control: judgement.control,
        relative_load_change: judgement.relative_load_change,
        load_changed: judgement.load_changed,
        control_moved: judgement.control_moved,
        notes,
        samples: VerdictSamples {
            canary: SideSamples {
                before: column(&windows.before, |p| p.canary),
                after: column(&windows.after, |p| p.canary),
            },
            control: SideSamples {
                before: column(&windows.before, |p| p.control),
                after: column(&windows.after, |p| p.control),
            },
            difference: SideSamples {
                before: column(&windows.before, Paired::difference),
                after: column(&windows.after, Paired::difference),
            },
        },
    }
}

/// The verdicts of one signal from its samples: per group as asked, and overall.
pub fn judge_signal(
    signal: Measure,
    samples: &Samples,
    canary: &[CanaryNode],
    control: &[String],
    windows: &BTreeMap<String, ChangeWindow>,
    options: &Options,
) -> (FleetVerdict, Vec<FleetVerdict>) {
    let control_nodes: BTreeSet<&String> = control.iter().collect();
    let mut controls: BTreeMap<(String, String, String), Vec<&Instance>> = BTreeMap::new();
    for instance in samples.keys().filter(|i| control_nodes.contains(&i.node)) {
        controls.entry(key(instance)).or_default().push(instance);
    }
    let mut paired: BTreeMap<Instance, Pairs> = BTreeMap::new();
    for node in canary {
        let Some(window) = windows.get(&node.node) else {
            continue;
        };
        let own: Samples = samples
            .iter()
            .filter(|(i, _)| i.node == node.node)
            .map(|(i, s)| (i.clone(), s.clone()))
            .collect();
        for (instance, own_samples) in own {
            let matched: Vec<(&Instance, &BTreeMap<i64, Sample>)> = controls
                .get(&key(&instance))
                .into_iter()
                .flatten()
                .map(|i| (*i, &samples[*i]))
                .collect();
            let one = Samples::from([(instance, own_samples)]);
            paired.extend(pair(&one, &matched, *window, options));
        }
    }
    let all: Vec<(&Instance, &Pairs)> = paired.iter().collect();
    // Overall: the pods that have a control, since the others cannot say anything.
    let with_control: Vec<(&Instance, &Pairs)> = all
        .iter()
        .filter(|(i, _)| controls.contains_key(&key(i)))
        .copied()
        .collect();
    let mut overall = verdict("overall".into(), &with_control, &controls, signal);
    let unmatched = all.len() - with_control.len();
    if unmatched > 0 {
        overall.notes.push(format!(
            "{unmatched} canary pod(s) without a pod of the same workload on a control node are left out"
        ));
    }
    let mut grouped: BTreeMap<String, Vec<(&Instance, &Pairs)>> = BTreeMap::new();
    for (instance, pairs) in &all {
        let group = match options.by {
            By::Pod => format!(
                "{}/{}/{}@{}",
                instance.namespace, instance.pod, instance.container, instance.node
            ),
            By::Workload => {
                let (ns, workload, container) = key(instance);
                format!("{ns}/{workload}/{container}")
            }
            By::Node => instance.node.clone(),
        };
        grouped.entry(group).or_default().push((instance, pairs));
    }
    let verdicts = grouped
        .into_iter()
        .map(|(group, members)| verdict(group, &members, &controls, signal))
        .collect();
    (overall, verdicts)
}

/// Why a ratio has no samples at all: no node exports its load. Agents before the
/// network loads were exported (`tuneprobe_tcp_sent_segments_total`,
/// `tuneprobe_tcp_passive_opens_total`) have the counts but not what they are divided by.
fn missing_load(
    signal: Measure,
    source: Exported,
    answers: &BTreeMap<&str, Vec<Series>>,
) -> Option<String> {
    let Exported::Ratio { whole, .. } = source else {
        return None;
    };
    let none = |role: &str| answers.get(role).is_none_or(Vec::is_empty);
    (none("whole") && !none("part")).then(|| {
        format!(
            "{}: no canary or control node exports its load, {} (agents older than that \
             metric), so there are no samples to judge",
            signal.name(),
            whole.name
        )
    })
}

/// Runs the whole query: groups, change times, samples, verdicts.
pub fn verify(prometheus: &Prometheus, options: &Options) -> Result<FleetReport, FleetError> {
    let signals = signals(options.knob.as_deref(), &options.signals)?;
    let mut notes = Vec::new();
    let (canary, control, search_step) = groups(prometheus, options, &mut notes)?;
    let what = options
        .knob
        .as_deref()
        .map_or_else(|| "--canary".to_string(), |k| format!("a change of {k}"));
    if canary.is_empty() {
        return Err(FleetError::NoCanary(format!(
            "no node with {what} matching --canary {{{}}} reported within the last {:.0}s",
            options.canary, options.since
        )));
    }
    if control.is_empty() {
        return Err(FleetError::NoControl(format!(
            "every node matching --control {{{}}} is a canary (or none reported)",
            options.control
        )));
    }
    let windows = change_windows(&canary, options, search_step);
    let step = options.interval;
    let range = sample_range(&windows, options, &mut notes);
    let node_selector = Matchers::one_of(
        NODE_LABEL,
        canary
            .iter()
            .map(|c| c.node.as_str())
            .chain(control.iter().map(String::as_str)),
    );
    let mut overall = Vec::new();
    let mut verdicts = Vec::new();
    for &signal in &signals {
        let source = signal.declared().exported;
        let mut answers = BTreeMap::new();
        for (role, query) in series::queries(source, &node_selector.to_string()) {
            answers.insert(
                role,
                prometheus.query_range(&query, range.start, range.end, step)?,
            );
        }
        if let Some(note) = missing_load(signal, source, &answers) {
            notes.push(note);
        }
        let samples = series::samples(source, &answers, step);
        let (all, groups) = judge_signal(signal, &samples, &canary, &control, &windows, options);
        overall.push(all);
        verdicts.extend(groups);
    }
    let newest = newest_sample(prometheus, &node_selector, range, step)?;
    let mut partial = prometheus.warnings();
    partial.extend(range.behind(newest, step));
    Ok(FleetReport {
        prometheus: prometheus.base_url().to_string(),
        knob: options.knob.clone(),
        at: options.at,
        windows: WindowLengths {
            before_s: options.before,
            after_s: options.after,
            interval_s: options.interval,
        },
        by: options.by,
        signals,
        canary,
        control,
        notes,
        partial,
        overall,
        verdicts,
    })
}

/// The time of the newest sample of any of the nodes the store answers with in `range`:
/// the sample behind the last point, not the point's own time, since a store may answer
/// with points it has no samples for yet (VictoriaMetrics repeats the last complete
/// point over its latency offset).
fn newest_sample(
    prometheus: &Prometheus,
    nodes: &Matchers,
    range: SampleRange,
    step: f64,
) -> Result<Option<f64>, PromError> {
    let freshness = prometheus.query_range(
        &format!(
            "max(timestamp({}))",
            nodes.select("tuneprobe_probe_attached")
        ),
        range.start,
        range.end,
        step,
    )?;
    Ok(freshness
        .iter()
        .filter_map(|s| s.points.last().map(|p| p.1))
        .reduce(f64::max))
}

/// Each canary node's change window. With a detected time the change lies in the step
/// before it, plus the agent's one-second inventory tick.
fn change_windows(
    canary: &[CanaryNode],
    options: &Options,
    search_step: f64,
) -> BTreeMap<String, ChangeWindow> {
    canary
        .iter()
        .map(|c| {
            let lo = if options.at.is_some() {
                c.changed_at
            } else {
                c.changed_at - 2.0 * search_step - 1.0
            };
            (
                c.node.clone(),
                ChangeWindow {
                    lo,
                    hi: c.changed_at,
                },
            )
        })
        .collect()
}

/// The samples' range: from `start` to `end` on the interval's grid, the after window
/// of the last change ending at `after_end`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRange {
    pub start: f64,
    pub end: f64,
    pub after_end: f64,
}

impl SampleRange {
    /// Why the answers fall short of the after window, if they do: the newest sample
    /// the store has (`newest`, over every node) is not after the grid point before the
    /// after window's last one (cut at `end`), so the last interval has no sample of
    /// its own. A store that holds back its newest samples (VictoriaMetrics, for its
    /// `-search.latencyOffset`, 30 s by default, answering with the last complete
    /// point repeated) or ingests late (remote write, a Thanos sidecar's upload) would
    /// otherwise give the last intervals no increase, silently.
    pub fn behind(&self, newest: Option<f64>, step: f64) -> Option<String> {
        let wanted = self.after_end.min(self.end);
        let last = self.start + ((wanted - self.start) / step + 1e-9).floor() * step;
        let newest = newest?;
        (newest < last - step + step / 10.0).then(|| {
            format!(
                "the store has not caught up: its newest sample is at {newest:.0}, {:.0}s \
                 before the after window's last interval at {last:.0}; wait and run again \
                 (VictoriaMetrics shows a sample in ranges only 30s after its time, its \
                 -search.latencyOffset)",
                last - newest
            )
        })
    }
}

/// The range of the samples to query, on the interval's grid: from the before window of
/// the first change to the after window of the last, cut at now (noted). A range of
/// more points than a store answers at once is asked in pieces (`prom::MAX_POINTS`).
fn sample_range(
    windows: &BTreeMap<String, ChangeWindow>,
    options: &Options,
    notes: &mut Vec<String>,
) -> SampleRange {
    let step = options.interval;
    let first = windows.values().map(|w| w.lo).fold(f64::INFINITY, f64::min);
    let last = windows
        .values()
        .map(|w| w.hi)
        .fold(f64::NEG_INFINITY, f64::max);
    let start = ((first - options.before - 2.0 * step) / step).floor() * step;
    let wanted_end = last + options.after + 3.0 * step;
    let end = wanted_end.min(options.now);
    if wanted_end > options.now {
        notes.push(format!(
            "the after window is not over yet: {:.0}s of it are still to come",
            wanted_end - 3.0 * step - options.now
        ));
    }
    SampleRange {
        start,
        end,
        // The last interval `ChangeWindow::place` puts in the after window.
        after_end: last + step + options.after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::stats::Verdict;

    fn series(node: &str, points: &[(f64, f64)]) -> Series {
        Series {
            labels: BTreeMap::from([(NODE_LABEL.to_string(), node.to_string())]),
            points: points.to_vec(),
        }
    }

    #[test]
    fn change_times_from_counters_and_values() {
        let changes = [
            // Exported from the first change: appears at 30.
            series("a", &[(30.0, 1.0), (40.0, 1.0), (50.0, 2.0)]),
            // There since the range's start: earlier changes, none now.
            series("b", &[(0.0, 3.0), (10.0, 3.0)]),
        ];
        let values = [series("c", &[(0.0, 128.0), (10.0, 128.0), (20.0, 4096.0)])];
        let times = change_times(&changes, &values, 0.0);
        assert_eq!(times["a"], vec![30.0, 50.0]);
        assert!(!times.contains_key("b"));
        assert_eq!(times["c"], vec![20.0]);
    }

    #[test]
    fn windows_leave_the_change_out() {
        let w = ChangeWindow {
            lo: 100.0,
            hi: 120.0,
        };
        // Before: (lo - 30, lo].
        assert_eq!(w.place(100.0, 30.0, 30.0, 10.0), Some((false, 0)));
        assert_eq!(w.place(80.0, 30.0, 30.0, 10.0), Some((false, 2)));
        assert_eq!(w.place(70.0, 30.0, 30.0, 10.0), None);
        // The change and one step after it: nothing.
        for t in [110.0, 120.0, 130.0] {
            assert_eq!(w.place(t, 30.0, 30.0, 10.0), None, "{t}");
        }
        // After: from hi + 2 steps to hi + step + after.
        assert_eq!(w.place(140.0, 30.0, 30.0, 10.0), Some((true, 2)));
        assert_eq!(w.place(160.0, 30.0, 30.0, 10.0), Some((true, 4)));
        assert_eq!(w.place(170.0, 30.0, 30.0, 10.0), None);
    }

    /// Windows of 100 s every 10 s around a change at 1000: the after window's last
    /// interval ends at 1110, the range at 1130.
    #[test]
    fn a_store_behind_the_after_window_is_named() {
        let options = Options {
            knob: None,
            at: Some(1000.0),
            canary: Matchers::default(),
            control: Matchers::default(),
            before: 100.0,
            after: 100.0,
            interval: 10.0,
            since: 3600.0,
            signals: vec![],
            by: By::Pod,
            now: 5000.0,
        };
        let windows = BTreeMap::from([(
            "a".to_string(),
            ChangeWindow {
                lo: 1000.0,
                hi: 1000.0,
            },
        )]);
        let mut notes = Vec::new();
        let range = sample_range(&windows, &options, &mut notes);
        assert_eq!(
            range,
            SampleRange {
                start: 880.0,
                end: 1130.0,
                after_end: 1110.0
            }
        );
        assert!(notes.is_empty(), "{notes:?}");
        // Caught up: a sample after the grid point before the last interval (scraped
        // within the last step); no answer at all is no data, not a lag.
        for newest in [Some(1110.0), Some(1102.0), Some(1130.0), None] {
            assert_eq!(range.behind(newest, 10.0), None, "{newest:?}");
        }
        // VictoriaMetrics' default 30 s held back: three intervals short.
        assert_eq!(
            range.behind(Some(1080.0), 10.0).unwrap(),
            "the store has not caught up: its newest sample is at 1080, 30s before the \
             after window's last interval at 1110; wait and run again (VictoriaMetrics \
             shows a sample in ranges only 30s after its time, its -search.latencyOffset)"
        );
        assert!(range.behind(Some(1100.0), 10.0).is_some());
        // The after window still running: the range ends now, 1055, and a store is
        // behind when it lacks the last grid point before it.
        let mut notes = Vec::new();
        let early = sample_range(
            &windows,
            &Options {
                now: 1055.0,
                ..options
            },
            &mut notes,
        );
        assert_eq!(early.end, 1055.0);
        assert_eq!(
            notes,
            ["the after window is not over yet: 45s of it are still to come"]
        );
        assert_eq!(early.behind(Some(1050.0), 10.0), None);
        assert!(
            early
                .behind(Some(1020.0), 10.0)
                .unwrap()
                .contains("30s before")
        );
    }

    fn instance(node: &str, pod: &str) -> Instance {
        Instance {
            node: node.into(),
            namespace: "shop".into(),
            pod: pod.into(),
            container: "server".into(),
        }
    }

    /// Samples every 10 s from 0 to 400 s; `value(t)` gives each.
    fn samples_of(value: impl Fn(f64) -> f64) -> BTreeMap<i64, Sample> {
        (0..=40)
            .map(|i| {
                let t = f64::from(i) * 10.0;
                (
                    (t * 1000.0) as i64,
                    Sample {
                        value: value(t),
                        load: Some(100.0),
                    },
                )
            })
            .collect()
    }

    /// A CPU-throttling fix on canary node `a` at 200 s, judged by pod: an `api` pod on
    /// each of `a`, `b` and `c`, and a `lonely` workload only `a` runs.
    fn judged_by_pod_across_nodes() -> (FleetVerdict, Vec<FleetVerdict>) {
        let options = Options {
            knob: None,
            at: Some(200.0),
            canary: Matchers::default(),
            control: Matchers::default(),
            before: 100.0,
            after: 100.0,
            interval: 10.0,
            since: 3600.0,
            signals: vec![],
            by: By::Pod,
            now: 1000.0,
        };
        let wobble = |t: f64| 0.02 * ((t / 10.0) as i64 % 3) as f64;
        let samples: Samples = [
            (
                instance("a", "api-7f9c4b6d8-xk2pq"),
                samples_of(|t| if t > 200.0 { 0.2 } else { 0.8 } + wobble(t)),
            ),
            (
                instance("b", "api-7f9c4b6d8-bbbbb"),
                samples_of(|t| 0.8 + wobble(t + 10.0)),
            ),
            (
                instance("c", "api-7f9c4b6d8-ccccc"),
                samples_of(|t| 0.8 + wobble(t + 20.0)),
            ),
            // A workload only the canary runs: no control for it.
            (instance("a", "lonely"), samples_of(|_| 0.5)),
        ]
        .into_iter()
        .collect();
        let canary = [CanaryNode {
            node: "a".into(),
            changed_at: 200.0,
            changes: None,
        }];
        let control = ["b".to_string(), "c".to_string()];
        let windows = BTreeMap::from([(
            "a".to_string(),
            ChangeWindow {
                lo: 200.0,
                hi: 200.0,
            },
        )]);
        judge_signal(
            Measure::CpuThrottledRatio,
            &samples,
            &canary,
            &control,
            &windows,
            &options,
        )
    }

    #[test]
    fn pods_are_matched_by_workload_across_nodes() {
        let (overall, _) = judged_by_pod_across_nodes();
        assert_eq!(overall.did.verdict, Verdict::Improved, "{overall:?}");
        assert!((overall.did.effect + 0.6).abs() < 0.05, "{overall:?}");
        assert_eq!(overall.canary_pods, 1);
        assert_eq!(overall.control_pods, 2);
        assert_eq!(overall.control_nodes, ["b", "c"]);
        assert_eq!(overall.control.shift.verdict, Verdict::NoSignificantChange);
        assert!(
            overall.notes.iter().any(|n| n.contains("1 canary pod(s)")),
            "{:?}",
            overall.notes
        );
        // 10 before (110..=200), 10 after (220..=310).
        assert_eq!(overall.samples.difference.before.len(), 10);
        assert_eq!(overall.samples.difference.after.len(), 10);
    }

    #[test]
    fn each_canary_pod_is_judged_against_its_workload() {
        let (_, verdicts) = judged_by_pod_across_nodes();
        assert_eq!(verdicts.len(), 2);
        let api = verdicts
            .iter()
            .find(|v| v.pod.as_deref() == Some("api-7f9c4b6d8-xk2pq"))
            .unwrap();
        assert_eq!(api.workload.as_deref(), Some("api"));
        assert_eq!(api.group, "shop/api-7f9c4b6d8-xk2pq/server@a");
        assert_eq!(api.did.verdict, Verdict::Improved);
        let lonely = verdicts
            .iter()
            .find(|v| v.pod.as_deref() == Some("lonely"))
            .unwrap();
        assert_eq!(lonely.did.verdict, Verdict::InsufficientData);
        assert!(
            lonely
                .notes
                .iter()
                .any(|n| n.contains("no pod of the same workload"))
        );
    }

    #[test]
    fn a_ratio_without_its_exported_load_says_so() {
        let retransmitted = vec![series("a", &[(0.0, 1.0)])];
        let source = Measure::RetransmitRatio.declared().exported;
        let answers = BTreeMap::from([("part", retransmitted.clone()), ("whole", vec![])]);
        let note = missing_load(Measure::RetransmitRatio, source, &answers).unwrap();
        assert!(note.contains("tuneprobe_tcp_sent_segments_total"), "{note}");
        let answers = BTreeMap::from([("part", retransmitted.clone()), ("whole", retransmitted)]);
        assert_eq!(
            missing_load(Measure::RetransmitRatio, source, &answers),
            None
        );
        // Nothing at all is no data, not an old agent.
        let answers = BTreeMap::from([("part", vec![]), ("whole", vec![])]);
        assert_eq!(
            missing_load(Measure::RetransmitRatio, source, &answers),
            None
        );
    }

    #[test]
    fn signals_come_from_the_knob_table_unless_named() {
        assert_eq!(
            signals(Some("cpu.max"), &[]).unwrap(),
            [
                Measure::CpuThrottledRatio,
                Measure::CpuThrottledMsPerPeriod,
                Measure::CpuStallP99Ms
            ]
        );
        assert_eq!(
            signals(Some("cpu.max"), &[Measure::Drops]).unwrap(),
            [Measure::Drops]
        );
        // Knobs judged on nothing (send buffers move nothing tuneprobe measures).
        for knob in ["vm.swappiness", "net.ipv4.tcp_wmem", "net.core.wmem_max"] {
            assert!(
                matches!(signals(Some(knob), &[]), Err(FleetError::NoSignal(..))),
                "{knob}"
            );
        }
        // The network knobs are judged by their own ratios, with the loads the agents
        // export: the same measures as `verify` (issue "Verdicts a user can trust":
        // receive buffers on receive-queue drops, drop-judged knobs on their own
        // reasons per packet, no longer on retransmits or on every drop).
        for (knob, judged) in [
            (
                "net.ipv4.tcp_rmem",
                &[Measure::TcpRcvqDropRatio, Measure::TcpPruneRatio][..],
            ),
            (
                "net.core.rmem_max",
                &[Measure::RcvbufDropRatio, Measure::TcpRcvqDropRatio],
            ),
            ("net.core.rmem_default", &[Measure::RcvbufDropRatio]),
            ("net.core.netdev_max_backlog", &[Measure::BacklogDropRatio]),
            ("net.ipv4.ip_forward", &[Measure::ForwardDropRatio]),
            (
                "net.ipv4.tcp_congestion_control",
                &[Measure::RetransmitRatio, Measure::SrttMs],
            ),
            ("net.core.somaxconn", &[Measure::ListenOverflowRatio]),
            (
                "net.ipv4.tcp_max_syn_backlog",
                &[Measure::ListenOverflowRatio],
            ),
            ("net.ipv4.tcp_syncookies", &[Measure::ListenOverflowRatio]),
            (
                "net.ipv4.ip_local_port_range",
                &[Measure::ConnectFailureRatio],
            ),
            ("net.ipv4.tcp_tw_reuse", &[Measure::ConnectFailureRatio]),
            ("net.ipv4.tcp_fin_timeout", &[Measure::ConnectFailureRatio]),
            ("net.ipv4.tcp_keepalive_time", &[Measure::ResetRatio]),
        ] {
            assert_eq!(signals(Some(knob), &[]).unwrap(), judged, "{knob}");
        }
    }
}
