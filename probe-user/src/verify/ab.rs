//! A/B between pods (`verify --ab`): two groups of workloads, run side by side with
//! different values of a per-pod knob (a namespaced sysctl, a CPU limit), judged
//! interval by interval. Each interval gives each group one pooled value of a measure,
//! and the verdict tests the differences treated minus control against zero, so a load
//! change that hits both groups at once cannot fake an effect the way it can between a
//! before and an after window.
//!
//! Pooling: each member's sample is [`Measure::sample`] of its own counters (a ratio and
//! its load, a latency and its request count); a group's value is the load-weighted mean
//! of its members' samples, which for a ratio is the group's summed count over its
//! summed load and for a mean latency the mean over all the group's requests (a p99 is
//! the load-weighted mean of the members' p99s, not the p99 of the pooled requests).
//! Measures without a load (`drops`) take the plain mean over members.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
};

use serde::{Serialize, Serializer};

use super::{
    judge::interval_samples,
    stats::{self, Comparison},
};
use crate::{
    report::{Snapshot, Workload},
    signals::measure::Measure,
    tuning::{self, Inventory},
    workloads::{
        attribution::is_within,
        identity::{Identity, workload_name},
    },
};

/// Why an A/B cannot be judged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AbError {
    #[error("selector {selector:?}: {reason}")]
    Selector { selector: String, reason: String },
    #[error("the {group} selector {selector:?} matched no workload")]
    NoWorkload {
        group: &'static str,
        selector: String,
    },
    #[error(
        "{workload} matches both the treated selector {treated:?} and the control selector \
         {control:?}: the groups must not share a workload"
    )]
    Overlap {
        workload: String,
        treated: String,
        control: String,
    },
    #[error(
        "the groups differ in no knob of tuneprobe's table ({compared}): nothing says what \
         to judge; give --signal to compare them anyway"
    )]
    NoDifferingKnob { compared: String },
    #[error(
        "the groups differ in {knobs}, which tuneprobe judges on no signal; choose one with \
         --signal"
    )]
    NoSignal { knobs: String },
}

/// The keys a selector term may have.
const KEYS: &str = "namespace, pod, workload, label, uid, cgroup";

/// One `key=value` term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Namespace(String),
    /// The pod name; `prefix` for a trailing `*`.
    Pod {
        name: String,
        prefix: bool,
    },
    /// The pod's workload: its name without the suffix its controller added
    /// ([`workload_name`], as `fleet verify` names workloads).
    Workload(String),
    Label(String, String),
    Uid(String),
    /// A cgroup path: the workloads at or below it.
    Cgroup(String),
}

/// `key=value` terms, comma-separated, all of which a workload must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selector {
    text: String,
    terms: Vec<Term>,
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Selector {
    type Err = AbError;

    fn from_str(text: &str) -> Result<Self, AbError> {
        let fail = |reason: String| AbError::Selector {
            selector: text.to_string(),
            reason,
        };
        let terms = text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|term| Term::parse(term).map_err(&fail))
            .collect::<Result<Vec<_>, _>>()?;
        if terms.is_empty() {
            return Err(fail(format!("no term; give key=value terms ({KEYS})")));
        }
        Ok(Self {
            text: text.to_string(),
            terms,
        })
    }
}

impl Term {
    fn parse(term: &str) -> Result<Self, String> {
        let (key, value) = term
            .split_once('=')
            .ok_or_else(|| format!("{term:?} is not key=value ({KEYS})"))?;
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() {
            return Err(format!("{key}= needs a value"));
        }
        Ok(match key {
            "namespace" => Self::Namespace(value.into()),
            "pod" => match value.strip_suffix('*') {
                Some(prefix) => Self::Pod {
                    name: prefix.into(),
                    prefix: true,
                },
                None => Self::Pod {
                    name: value.into(),
                    prefix: false,
                },
            },
            "workload" => Self::Workload(value.into()),
            "label" => match value.split_once('=') {
                Some((k, v)) if !k.is_empty() => Self::Label(k.into(), v.into()),
                _ => return Err(format!("label= takes KEY=VALUE, not {value:?}")),
            },
            "uid" => Self::Uid(value.into()),
            "cgroup" if value.starts_with('/') => match value.trim_end_matches('/') {
                "" => Self::Cgroup("/".into()),
                path => Self::Cgroup(path.into()),
            },
            "cgroup" => return Err(format!("cgroup= takes a path from /, not {value:?}")),
            other => return Err(format!("unknown key {other:?}; one of {KEYS}")),
        })
    }

