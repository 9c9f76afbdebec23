//! `tuneprobe advise`: watch a window, then say which knob each symptom calls for, where,
//! to what value, what the change must do, and the command that proves it.

use std::{
    fmt::Write as _,
    io::Write as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::snapshot::parse_duration;
use crate::{
    advise::{self, Advice, AdviceReport, NodeLocator, Thresholds},
    kernel::loader::{LoadOptions, Probe},
    report::Snapshot,
    signals::measure::Measure,
    window::Collector,
    workloads::identity::Identity,
};

#[derive(Debug, clap::Args)]
#[command(
    about = "Watch for a while, then name the knob each symptom calls for, with a prediction",
    long_about = "Attach the probes and watch for DURATION; then, for every workload whose \
                  signals cross an advice rule's threshold (listen overflows per connection \
                  attempt, receive-buffer drops per datagram, failed connects for lack of a \
                  local port, CPU throttled periods, ...), name the knob, its value where the \
                  workload lives, the value to set and when it takes effect, the prediction \
                  (the measure that must fall, and by how much) and the `tuneprobe verify` \
                  command that tests it. A node without symptoms gets no advice. The rules \
                  and their thresholds are listed in docs/advise.md.",
    after_help = "Examples:\n  \
                  tuneprobe advise --for 60s\n  \
                  tuneprobe advise --for 2m --namespace shop --json | jq '.advice[0].verify_command'\n  \
                  tuneprobe advise --for 30s --threshold cpu_throttled_ratio=0.5"
)]
pub(super) struct Args {
    /// How long to watch.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    duration: Duration,

    /// How often to sample (the CPU limit is sized from per-interval demand).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    interval: Duration,

    /// Only advice for workloads in this namespace.
    #[arg(long)]
    namespace: Option<String>,

    /// Only advice for this pod (name or UID).
    #[arg(long)]
    pod: Option<String>,

    /// Another threshold for a symptom measure (repeatable): MEASURE=VALUE, in the
    /// measure's unit (cpu_throttled_ratio=0.5, listen_overflow_ratio=0.001).
    #[arg(long = "threshold", value_name = "MEASURE=VALUE", value_parser = parse_threshold)]
    thresholds: Vec<(Measure, f64)>,

    /// Print JSON (documented in docs/advise.md) instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    collector: super::CollectorArgs,
}

fn parse_threshold(text: &str) -> Result<(Measure, f64), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or("expected MEASURE=VALUE, e.g. cpu_throttled_ratio=0.5")?;
    let symptoms: Vec<String> = advise::advised_knobs()
        .map(|(_, rule)| rule.symptom.name())
        .collect();
    let measure = Measure::parse(name)
        .filter(|m| symptoms.contains(&m.name()))
        .ok_or_else(|| {
            let mut names = symptoms.clone();
            names.dedup();
            format!("{name:?} is no advice symptom; one of {}", names.join(", "))
        })?;
    let value: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("the threshold must be above zero, not {value}"));
    }
    Ok((measure, value))
}

pub(super) fn run(args: &Args, options: &LoadOptions) -> anyhow::Result<()> {
    let probe = Probe::load(options)?;
    // Reading a pod's sysctls means entering its network namespace.
    crate::privileges::after_attach(crate::privileges::needs::SERVE);
    let mut collector = Collector::start_with(probe, args.collector.options()?)?;
    eprintln!(
        "ready: watching for {}",
        humantime::format_duration(args.duration)
    );
    let snapshots = watch(&mut collector, args.duration, args.interval)?;
    let inventory = crate::tuning::this_node().context("reading the tuning inventory")?;
    let thresholds = Thresholds(args.thresholds.iter().copied().collect());
    let mut advice = advise::advise(
        &snapshots,
        &inventory,
        &thresholds,
        &NodeLocator::of_this_node(),
    );
    filter(&mut advice, args.namespace.as_deref(), args.pod.as_deref());
    let window_s = window_s(&snapshots);
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &AdviceReport { window_s, advice })?;
        writeln!(stdout)?;
    } else {
        let watched = snapshots.last().map_or(0, |s| s.workloads.len());
        write!(stdout, "{}", text(&advice, window_s, watched))?;
    }
    stdout.flush().context("writing the advice")
}

