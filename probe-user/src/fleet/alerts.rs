//! The alerts of `deploy/prometheus/alerts.yaml` and of the `alerts` component's
//! PrometheusRule (`deploy/components/alerts/`), generated from the declarations:
//!
//! - one per distinct symptom of the knob table's advice rules (`tuning/advice.rs`),
//!   with the rules' threshold and load floor, and the part of their further condition
//!   the exported metrics can tell: the alert fires where `tuneprobe advise` would look;
//! - DNS timeouts per query and the DNS p99 per resolver, on thresholds declared beside
//!   the advice rules;
//! - drops of one reason far above their own recent rate;
//! - a tuning change that `serve` judged regressed;
//! - block requests that failed;
//! - the agent itself: failures at a stage, and workloads folded past
//!   `--max-workloads`.
//!
//! The queries are built as the recording rules' are (`rules.rs`), over a window of
//! their own. `reference.rs` keeps both files and the table of `docs/deployment.md`
//! equal to this, and `tests/tests/alerts.rs` runs every alert through `promtool test
//! rules`.

use std::fmt::Write as _;

use super::rules::{self, BY, Span};
use crate::{
    output::serde_name,
    signals::{
        block_io,
        declaration::{Counter, Exported},
        dns, drops,
        measure::Measure,
        tcp_connections::{CONNECT_FAILURES, PORT_EXHAUSTION},
    },
    tuning::{self, Condition, KNOBS, Rule, Threshold},
    verify::{VERDICT_FAMILY, stats::Verdict},
};

/// The window the alerts measure over: ten scrapes at 30 s, so that one missed scrape
/// does not empty it (a minute, the recording rules' interval, holds two).
pub const WINDOW: &str = "5m";
/// How long a level must hold before its alert fires.
pub const HOLD: &str = "5m";
/// A spike: drops of one reason at this many times their rate over the baseline...
pub const SPIKE_FACTOR: f64 = 10.0;
/// ...and at least this many over the window: a handful of drops is not a spike.
pub const SPIKE_MIN_DROPS: f64 = 100.0;
/// The baseline: the rate over this range...
pub const SPIKE_BASELINE: &str = "1h";
/// ...ending this long ago (the window plus the hold), so that a spike is not its own
/// baseline before its alert fires.
pub const SPIKE_BASELINE_OFFSET: &str = "10m";
/// A regressed verdict alerts for this long after it appears: its series stays for as
/// long as `serve` keeps the change among its recent ones, days on a quiet node.
pub const REGRESSED_FOR: &str = "1h";
/// How long the agent's own trouble must last before it alerts: a failed scrape of the
/// inventory now and then is not worth a page.
pub const AGENT_HOLD: &str = "15m";
/// The agent's failure counter and its workload cap's gauge (`views::metrics`).
const AGENT_ERRORS: &str = "tuneprobe_agent_errors_total";
const FOLDED: &str = "tuneprobe_folded_workloads";
/// The severity label of every alert.
pub const SEVERITY: &str = "warning";

/// One alert.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: &'static str,
    pub watched: Watched,
    /// Its `for:`.
    pub hold: &'static str,
    /// When it fires, in words (the docs' table, the comment above the rule).
    pub fires_when: String,
    /// Its threshold in words, with the unit (`1%`, `100 ms`).
    pub threshold: String,
    pub why: String,
    /// The knobs `advise` names for the symptom; empty for the other alerts.
    pub knobs: Vec<&'static str>,
}

/// What an alert watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Watched {
    /// A measure over the window at or above a threshold, with a load floor.
    Level(Level),
    /// Drops of one reason far above their own baseline.
    DropSpike,
    /// A tuning change judged regressed.
    Regressed,
    /// Block requests completed with an error.
    BlockErrors,
    /// The agent failing at a stage.
    AgentErrors,
    /// Workloads folded into `cgroup="other"` past `--max-workloads`.
    Folded,
}