    fn matches(&self, w: &Workload) -> bool {
        let id = &w.identity;
        match self {
            Self::Namespace(ns) => id.namespace.as_ref() == Some(ns),
            Self::Pod { name, prefix } => id
                .pod
                .as_ref()
                .is_some_and(|pod| pod == name || (*prefix && pod.starts_with(name.as_str()))),
            Self::Workload(name) => id
                .pod
                .as_ref()
                .is_some_and(|pod| workload_name(pod) == name),
            Self::Label(key, value) => w.pod_labels.get(key) == Some(value),
            Self::Uid(uid) => id.pod_uid.as_ref() == Some(uid),
            Self::Cgroup(prefix) => id
                .cgroup_path
                .as_deref()
                .is_some_and(|path| is_within(path, prefix)),
        }
    }
}

impl Selector {
    pub(crate) fn matches(&self, workload: &Workload) -> bool {
        self.terms.iter().all(|t| t.matches(workload))
    }
}

/// One group: its selector and the workloads it matched, by cgroup path.
#[derive(Debug, Clone)]
struct Group {
    selector: Selector,
    members: BTreeMap<String, Identity>,
}

impl Group {
    /// The members that count: a member whose cgroup holds another member's is left
    /// out (a pod's cgroup next to its containers: its CPU counts include theirs).
    fn counted(&self) -> BTreeMap<&str, &Identity> {
        self.members
            .iter()
            .filter(|(path, _)| {
                !self
                    .members
                    .keys()
                    .any(|other| other != *path && is_within(other, path))
            })
            .map(|(path, id)| (path.as_str(), id))
            .collect()
    }

    /// Every knob the inventory has for the counted members: the sysctls of their
    /// network namespaces (by inode, or by the pod cgroup that owns the namespace) and
    /// the settings of their cgroups. Members that disagree give `mixed: a | b`.
    fn knobs(&self, inventory: &Inventory) -> BTreeMap<String, String> {
        let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (path, id) in self.counted() {
            let netns = inventory.netns.iter().filter(|ns| {
                id.netns == Some(ns.netns)
                    || ns
                        .owner
                        .as_deref()
                        .is_some_and(|o| o != "/" && is_within(path, o))
            });
            let cgroups = inventory.cgroups.iter().filter(|c| c.cgroup_path == path);
            let settings = netns
                .flat_map(|ns| &ns.settings)
                .chain(cgroups.flat_map(|c| &c.settings));
            for s in settings {
                values
                    .entry(s.knob.clone())
                    .or_default()
                    .insert(s.value.clone());
            }
        }
        values
            .into_iter()
            .map(|(knob, values)| {
                let value = if values.len() == 1 {
                    values.into_iter().next().unwrap_or_default()
                } else {
                    let all: Vec<String> = values.into_iter().collect();
                    format!("mixed: {}", all.join(" | "))
                };
                (knob, value)
            })
            .collect()
    }
}

/// One interval's samples of every member of either group: (path, measure) -> (value,
/// load).
type IntervalSamples = BTreeMap<(String, Measure), (f64, Option<f64>)>;

/// The two groups and their per-interval samples.
#[derive(Debug, Clone)]
pub(crate) struct Groups {
    treated: Group,
    control: Group,
    intervals: Vec<IntervalSamples>,
}

impl Groups {
    pub(crate) fn new(treated: Selector, control: Selector) -> Self {
        let group = |selector| Group {
            selector,
            members: BTreeMap::new(),
        };
        Self {
            treated: group(treated),
            control: group(control),
            intervals: Vec::new(),
        }
    }

