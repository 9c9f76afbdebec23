//! `tuneprobe verify --ab`: two groups of pods of one workload, run side by side with
//! different values of a per-pod knob, judged interval by interval (`verify/ab.rs`).

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{
    CollectorArgs,
    verify::{interrupt_flag, sleep_unless},
};
use crate::{
    kernel::loader::{LoadOptions, Probe},
    output::serde_name,
    signals::measure::Measure,
    tuning,
    verify::{AbError, AbReport, AbVerdict, GroupReport, Groups, Selector},
    window::Collector,
    workloads::identity::Identity,
};

/// `--for`'s default with `--ab`.
const DEFAULT_LENGTH: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub(super) struct AbArgs {
    /// Judge two groups of pods running side by side with different values of a knob
    /// (--treated against --control), interval by interval, for --for (default 60s):
    /// no before and after, so a load change hits both groups alike.
    #[arg(
        long,
        requires_all = ["treated", "control"],
        conflicts_with_all = ["apply", "exec", "watch", "netns", "pod", "cgroup", "device", "revert", "plot"]
    )]
    pub(super) ab: bool,

    /// With --ab: the workloads with the value under test; comma-separated key=value
    /// terms, all of which must match: namespace=, pod= (a trailing * matches a prefix),
    /// workload= (the pod name without its ReplicaSet/StatefulSet/DaemonSet suffix),
    /// label=KEY=VALUE, uid= (pod UID), cgroup= (a cgroup path: at or below it).
    #[arg(long, value_name = "SELECTOR", requires = "ab", value_parser = parse_selector)]
    treated: Option<Selector>,

    /// With --ab: the workloads to compare with, as --treated.
    #[arg(long, value_name = "SELECTOR", requires = "ab", value_parser = parse_selector)]
    control: Option<Selector>,
}

fn parse_selector(text: &str) -> Result<Selector, String> {
    text.parse().map_err(|e: AbError| e.to_string())
}

/// The options `--ab` shares with the rest of `verify`.
pub(super) struct Shared<'a> {
    pub signals: &'a [Measure],
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub json: bool,
    pub collector: &'a CollectorArgs,
}

pub(super) fn run(args: &AbArgs, shared: &Shared, options: &LoadOptions) -> anyhow::Result<()> {
    let (Some(treated), Some(control)) = (&args.treated, &args.control) else {
        bail!("--ab needs --treated SELECTOR and --control SELECTOR");
    };
    let interrupted = interrupt_flag()?;
    let probe = Probe::load(options)?;
    crate::privileges::after_attach(crate::privileges::needs::VERIFY);
    let mut collector = Collector::start_with(probe, shared.collector.options()?)?;
    let earlier = inventory()?;
    let mut groups = Groups::new(treated.clone(), control.clone());
    let length = shared.duration.unwrap_or(DEFAULT_LENGTH);
    eprintln!(
        "ready: measuring {treated} against {control} for {}",
        humantime::format_duration(length)
    );
    sample(&mut collector, &mut groups, shared, length, &interrupted)?;
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted while measuring; no verdict");
    }
    let plan = groups.plan(&inventory()?, shared.signals)?;
    let report = groups.judge(plan, Some(&earlier));
    if shared.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report, shared.interval));
    }
    Ok(())
}

fn inventory() -> anyhow::Result<tuning::Inventory> {
    tuning::this_node().context("reading the tuning inventory")
}

/// One interval after another for `length`; as soon as both groups have a workload, the
/// plan is checked once, so that groups that differ in no knob fail at once.
fn sample(
    collector: &mut Collector,
    groups: &mut Groups,
    shared: &Shared,
    length: Duration,
    interrupted: &AtomicBool,
) -> anyhow::Result<()> {
    let intervals = (length.as_secs_f64() / shared.interval.as_secs_f64())
        .round()
        .max(1.0) as usize;
    let mut previous = collector.report()?;
    let mut checked = false;
    for _ in 0..intervals {
        sleep_unless(shared.interval, interrupted);
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        let current = collector.report()?;
        groups.add(&previous, &current)?;
        previous = current;
        let (treated, control) = groups.sizes();
        if !checked && treated > 0 && control > 0 {
            groups.plan(&inventory()?, shared.signals)?;
            checked = true;
            eprintln!("found {treated} treated and {control} control workload(s)");
        }
    }
    Ok(())
}

/// The report for a person: the groups, the knobs that differ, the verdicts and their
/// notes.
fn text(report: &AbReport, interval: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "A/B over {} intervals of {}",
        report.intervals,
        humantime::format_duration(interval)
    );
    for (name, group) in [("treated", &report.treated), ("control", &report.control)] {
        let names: Vec<String> = group.workloads.iter().map(Identity::display_name).collect();
        let _ = writeln!(out, "  {name}  {}: {}", group.selector, names.join(", "));
    }
    if !report.differing_knobs.is_empty() {
        let _ = writeln!(out, "\n{:<40} {:<24} CONTROL", "KNOB", "TREATED");
        for knob in &report.differing_knobs {
            let value = |g: &GroupReport| g.knobs.get(knob).cloned().unwrap_or_default();
            let _ = writeln!(
                out,
                "{knob:<40} {:<24} {}",
                value(&report.treated),
                value(&report.control)
            );
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    if report.verdicts.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n{:<26} {:>9} {:>9} {:>9} {:>21} {:>8} {:>5}  VERDICT",
        "SIGNAL", "TREATED", "CONTROL", "EFFECT", "95% CI", "P", "N"
    );
    for v in &report.verdicts {
        out.push_str(&verdict_line(v));
    }
    for v in report.verdicts.iter().filter(|v| !v.notes.is_empty()) {
        let _ = writeln!(out, "\n{}:", v.signal.name());
        for note in &v.notes {
            let _ = writeln!(out, "  note: {note}");
        }
    }
    out
}

fn verdict_line(v: &AbVerdict) -> String {
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
    let c = &v.comparison;
    format!(
        "{:<26} {:>9} {:>9} {:>9} {:>21} {:>8.4} {:>5}  {}\n",
        v.signal.name(),
        num(v.treated),
        num(v.control),
        num(Some(c.effect)),
        format!("[{}, {}]", num(Some(c.ci95[0])), num(Some(c.ci95[1]))),
        c.p_value,
        v.intervals,
        serde_name(&c.verdict)
    )
}