/// A measure over the window, at or above `threshold` with at least `min_load` of its
/// load, where `also` holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    /// What it counts, per what.
    pub what: String,
    pub exported: Exported,
    /// A label kept beside the container's: `device` for block measures, `resolver`
    /// for DNS.
    pub per: Option<&'static str>,
    pub threshold: f64,
    pub min_load: f64,
    /// The load's name (`connection_attempts`).
    pub load: &'static str,
    pub unit: Unit,
    pub also: Also,
}

/// How a level's value reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A share, as a percentage.
    Share,
    Ms,
    /// A number of one thing per another (writes per read).
    Number,
}

/// The part of an advice rule's further condition that the exported metrics tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Also {
    Nothing,
    /// At least half the failed connects found no free local port.
    LackOfPort,
    /// The write p99 at least this many times the write mean.
    WriteBursts(u32),
    /// Requests wait at least as long in the scheduler's queue as on the device.
    QueueDominates,
}

impl Also {
    /// What the metrics tell of `condition`; the rest (a knob's value where the workload
    /// lives, a device's kind) is for `advise` to check.
    fn of(condition: Condition) -> Self {
        match condition {
            Condition::FailuresForLackOfPort | Condition::TimeWaitHoldsPorts => Self::LackOfPort,
            Condition::WriteBursts(factor) => Self::WriteBursts(factor),
            Condition::QueueDominatesOnSsd { .. } => Self::QueueDominates,
            // How long connections lived is for `advise` to weigh, as the knob's value is.
            Condition::None | Condition::SiblingIs(..) | Condition::LongLived(_) => Self::Nothing,
        }
    }

    fn words(self) -> String {
        match self {
            Self::Nothing => String::new(),
            Self::LackOfPort => format!(
                ", at least half the failed connects for lack of a local port (cause \
                 {PORT_EXHAUSTION})"
            ),
            Self::WriteBursts(factor) => {
                format!(", the write p99 at least {factor} times the write mean (bursts)")
            }
            Self::QueueDominates => {
                ", requests waiting at least as long in the scheduler's queue as on the device"
                    .to_string()
            }
        }
    }
}

/// Every alert: the advice symptoms', in the knob table's order, then the others.
pub fn alerts() -> Vec<Alert> {
    let mut all = symptoms();
    all.extend([
        dns_timeouts(),
        dns_latency(),
        drop_spike(),
        regressed(),
        block_errors(),
        agent_errors(),
        folded(),
    ]);
    all
}

/// The alert's name for an advice symptom.
fn name_of(symptom: Measure) -> Option<&'static str> {
    Some(match symptom {
        Measure::ListenOverflowRatio => "TuneprobeListenOverflows",
        Measure::RcvbufDropRatio => "TuneprobeReceiveBufferDrops",
        Measure::BacklogDropRatio => "TuneprobeBacklogDrops",
        Measure::TcpRcvqDropRatio => "TuneprobeTcpReceiveQueueDrops",
        Measure::ConnectFailureRatio => "TuneprobePortExhaustion",
        Measure::ResetRatio => "TuneprobeResets",
        Measure::CpuThrottledRatio => "TuneprobeCpuThrottlingHigh",
        Measure::BlockQueueMs => "TuneprobeBlockQueueSlow",
        Measure::WritesPerRead => "TuneprobeWritesPerReadHigh",
        Measure::BlockWriteP99Ms => "TuneprobeWritebackBursts",
        Measure::DnsLatencyP99Ms => "TuneprobeDnsLatencyHigh",
        Measure::ConntrackFullRatio => "TuneprobeConntrackFull",
        _ => return None,
    })
}

fn unit_of(measure: Measure) -> Unit {
    let name = measure.name();
    if name.ends_with("_ratio") {
        Unit::Share
    } else if name.ends_with("_ms") {
        Unit::Ms
    } else {
        Unit::Number
    }
}