    /// Adds the interval between two consecutive cumulative snapshots: the workloads
    /// each selector matches in `current` join its group.
    pub(crate) fn add(&mut self, previous: &Snapshot, current: &Snapshot) -> Result<(), AbError> {
        for w in &current.workloads {
            let Some(path) = w.identity.cgroup_path.clone() else {
                continue;
            };
            match (
                self.treated.selector.matches(w),
                self.control.selector.matches(w),
            ) {
                (true, true) => {
                    return Err(AbError::Overlap {
                        workload: w.identity.display_name(),
                        treated: self.treated.selector.to_string(),
                        control: self.control.selector.to_string(),
                    });
                }
                (true, false) => self.treated.members.insert(path, w.identity.clone()),
                (false, true) => self.control.members.insert(path, w.identity.clone()),
                (false, false) => None,
            };
        }
        let samples = interval_samples(previous, current, 0.0)
            .into_iter()
            .filter(|(key, _)| {
                key.device.is_none()
                    && (self.treated.members.contains_key(&key.path)
                        || self.control.members.contains_key(&key.path))
            })
            .map(|(key, s)| ((key.path, key.signal), (s.value, s.load)))
            .collect();
        self.intervals.push(samples);
        Ok(())
    }

    /// How many workloads each group has matched so far.
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.treated.members.len(), self.control.members.len())
    }

    /// What to judge: the knobs that differ between the groups decide the measures,
    /// unless `signals` are given.
    pub(crate) fn plan(&self, inventory: &Inventory, signals: &[Measure]) -> Result<Plan, AbError> {
        for (name, group) in [("treated", &self.treated), ("control", &self.control)] {
            if group.members.is_empty() {
                return Err(AbError::NoWorkload {
                    group: name,
                    selector: group.selector.to_string(),
                });
            }
        }
        let treated = self.treated.knobs(inventory);
        let control = self.control.knobs(inventory);
        let differing: Vec<String> = treated
            .iter()
            .filter(|(knob, value)| control.get(*knob).is_some_and(|c| c != *value))
            .map(|(knob, _)| knob.clone())
            .collect();
        let mut notes = one_sided_notes(&treated, &control);
        let measures = measures(&treated, &control, &differing, signals, &mut notes)?;
        Ok(Plan {
            treated,
            control,
            differing,
            measures,
            notes,
        })
    }

    /// The verdicts of the plan's measures over every interval so far. `earlier`, the
    /// inventory when sampling began, tells whether a knob changed meanwhile.
    pub(crate) fn judge(&self, plan: Plan, earlier: Option<&Inventory>) -> AbReport {
        let mut notes = plan.notes;
        if let Some(earlier) = earlier {
            for (name, group, now) in [
                ("treated", &self.treated, &plan.treated),
                ("control", &self.control, &plan.control),
            ] {
                for (knob, then) in group.knobs(earlier) {
                    if let Some(now) = now.get(&knob).filter(|now| **now != then) {
                        notes.push(format!(
                            "{knob} changed in the {name} group while it was measured \
                             ({then} -> {now}): the verdict mixes both values"
                        ));
                    }
                }
            }
        }
        let mut verdicts: Vec<AbVerdict> = plan.measures.iter().map(|m| self.verdict(*m)).collect();
        if plan.differing.len() > 1 {
            let note = format!(
                "{} knobs differ between the groups ({}): the verdict cannot tell which of \
                 them did it",
                plan.differing.len(),
                plan.differing.join(", ")
            );
            for v in &mut verdicts {
                v.notes.push(note.clone());
            }
        }
        let report_group = |group: &Group, knobs| GroupReport {
            selector: group.selector.clone(),
            workloads: group.counted().into_values().cloned().collect(),
            knobs,
        };
        AbReport {
            treated: report_group(&self.treated, plan.treated),
            control: report_group(&self.control, plan.control),
            differing_knobs: plan.differing,
            intervals: self.intervals.len(),
            notes,
            verdicts,
        }
    }

    /// One measure: each group's pooled value per interval, the differences where both
    /// have one, and the paired comparison.
    fn verdict(&self, measure: Measure) -> AbVerdict {
        let (treated, control) = (self.treated.counted(), self.control.counted());
        let (mut values_t, mut values_c, mut differences) = (Vec::new(), Vec::new(), Vec::new());
        let (mut load_t, mut load_c) = (0.0, 0.0);
        for interval in &self.intervals {
            let (Some((t, lt)), Some((c, lc))) = (
                pooled(interval, &treated, measure),
                pooled(interval, &control, measure),
            ) else {
                continue;
            };
            values_t.push(t);
            values_c.push(c);
            differences.push(t - c);
            load_t += lt / treated.len() as f64;
            load_c += lc / control.len() as f64;
        }
        let comparison = stats::compare_paired(
            &differences,
            stats::median(&values_c),
            measure.lower_is_better(),
        );
        let load_ratio = (measure.load().is_some() && load_c > 0.0).then(|| load_t / load_c);
        let mut notes = Vec::new();
        if let Some(ratio) = load_ratio.filter(|r| stats::load_changed(*r)) {
            notes.push(format!(
                "the treated group's workloads carried x{ratio:.2} the load ({}) of the \
                 control group's: the verdict may reflect the load, not the knob",
                measure.load().unwrap_or("load")
            ));
        }
        let median = |v: &[f64]| (!v.is_empty()).then(|| stats::median(v));
        AbVerdict {
            signal: measure,
            load: measure.load(),
            treated: median(&values_t),
            control: median(&values_c),
            comparison,
            intervals: differences.len(),
            load_ratio,
            notes,
            samples: GroupSamples {
                treated: values_t,
                control: values_c,
            },
        }
    }
}