/// A snapshot every interval for `length`, the first when the window opens.
fn watch(
    collector: &mut Collector,
    length: Duration,
    interval: Duration,
) -> anyhow::Result<Vec<Snapshot>> {
    let mut snapshots = vec![collector.report()?];
    let deadline = Instant::now() + length;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(snapshots);
        }
        thread::sleep(left.min(interval));
        snapshots.push(collector.report()?);
    }
}

fn window_s(snapshots: &[Snapshot]) -> f64 {
    match (snapshots.first(), snapshots.last()) {
        (Some(first), Some(last)) => last.duration_s - first.duration_s,
        _ => 0.0,
    }
}

/// Keeps the advice for workloads of the namespace and pod asked for.
fn filter(advice: &mut Vec<Advice>, namespace: Option<&str>, pod: Option<&str>) {
    let keep = |w: &Identity| {
        namespace.is_none_or(|n| w.namespace.as_deref() == Some(n))
            && pod.is_none_or(|p| w.pod.as_deref() == Some(p) || w.pod_uid.as_deref() == Some(p))
    };
    for a in advice.iter_mut() {
        a.workloads.retain(keep);
    }
    advice.retain(|a| !a.workloads.is_empty());
}

/// The advice for a person: one line per knob, then each in full.
fn text(advice: &[Advice], window_s: f64, watched: usize) -> String {
    let mut out = String::new();
    if advice.is_empty() {
        let _ = writeln!(
            out,
            "no advice: no symptom over its threshold in {window_s:.0} s ({watched} workloads watched)"
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{:<32} {:<40} {:>24} {:>24}  SYMPTOM",
        "KNOB", "WORKLOADS", "CURRENT", "RECOMMENDED"
    );
    for a in advice {
        let names: Vec<String> = a.workloads.iter().map(Identity::display_name).collect();
        let e = &a.evidence;
        let _ = writeln!(
            out,
            "{:<32} {:<40} {:>24} {:>24}  {} {:.4} >= {}",
            a.knob,
            tail(&names.join(","), 40),
            a.current,
            a.recommended,
            e.measure.name(),
            e.value,
            e.threshold
        );
    }
    for a in advice {
        details(&mut out, a);
    }
    out
}

fn details(out: &mut String, a: &Advice) {
    let e = &a.evidence;
    let _ = writeln!(out, "\n{}: {} -> {}", a.knob, a.current, a.recommended);
    let device = e
        .device
        .as_deref()
        .map_or_else(String::new, |d| format!(" on {d}"));
    let _ = writeln!(
        out,
        "  symptom: {} {:.4}{device} over {:.0} s (load {:.0}), threshold {}: {}",
        e.measure.name(),
        e.value,
        e.window_s,
        e.load,
        e.threshold,
        e.threshold_why
    );
    if let Some(detail) = &e.detail {
        let _ = writeln!(out, "  and: {detail}");
    }
    let _ = writeln!(out, "  why this knob: {}", a.why);
    let _ = writeln!(out, "  takes effect: {}", a.takes_effect);
    let p = &a.prediction;
    let _ = writeln!(
        out,
        "  prediction: {} {} by at least {:.0}%",
        p.measure.name(),
        p.direction,
        p.min_effect * 100.0
    );
    let _ = writeln!(out, "  prove it: {}", a.verify_command);
    for note in &a.notes {
        let _ = writeln!(out, "  note: {note}");
    }
}

fn tail(text: &str, width: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars[chars.len().saturating_sub(width)..].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse() {
        assert_eq!(
            parse_threshold("cpu_throttled_ratio=0.5"),
            Ok((Measure::CpuThrottledRatio, 0.5))
        );
        assert!(parse_threshold("cpu_throttled_ratio").is_err());
        assert!(
            parse_threshold("srtt_ms=5")
                .unwrap_err()
                .contains("no advice symptom")
        );
        assert!(parse_threshold("listen_overflow_ratio=-1").is_err());
        assert!(parse_threshold("listen_overflow_ratio=x").is_err());
    }
}