/// One alert per distinct symptom of the advice rules: the lowest threshold and load
/// floor of its rules (where the first advice would fire), the condition they share.
fn symptoms() -> Vec<Alert> {
    let mut symptoms: Vec<Measure> = Vec::new();
    for rule in KNOBS.iter().filter_map(|k| k.advice) {
        // DNS latency is alerted per resolver, by `dns_latency`.
        if !symptoms.contains(&rule.symptom) && rule.symptom != Measure::DnsLatencyP99Ms {
            symptoms.push(rule.symptom);
        }
    }
    symptoms
        .into_iter()
        .map(|symptom| {
            let knobs: Vec<_> = KNOBS
                .iter()
                .filter(|k| k.advice.is_some_and(|r| r.symptom == symptom))
                .collect();
            let rules: Vec<Rule> = knobs.iter().filter_map(|k| k.advice).collect();
            let lowest = rules
                .iter()
                .min_by(|a, b| a.threshold.total_cmp(&b.threshold))
                .copied()
                .unwrap_or(rules[0]);
            let also = Also::of(rules[0].also);
            let shared = rules.iter().all(|r| Also::of(r.also) == also);
            let declared = symptom.declared();
            let level = Level {
                what: without_unit(declared.what),
                exported: declared.exported,
                per: symptom.per_device().then_some("device"),
                threshold: lowest.threshold,
                min_load: rules.iter().map(|r| r.min_load).fold(f64::MAX, f64::min),
                load: declared.load.unwrap_or("events"),
                unit: unit_of(symptom),
                also: if shared { also } else { Also::Nothing },
            };
            let name = name_of(symptom)
                .unwrap_or_else(|| panic!("{symptom:?} is advised on but has no alert name"));
            let mut alert = level_alert(name, level, lowest.threshold_why);
            alert.knobs = knobs.iter().map(|k| k.name).collect();
            alert
        })
        .collect()
}

/// A level alert without knobs.
fn level_alert(name: &'static str, level: Level, why: &str) -> Alert {
    let per = level.per.map_or(String::new(), |p| format!(" and {p}"));
    Alert {
        name,
        hold: HOLD,
        fires_when: format!(
            "{} per container{per} over {WINDOW}, with at least {} {}{}",
            level.what,
            level.min_load,
            level.load,
            level.also.words()
        ),
        threshold: level.unit.threshold(level.threshold),
        why: squeeze(why),
        knobs: Vec::new(),
        watched: Watched::Level(level),
    }
}

fn dns_timeouts() -> Alert {
    let Threshold {
        threshold,
        threshold_why,
        min_load,
    } = tuning::DNS_TIMEOUTS;
    let level = Level {
        what: "DNS queries without a response within the timeout per query".to_string(),
        exported: Exported::ratio(Counter::of(dns::TIMEOUTS), Counter::of(dns::QUERIES)),
        per: Some("resolver"),
        threshold,
        min_load,
        load: "queries",
        unit: Unit::Share,
        also: Also::Nothing,
    };
    level_alert("TuneprobeDnsTimeouts", level, threshold_why)
}

/// The advice rule of `nodelocaldns`, per resolver.
fn dns_latency() -> Alert {
    let Rule {
        threshold,
        threshold_why,
        min_load,
        ..
    } = tuning::DNS_LATENCY;
    let declared = Measure::DnsLatencyP99Ms.declared();
    let level = Level {
        what: without_unit(declared.what),
        exported: declared.exported,
        per: Some("resolver"),
        threshold,
        min_load,
        load: declared.load.unwrap_or("responses"),
        unit: Unit::Ms,
        also: Also::Nothing,
    };
    let mut alert = level_alert("TuneprobeDnsLatencyHigh", level, threshold_why);
    alert.knobs = KNOBS
        .iter()
        .filter(|k| k.advice == Some(tuning::DNS_LATENCY))
        .map(|k| k.name)
        .collect();
    alert
}

fn drop_spike() -> Alert {
    Alert {
        name: "TuneprobeDropSpike",
        watched: Watched::DropSpike,
        hold: HOLD,
        fires_when: format!(
            "drops of one reason per container over {WINDOW} at least {SPIKE_FACTOR} times \
             their rate over the {SPIKE_BASELINE} before (ending {SPIKE_BASELINE_OFFSET} ago), \
             and at least {SPIKE_MIN_DROPS} of them; a reason not dropped before counts from 0"
        ),
        threshold: format!("{SPIKE_FACTOR} times the baseline"),
        why: format!(
            "a pod's drops of one reason are steady while nothing changes (a policy drops \
             what it always dropped); {SPIKE_FACTOR} times their own rate is something new: a full \
             queue, a rule, a route. The baseline ends {SPIKE_BASELINE_OFFSET} ago so that \
             a spike is not its own baseline before the alert fires, and the alert ends \
             once the new rate is a good part of the baseline"
        ),
        knobs: Vec::new(),
    }
}