/// A group's value of `measure` in one interval and the load under it: the load-weighted
/// mean of its members' samples (the plain mean for a measure without a load); `None`
/// without a sample or without load.
fn pooled(
    interval: &IntervalSamples,
    members: &BTreeMap<&str, &Identity>,
    measure: Measure,
) -> Option<(f64, f64)> {
    let samples: Vec<(f64, Option<f64>)> = members
        .keys()
        .filter_map(|path| interval.get(&(path.to_string(), measure)).copied())
        .collect();
    if samples.is_empty() {
        return None;
    }
    if samples.iter().all(|(_, load)| load.is_some()) {
        let load: f64 = samples.iter().filter_map(|(_, l)| *l).sum();
        let weighted: f64 = samples.iter().map(|(v, l)| v * l.unwrap_or(0.0)).sum();
        (load > 0.0).then(|| (weighted / load, load))
    } else {
        let n = samples.len() as f64;
        Some((samples.iter().map(|(v, _)| v).sum::<f64>() / n, n))
    }
}

/// Knobs known for one group only (its namespaces could not be read, say) are not
/// compared; say so.
fn one_sided_notes(
    treated: &BTreeMap<String, String>,
    control: &BTreeMap<String, String>,
) -> Vec<String> {
    let only = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
        a.keys()
            .filter(|k| !b.contains_key(*k))
            .cloned()
            .collect::<Vec<_>>()
    };
    [
        ("treated", only(treated, control)),
        ("control", only(control, treated)),
    ]
    .into_iter()
    .filter(|(_, knobs)| !knobs.is_empty())
    .map(|(group, knobs)| {
        format!(
            "known for the {group} group only, not compared: {}",
            knobs.join(", ")
        )
    })
    .collect()
}

/// The measures the differing knobs are judged on, or `signals`.
fn measures(
    treated: &BTreeMap<String, String>,
    control: &BTreeMap<String, String>,
    differing: &[String],
    signals: &[Measure],
    notes: &mut Vec<String>,
) -> Result<Vec<Measure>, AbError> {
    if differing.is_empty() {
        if signals.is_empty() {
            let compared: Vec<String> = treated
                .iter()
                .filter(|(k, _)| control.contains_key(*k))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            return Err(AbError::NoDifferingKnob {
                compared: if compared.is_empty() {
                    "none known for both".to_string()
                } else {
                    compared.join(", ")
                },
            });
        }
        notes.push(
            "the groups differ in no knob of tuneprobe's table: judged on --signal, any \
             difference comes from something else"
                .to_string(),
        );
    }
    if !signals.is_empty() {
        return Ok(signals.to_vec());
    }
    let mut out: Vec<Measure> = Vec::new();
    for m in differing.iter().flat_map(|k| tuning::measures_for(k)) {
        if !out.contains(m) {
            out.push(*m);
        }
    }
    if out.is_empty() {
        return Err(AbError::NoSignal {
            knobs: differing.join(", "),
        });
    }
    Ok(out)
}

/// What an A/B judges, from the inventory.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    treated: BTreeMap<String, String>,
    control: BTreeMap<String, String>,
    differing: Vec<String>,
    measures: Vec<Measure>,
    notes: Vec<String>,
}

/// One group in the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GroupReport {
    pub selector: Selector,
    /// The workloads that count (their identities, as in `snapshot`).
    pub workloads: Vec<Identity>,
    /// Every knob the inventory has for them.
    pub knobs: BTreeMap<String, String>,
}

/// The per-interval values of both groups behind a verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct GroupSamples {
    pub treated: Vec<f64>,
    pub control: Vec<f64>,
}