fn regressed() -> Alert {
    Alert {
        name: "TuneprobeTuningRegressed",
        watched: Watched::Regressed,
        hold: "1m",
        fires_when: format!(
            "`serve`'s final verdict `{}` on a tuning change, per workload and signal \
             (`{VERDICT_FAMILY}`), for {REGRESSED_FOR} after it appears",
            serde_name(&Verdict::Regressed)
        ),
        threshold: "a final verdict".to_string(),
        why: "the signal is worse after the change than before, beyond chance (the rank \
              test of verify); a final verdict is already judged over its windows, so it \
              needs no more holding than a scrape"
            .to_string(),
        knobs: Vec::new(),
    }
}

fn block_errors() -> Alert {
    Alert {
        name: "TuneprobeBlockErrors",
        watched: Watched::BlockErrors,
        hold: "1m",
        fires_when: format!(
            "any block request completed with an error per container and device over \
             {WINDOW} (`{}`)",
            block_io::ERRORS
        ),
        threshold: "any".to_string(),
        why: "a healthy device completes every request; an error is data an application \
              did not read or write (a failing disk, a detached volume, a full thin pool), \
              and worth a look every time it happens"
            .to_string(),
        knobs: Vec::new(),
    }
}

/// A declaration's words without their `, ms`: the alerts give the unit with the value.
fn without_unit(what: &'static str) -> String {
    what.replace(", ms", "")
}

/// Table strings are wrapped in the source: one space between words.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Unit {
    fn threshold(self, value: f64) -> String {
        let round = |v: f64| (v * 1e9).round() / 1e9;
        match self {
            Self::Share => format!("{}%", round(value * 100.0)),
            Self::Ms => format!("{} ms", round(value)),
            Self::Number => format!("{}", round(value)),
        }
    }

    /// The alert's value in an annotation, as a Go template.
    fn value(self) -> &'static str {
        match self {
            Self::Share => "{{ $value | humanizePercentage }}",
            Self::Ms => "{{ $value | printf \"%.1f\" }} ms",
            Self::Number => "{{ $value | printf \"%.2f\" }}",
        }
    }
}

/// The container's labels in an annotation.
const WHERE: &str = "{{ $labels.namespace }}/{{ $labels.pod }}, container {{ $labels.container }}";

impl Alert {
    /// Its PromQL.
    pub fn expr(&self) -> String {
        match &self.watched {
            Watched::Level(level) => level.expr(),
            Watched::DropSpike => spike_expr(),
            Watched::Regressed => regressed_expr(),
            Watched::AgentErrors => {
                format!("sum by (node, stage) (increase({AGENT_ERRORS}[{WINDOW}]))\n  > 0")
            }
            Watched::Folded => format!("max by (node) ({FOLDED})\n  > 0"),
            Watched::BlockErrors => format!(
                "sum by ({BY}, device) (increase({}[{WINDOW}]))\n  > 0",
                block_io::ERRORS
            ),
        }
    }

    /// Its annotations, Go templates: what and where, why, the knobs, what to run.
    pub fn annotations(&self) -> Vec<(&'static str, String)> {
        let why = format!("{}. Fires on {}.", capitalised(&self.why), self.fires_when);
        let (summary, command) = match &self.watched {
            Watched::Level(level) => level.summary_and_command(self),
            Watched::DropSpike => (
                format!(
                    "Drops of reason {{{{ $labels.reason }}}} at {{{{ $value | printf \"%.1f\" }}}}/s \
                     in {WHERE}: over {SPIKE_FACTOR} times their rate before"
                ),
                "tuneprobe trace drops --namespace {{ $labels.namespace }} --pod {{ $labels.pod }} --for 60s".to_string(),
            ),
            Watched::Regressed => (
                format!(
                    "A change of {{{{ $labels.knob }}}} ({{{{ $labels.scope }}}}) was judged \
                     regressed on {{{{ $labels.signal }}}} for {WHERE}"
                ),
                "curl -s http://AGENT:9464/changes (the tuneprobe pod on node {{ $labels.node }}): the change's report; then revert {{ $labels.knob }}".to_string(),
            ),
            Watched::BlockErrors => (
                format!(
                    "{{{{ $value | printf \"%.0f\" }}}} block requests failed on device \
                     {{{{ $labels.device }}}} for {WHERE} in the last {WINDOW}"
                ),
                "tuneprobe trace block --namespace {{ $labels.namespace }} --pod {{ $labels.pod }} --for 60s; and the kernel's log on node {{ $labels.node }} (dmesg)".to_string(),
            ),
            Watched::AgentErrors => (
                "tuneprobe on node {{ $labels.node }} failed {{ $value | printf \"%.0f\" }} times \
                 at stage {{ $labels.stage }} in the last 5m"
                    .to_string(),
                "kubectl -n tuneprobe logs -l app.kubernetes.io/name=tuneprobe --field-selector spec.nodeName={{ $labels.node }}".to_string(),
            ),
            Watched::Folded => (
                "{{ $value | printf \"%.0f\" }} workloads on node {{ $labels.node }} are folded \
                 into cgroup=\"other\" past --max-workloads"
                    .to_string(),
                "raise serve's --max-workloads in the DaemonSet, and its memory limit with it (docs/deployment.md)".to_string(),
            ),
        };
        let mut out = vec![("summary", summary), ("description", why)];
        if !self.knobs.is_empty() {
            out.push(("knobs", self.knobs.join(", ")));
        }
        out.push(("command", command));
        out
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or(String::new(), |c| {
        c.to_uppercase().chain(chars).collect::<String>()
    })
}

impl Level {
    fn by(&self) -> String {
        self.per.map_or(BY.to_string(), |p| format!("{BY}, {p}"))
    }

    fn expr(&self) -> String {
        let by = self.by();
        let span = Span {
            by: &by,
            range: WINDOW,
        };
        let mut out = format!(
            "{}\n  >= {}",
            rules::expression(self.exported, span),
            self.threshold
        );
        if let Some(load) = rules::load(self.exported, span) {
            let _ = write!(out, "\nand {load}\n  >= {}", self.min_load);
        }
        let measure = |m: Measure| rules::expression(m.declared().exported, span);
        match self.also {
            Also::Nothing => {}
            Also::LackOfPort => {
                let port = Counter::only(CONNECT_FAILURES, "cause", &[PORT_EXHAUSTION]);
                let _ = write!(
                    out,
                    "\nand 2 * {}\n  >= {}",
                    rules::counter(port, span),
                    rules::counter(Counter::of(CONNECT_FAILURES), span)
                );
            }
            Also::WriteBursts(factor) => {
                let _ = write!(
                    out,
                    "\nand {}\n  >= {factor} * ({})",
                    measure(Measure::BlockWriteP99Ms),
                    measure(Measure::BlockWriteMs)
                );
            }
            Also::QueueDominates => {
                let _ = write!(
                    out,
                    "\nand {}\n  >= ({})",
                    measure(Measure::BlockQueueMs),
                    measure(Measure::BlockServiceMs)
                );
            }
        }
        out
    }