/// The verdict on one measure.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AbVerdict {
    pub signal: Measure,
    /// What the measure is normalised by.
    pub load: Option<&'static str>,
    /// Median of the group's per-interval values.
    pub treated: Option<f64>,
    pub control: Option<f64>,
    /// `effect` is of treated minus control.
    #[serde(flatten)]
    pub comparison: Comparison,
    /// The intervals in which both groups had a value.
    pub intervals: usize,
    /// The treated group's mean load per workload over the control group's.
    pub load_ratio: Option<f64>,
    pub notes: Vec<String>,
    pub samples: GroupSamples,
}

/// `verify --ab`'s report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AbReport {
    pub treated: GroupReport,
    pub control: GroupReport,
    pub differing_knobs: Vec<String>,
    /// Intervals sampled.
    pub intervals: usize,
    pub notes: Vec<String>,
    pub verdicts: Vec<AbVerdict>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        signals::{
            Sections,
            tcp_connections::{ConnectFailures, ConnectionReport},
        },
        tuning::{CgroupSettings, NetnsSettings, Setting},
        verify::{matrix::Rng, stats::Verdict},
    };

    fn selector(text: &str) -> Selector {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn pod(namespace: &str, name: &str, uid: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            identity: Identity {
                cgroup_path: Some(format!("/kubepods/pod{uid}/c")),
                namespace: Some(namespace.into()),
                pod: Some(name.into()),
                pod_uid: Some(uid.into()),
                ..Identity::default()
            },
            pod_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Workload::default()
        }
    }

    #[test]
    fn selectors_parse_every_key_and_refuse_what_is_not_one() {
        assert_eq!(
            selector(
                "namespace=shop, pod=api-*,label=app=api,uid=u1,cgroup=/kubepods/,workload=api"
            )
            .terms,
            [
                Term::Namespace("shop".into()),
                Term::Pod {
                    name: "api-".into(),
                    prefix: true
                },
                Term::Label("app".into(), "api".into()),
                Term::Uid("u1".into()),
                Term::Cgroup("/kubepods".into()),
                Term::Workload("api".into()),
            ]
        );
        assert_eq!(selector("cgroup=/").terms, [Term::Cgroup("/".into())]);
        assert_eq!(selector("pod=api").to_string(), "pod=api");
        let error = |text: &str| text.parse::<Selector>().unwrap_err().to_string();
        assert_eq!(
            error(""),
            "selector \"\": no term; give key=value terms (namespace, pod, workload, label, uid, cgroup)"
        );
        assert_eq!(
            error("node=a"),
            "selector \"node=a\": unknown key \"node\"; one of namespace, pod, workload, label, uid, cgroup"
        );
        assert_eq!(
            error("pod"),
            "selector \"pod\": \"pod\" is not key=value (namespace, pod, workload, label, uid, cgroup)"
        );
        assert_eq!(error("pod="), "selector \"pod=\": pod= needs a value");
        assert_eq!(
            error("label=app"),
            "selector \"label=app\": label= takes KEY=VALUE, not \"app\""
        );
        assert_eq!(
            error("cgroup=kubepods"),
            "selector \"cgroup=kubepods\": cgroup= takes a path from /, not \"kubepods\""
        );
    }

    #[test]
    fn selectors_match_all_their_terms() {
        let api = pod(
            "shop",
            "api-7f9c4b8d5-x2kq9",
            "u1",
            &[("app", "api"), ("pod-template-hash", "7f9c4b8d5")],
        );
        let db = pod(
            "shop",
            "db-0",
            "u2",
            &[("statefulset.kubernetes.io/pod-name", "db-0")],
        );
        let matches = |text: &str| -> Vec<bool> {
            [&api, &db]
                .iter()
                .map(|w| selector(text).matches(w))
                .collect()
        };
        assert_eq!(matches("namespace=shop"), [true, true]);
        assert_eq!(matches("namespace=shop,label=app=api"), [true, false]);
        assert_eq!(matches("pod=api-*"), [true, false]);
        assert_eq!(matches("pod=api-"), [false, false]);
        assert_eq!(matches("pod=db-0"), [false, true]);
        assert_eq!(matches("workload=api"), [true, false]);
        assert_eq!(matches("workload=db"), [false, true]);
        assert_eq!(matches("uid=u2"), [false, true]);
        assert_eq!(matches("cgroup=/kubepods/podu1"), [true, false]);
        // A path prefix is a whole component: /kubepods/podu doesn't hold podu1.
        assert_eq!(matches("cgroup=/kubepods/podu"), [false, false]);
        assert_eq!(matches("namespace=other,uid=u1"), [false, false]);
        // Without pod metadata only uid= and cgroup= can match.
        let bare = Workload {
            identity: Identity {
                cgroup_path: Some("/lab/c".into()),
                ..Identity::default()
            },
            ..Workload::default()
        };
        assert!(selector("cgroup=/lab").matches(&bare));
        assert!(!selector("pod=*").matches(&bare));
    }

    /// A workload in `/lab/<name>/c` (its pod cgroup `/lab/<name>`) with `attempts` and
    /// `failed` connects so far.
    fn connector(name: &str, netns: u32, attempts: u64, failed: u64) -> Workload {
        Workload {
            identity: Identity {
                cgroup_path: Some(format!("/lab/{name}/c")),
                netns: Some(netns),
                ..Identity::default()
            },
            signals: Sections {
                connections: Some(Box::new(ConnectionReport {
                    connect_attempts: attempts,
                    failed: ConnectFailures {
                        port_exhaustion: failed,
                        ..ConnectFailures::default()
                    },
                    ..ConnectionReport::default()
                })),
                ..Sections::default()
            },
            ..Workload::default()
        }
    }

    fn netns(inode: u32, owner: &str, range: &str) -> NetnsSettings {
        NetnsSettings {
            netns: inode,
            owner: Some(owner.into()),
            settings: vec![
                setting("net.ipv4.ip_local_port_range", range),
                setting("net.core.somaxconn", "4096"),
            ],
            error: None,
        }
    }

    fn setting(knob: &str, value: &str) -> Setting {
        Setting {
            knob: knob.into(),
            value: value.into(),
            recommended: None,
            deviates: None,
            signal: String::new(),
        }
    }

    /// `intervals` seconds of `names` (treated `t*`, control `c*`) connecting with
    /// Poisson-like counts: `attempts` per workload per interval, `failures(name)` of
    /// them failing on average.
    fn simulate(
        seed: u64,
        intervals: usize,
        attempts: f64,
        failures: impl Fn(&str) -> f64,
    ) -> Groups {
        let names = ["t1", "t2", "t3", "c1", "c2", "c3"];
        let mut rng = Rng(seed);
        let mut groups = Groups::new(selector("cgroup=/lab/t"), selector("cgroup=/lab/c"));
        let mut totals = [(0u64, 0u64); 6];
        let snapshot = |totals: &[(u64, u64); 6]| {
            Snapshot::of_workloads(
                names
                    .iter()
                    .zip(totals)
                    .map(|(name, (a, f))| connector(&format!("{}/{name}", &name[..1]), 1, *a, *f))
                    .collect(),
            )
        };
        let mut previous = snapshot(&totals);
        for _ in 0..intervals {
            for (total, name) in totals.iter_mut().zip(names) {
                let a = rng.count(attempts);
                total.0 += a;
                total.1 += rng.count(failures(name)).min(a);
            }
            let current = snapshot(&totals);
            groups.add(&previous, &current).unwrap();
            previous = current;
        }
        groups
    }

    fn connect_verdict(groups: &Groups) -> AbVerdict {
        groups.verdict(Measure::ConnectFailureRatio)
    }

    /// Identical groups (three workloads each, 50 connects and 5 failures per interval on
    /// average), 60 intervals: 20 seeds make at most one claim, 200 seeds at most
    /// ALPHA * 200 + 5 = 15. These seeds make 1 and 10: the test's nominal 5%.
    #[test]
    fn identical_groups_rarely_differ() {
        let claims = |seeds: std::ops::Range<u64>| {
            seeds
                .filter(|seed| {
                    let v = connect_verdict(&simulate(*seed, 60, 50.0, |_| 5.0));
                    assert_eq!(v.intervals, 60);
                    v.comparison.verdict != Verdict::NoSignificantChange
                })
                .count()
        };
        let of_20 = claims(0..20);
        assert!(of_20 <= 1, "{of_20} of 20");
        let of_200 = claims(1000..1200);
        assert!(
            of_200 as f64 <= stats::ALPHA * 200.0 + 5.0,
            "{of_200} of 200"
        );
        assert_eq!(
            (of_20, of_200),
            (1, 10),
            "the figures docs/verify.md states"
        );
    }

    /// Half the failures in the treated group: improved for every seed.
    #[test]
    fn a_true_effect_is_found_every_time() {
        for seed in 0..20 {
            let groups = simulate(seed, 60, 50.0, |name| {
                if name.starts_with('t') { 2.5 } else { 5.0 }
            });
            let v = connect_verdict(&groups);
            assert_eq!(
                v.comparison.verdict,
                Verdict::Improved,
                "seed {seed}: {v:?}"
            );
            assert!(
                v.comparison.ci95[0] < -0.05 / 2.0 && v.comparison.ci95[1] < 0.0,
                "{v:?}"
            );
        }
    }

    #[test]
    fn pooling_weighs_each_workload_by_its_load() {
        // Treated: 1 failure in 10 and 9 in 90 (0.1 pooled); control: 0 in 10, 50 in 50
        // (0.8333 pooled; the mean of the ratios would be 0.5).
        let mut groups = Groups::new(selector("cgroup=/lab/t"), selector("cgroup=/lab/c"));
        let before = Snapshot::of_workloads(vec![
            connector("t/a", 1, 0, 0),
            connector("t/b", 1, 0, 0),
            connector("c/a", 2, 0, 0),
            connector("c/b", 2, 0, 0),
        ]);
        let after = Snapshot::of_workloads(vec![
            connector("t/a", 1, 10, 1),
            connector("t/b", 1, 90, 9),
            connector("c/a", 2, 10, 0),
            connector("c/b", 2, 50, 50),
        ]);
        groups.add(&before, &after).unwrap();
        let v = connect_verdict(&groups);
        assert_eq!(v.samples.treated, [0.1]);
        assert!((v.samples.control[0] - 50.0 / 60.0).abs() < 1e-12, "{v:?}");
        // 50 attempts per treated workload, 30 per control one.
        assert_eq!(v.load_ratio, Some(50.0 / 30.0));
        assert_eq!(v.comparison.verdict, Verdict::InsufficientData);
        assert!(
            v.notes[0].contains("x1.67 the load (connect_attempts)"),
            "{:?}",
            v.notes
        );
    }

    fn inventory(treated_range: &str, control_range: &str) -> Inventory {
        Inventory {
            netns: vec![
                netns(1, "/lab/t/a", treated_range),
                netns(2, "/lab/c/a", control_range),
            ],
            ..Inventory::default()
        }
    }

    fn two_pods() -> Groups {
        let mut groups = Groups::new(selector("cgroup=/lab/t"), selector("cgroup=/lab/c"));
        let snapshot = |a: u64, f: u64| {
            Snapshot::of_workloads(vec![connector("t/a", 1, a, 0), connector("c/a", 2, a, f)])
        };
        for i in 0..10 {
            groups
                .add(
                    &snapshot(10 * i, 9 * i),
                    &snapshot(10 * (i + 1), 9 * (i + 1)),
                )
                .unwrap();
        }
        groups
    }

    #[test]
    fn the_knob_that_differs_decides_what_is_judged() {
        let groups = two_pods();
        let plan = groups
            .plan(&inventory("32768 60999", "40000 40009"), &[])
            .unwrap();
        let report = groups.judge(plan, Some(&inventory("32768 60999", "40000 40009")));
        assert_eq!(report.differing_knobs, ["net.ipv4.ip_local_port_range"]);
        assert_eq!(
            report.treated.knobs["net.ipv4.ip_local_port_range"],
            "32768 60999"
        );
        assert_eq!(
            report.control.knobs["net.ipv4.ip_local_port_range"],
            "40000 40009"
        );
        assert_eq!(report.intervals, 10);
        assert!(report.notes.is_empty(), "{:?}", report.notes);
        let [v] = &report.verdicts[..] else {
            panic!("{:?}", report.verdicts)
        };
        assert_eq!(v.signal, Measure::ConnectFailureRatio);
        assert_eq!((v.treated, v.control), (Some(0.0), Some(0.9)));
        assert_eq!(v.comparison.effect, -0.9);
        assert_eq!(v.comparison.verdict, Verdict::Improved);
        assert_eq!(v.intervals, 10);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["treated"]["selector"], "cgroup=/lab/t");
        assert_eq!(json["treated"]["workloads"][0]["cgroup_path"], "/lab/t/a/c");
        assert_eq!(json["verdicts"][0]["verdict"], "improved");
        assert_eq!(json["verdicts"][0]["signal"], "connect_failure_ratio");
    }

    #[test]
    fn groups_that_differ_in_nothing_or_in_several_knobs_say_so() {
        let groups = two_pods();
        let same = inventory("32768 60999", "32768 60999");
        assert_eq!(
            groups.plan(&same, &[]).unwrap_err().to_string(),
            "the groups differ in no knob of tuneprobe's table (net.core.somaxconn=4096, \
             net.ipv4.ip_local_port_range=32768 60999): nothing says what to judge; give \
             --signal to compare them anyway"
        );
        let plan = groups.plan(&same, &[Measure::ConnectFailureRatio]).unwrap();
        let report = groups.judge(plan, None);
        assert!(report.differing_knobs.is_empty());
        assert!(
            report.notes[0].starts_with("the groups differ in no knob"),
            "{:?}",
            report.notes
        );
        assert_eq!(report.verdicts.len(), 1);

        // Two knobs differ: both judged, and no verdict can tell which did it.
        let mut two = inventory("32768 60999", "40000 40009");
        two.netns[1].settings[1].value = "128".into();
        let report = groups.judge(groups.plan(&two, &[]).unwrap(), None);
        assert_eq!(
            report.differing_knobs,
            ["net.core.somaxconn", "net.ipv4.ip_local_port_range"]
        );
        let signals: Vec<Measure> = report.verdicts.iter().map(|v| v.signal).collect();
        assert_eq!(
            signals,
            [Measure::ListenOverflowRatio, Measure::ConnectFailureRatio]
        );
        assert!(
            report.verdicts[1].notes.contains(
                &"2 knobs differ between the groups (net.core.somaxconn, \
                  net.ipv4.ip_local_port_range): the verdict cannot tell which of them did it"
                    .to_string()
            ),
            "{:?}",
            report.verdicts[1].notes
        );
        // A knob that changed while the groups were measured.
        let report = groups.judge(
            groups.plan(&two, &[]).unwrap(),
            Some(&inventory("32768 60999", "40000 40009")),
        );
        assert_eq!(
            report.notes,
            [
                "net.core.somaxconn changed in the control group while it was measured (4096 -> \
              128): the verdict mixes both values"
            ]
        );
    }

    #[test]
    fn a_selector_that_matches_nothing_or_both_is_an_error() {
        let snapshot = Snapshot::of_workloads(vec![connector("t/a", 1, 0, 0)]);
        let mut groups = Groups::new(selector("cgroup=/lab"), selector("cgroup=/lab/t/a"));
        assert_eq!(
            groups.add(&snapshot, &snapshot).unwrap_err().to_string(),
            "/lab/t/a/c matches both the treated selector \"cgroup=/lab\" and the control \
             selector \"cgroup=/lab/t/a\": the groups must not share a workload"
        );
        let mut groups = Groups::new(selector("cgroup=/lab/t"), selector("uid=nobody"));
        groups.add(&snapshot, &snapshot).unwrap();
        assert_eq!(groups.sizes(), (1, 0));
        assert_eq!(
            groups
                .plan(&Inventory::default(), &[])
                .unwrap_err()
                .to_string(),
            "the control selector \"uid=nobody\" matched no workload"
        );
    }

    #[test]
    fn a_pod_cgroup_next_to_its_containers_is_not_counted_twice() {
        let mut groups = Groups::new(selector("cgroup=/lab/t"), selector("cgroup=/lab/c"));
        let mut pod_level = connector("t/a", 1, 0, 0);
        pod_level.identity.cgroup_path = Some("/lab/t/a".into());
        let snapshot = Snapshot::of_workloads(vec![connector("t/a", 1, 0, 0), pod_level]);
        groups.add(&snapshot, &snapshot).unwrap();
        let counted: Vec<&str> = groups.treated.counted().into_keys().collect();
        assert_eq!(counted, ["/lab/t/a/c"]);
        let cpu = Inventory {
            cgroups: vec![CgroupSettings {
                cgroup_path: "/lab/t/a/c".into(),
                settings: vec![setting("cpu.max", "50000 100000")],
            }],
            ..Inventory::default()
        };
        assert_eq!(groups.treated.knobs(&cpu)["cpu.max"], "50000 100000");
    }
}