    fn summary_and_command(&self, alert: &Alert) -> (String, String) {
        let per = match self.per {
            Some("resolver") => " to resolver {{ $labels.resolver }}".to_string(),
            Some(label) => format!(" on {label} {{{{ $labels.{label} }}}}"),
            None => String::new(),
        };
        let summary = format!("{} at {} in {WHERE}{per}", self.what, self.unit.value());
        let pod = "--namespace {{ $labels.namespace }} --pod {{ $labels.pod }}";
        let command = if !alert.knobs.is_empty() {
            format!("tuneprobe advise --for {WINDOW} {pod}")
        } else if self.unit == Unit::Ms {
            format!(
                "tuneprobe trace dns {pod} --min-latency {}ms --for 60s",
                self.threshold
            )
        } else {
            format!("tuneprobe trace dns {pod} --for 60s")
        };
        (summary, command)
    }
}

/// The agent failing at a stage for a quarter of an hour.
fn agent_errors() -> Alert {
    Alert {
        name: "TuneprobeAgentErrors",
        watched: Watched::AgentErrors,
        hold: AGENT_HOLD,
        fires_when: format!(
            "failures of the agent at a stage (`{AGENT_ERRORS}`: collect, tuning_inventory, \
             render, otlp_push) in every {WINDOW} for {AGENT_HOLD}"
        ),
        threshold: "any failure".to_string(),
        why: "a stage that keeps failing leaves its part of the node unmeasured (a collect \
              that fails exports stale counts, a failing inventory judges no change, a \
              failing push leaves the OTLP receiver without data), and only the agent's log \
              says why"
            .to_string(),
        knobs: Vec::new(),
    }
}

/// Workloads past `--max-workloads`, for a quarter of an hour.
fn folded() -> Alert {
    Alert {
        name: "TuneprobeWorkloadsFolded",
        watched: Watched::Folded,
        hold: AGENT_HOLD,
        fires_when: format!(
            "any workload folded into `cgroup=\"other\"` (`{FOLDED}`) for {AGENT_HOLD}"
        ),
        threshold: "one workload".to_string(),
        why: "past --max-workloads a node's further workloads lose their own series: their \
              signals, verdicts and advice are summed into one and no longer tell pods apart"
            .to_string(),
        knobs: Vec::new(),
    }
}

fn spike_expr() -> String {
    let by = format!("{BY}, reason");
    let drops = format!("{}{{pod!=\"\"}}", drops::PACKET_DROPS);
    let now = format!("sum by ({by}) (rate({drops}[{WINDOW}]))");
    let before =
        format!("sum by ({by}) (rate({drops}[{SPIKE_BASELINE}] offset {SPIKE_BASELINE_OFFSET}))");
    let count = rules::counter(
        Counter::of(drops::PACKET_DROPS),
        Span {
            by: &by,
            range: WINDOW,
        },
    );
    format!(
        "{now}\n  > {SPIKE_FACTOR} * ({before}\n    or 0 * {now})\nand {count}\n  >= {SPIKE_MIN_DROPS}"
    )
}

fn regressed_expr() -> String {
    let by = format!("{BY}, knob, scope, signal");
    let verdicts = format!(
        "{VERDICT_FAMILY}{{verdict=\"{}\",final=\"true\"}}",
        serde_name(&Verdict::Regressed)
    );
    format!("max by ({by}) ({verdicts})\nunless max by ({by}) ({verdicts} offset {REGRESSED_FOR})")
}

/// A YAML double-quoted string.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The alerts as a YAML list of rule groups, each line indented by `pad` (2 in
/// `alerts.yaml`, 4 in the PrometheusRule's `spec.groups`).
pub fn groups(pad: &str) -> String {
    let mut out = format!("{pad}- name: tuneprobe-alerts\n{pad}  rules:\n");
    for alert in alerts() {
        let _ = writeln!(out, "{pad}    # Fires on {}.", alert.fires_when);
        let _ = writeln!(out, "{pad}    - alert: {}", alert.name);
        let _ = writeln!(out, "{pad}      expr: |");
        for line in alert.expr().lines() {
            let _ = writeln!(out, "{pad}        {line}");
        }
        let _ = writeln!(out, "{pad}      for: {}", alert.hold);
        let _ = writeln!(out, "{pad}      labels:\n{pad}        severity: {SEVERITY}");
        let _ = writeln!(out, "{pad}      annotations:");
        for (key, value) in alert.annotations() {
            let _ = writeln!(out, "{pad}        {key}: {}", quoted(&value));
        }
    }
    out
}

/// The table of `docs/deployment.md`: every alert, when it fires, its threshold and why.
pub fn docs_table() -> String {
    let mut out = String::from(
        "| alert | fires on | threshold | why | knobs `advise` names |\n|---|---|---|---|---|\n",
    );
    for alert in alerts() {
        let knobs = if alert.knobs.is_empty() {
            "none".to_string()
        } else {
            alert
                .knobs
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {knobs} |",
            alert.name, alert.fires_when, alert.threshold, alert.why
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alert_per_advice_symptom_on_its_rules_threshold_and_floor() {
        let all = alerts();
        for knob in KNOBS {
            let Some(rule) = knob.advice else { continue };
            let name = name_of(rule.symptom).unwrap();
            let alert = all.iter().find(|a| a.name == name).unwrap();
            let Watched::Level(level) = &alert.watched else {
                panic!("{name} is not a level")
            };
            assert_eq!(level.exported, rule.symptom.declared().exported, "{name}");
            assert!(level.threshold <= rule.threshold, "{name}");
            assert!(level.min_load <= rule.min_load, "{name}");
            assert!(alert.knobs.contains(&knob.name), "{name}: {}", knob.name);
        }
        let mut names: Vec<_> = all.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "duplicate names");
        assert_eq!(all.len(), 18);
    }

    #[test]
    fn thresholds_read_in_their_units_and_conditions_as_the_rules_share_them() {
        let alert = |name: &str| alerts().into_iter().find(|a| a.name == name).unwrap();
        let listen = alert("TuneprobeListenOverflows");
        assert_eq!(listen.threshold, "1%");
        assert_eq!(listen.knobs, ["net.core.somaxconn"]);
        assert_eq!(alert("TuneprobeCpuThrottlingHigh").threshold, "25%");
        assert_eq!(alert("TuneprobeBacklogDrops").threshold, "0.1%");
        assert_eq!(alert("TuneprobeDnsLatencyHigh").threshold, "100 ms");
        assert_eq!(alert("TuneprobeWritesPerReadHigh").threshold, "0.5");
        let ports = alert("TuneprobePortExhaustion");
        assert_eq!(
            ports.knobs,
            ["net.ipv4.tcp_tw_reuse", "net.ipv4.ip_local_port_range"]
        );
        let expr = ports.expr();
        assert!(
            expr.contains(
                "and 2 * sum by (node, namespace, pod, container) (increase(tuneprobe_tcp_connect_failures_total{pod!=\"\",cause=\"port_exhaustion\"}[5m]))"
            ),
            "{expr}"
        );
        let Watched::Level(bursts) = &alert("TuneprobeWritebackBursts").watched else {
            panic!()
        };
        assert_eq!(
            (bursts.also, bursts.per),
            (Also::WriteBursts(5), Some("device"))
        );
        let expr = alert("TuneprobeWritebackBursts").expr();
        assert!(
            expr.contains("by (node, namespace, pod, container, device, le)"),
            "{expr}"
        );
        // Listen overflows: one rule without a condition, one on syncookies (a knob's
        // value, for advise): nothing shared that the metrics tell.
        let Watched::Level(listen) = &listen.watched else {
            panic!()
        };
        assert_eq!(listen.also, Also::Nothing);
    }

    #[test]
    fn annotations_carry_the_why_the_knobs_and_the_command() {
        let throttling = alerts()
            .into_iter()
            .find(|a| a.name == "TuneprobeCpuThrottlingHigh")
            .unwrap();
        let annotations = throttling.annotations();
        let get = |key| {
            annotations
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        assert!(get("description").starts_with("Kubernetes-mixin's CPUThrottlingHigh"));
        assert_eq!(get("knobs"), "cpu.max");
        assert_eq!(
            get("command"),
            "tuneprobe advise --for 5m --namespace {{ $labels.namespace }} --pod {{ $labels.pod }}"
        );
        assert_eq!(
            get("summary"),
            "throttled CFS periods per period at {{ $value | humanizePercentage }} in \
             {{ $labels.namespace }}/{{ $labels.pod }}, container {{ $labels.container }}"
        );
        assert_eq!(quoted("a \"b\" \\"), "\"a \\\"b\\\" \\\\\"");
    }
}
