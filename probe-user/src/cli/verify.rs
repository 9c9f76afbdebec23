//! `tuneprobe verify --apply KNOB=VALUE`: measure, change one knob, measure again, and
//! judge per workload whether the signal the knob targets moved.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tuneprobe::{
    Collector, LoadOptions, Probe, Snapshot,
    cgroup::Hierarchies,
    report::serde_name,
    verify::{self, Knob, Samples, Target, WorkloadVerdict},
};

use super::snapshot::parse_duration;

#[derive(Debug, clap::Args)]
#[command(
    about = "Change one knob and judge, per workload, whether its signal improved",
    long_about = "Measure a baseline window, apply KNOB=VALUE, measure an after window, and \
                  compare the signal the knob should move (e.g. throttled periods per period \
                  for a cpu quota) per workload: Mann-Whitney U test and Hodges-Lehmann shift \
                  with a 95% interval, verdict improved, regressed, no significant change or \
                  insufficient data.",
    after_help = "Examples:\n  \
                  tuneprobe verify --apply cpu.cfs_quota_us=100000 --cgroup /sys/fs/cgroup/cpu/kubepods/burstable/pod.../c1 --revert\n  \
                  tuneprobe verify --apply net.core.somaxconn=65535 --netns /proc/1234/ns/net --json"
)]
pub struct Args {
    /// The change: a sysctl (`net.core.somaxconn=65535`), a cgroup file
    /// (`cpu.cfs_quota_us=100000`) or a block queue file (`queue/scheduler=none`).
    #[arg(long, value_name = "KNOB=VALUE")]
    apply: String,

    /// Change a sysctl inside this network namespace (a name under /run/netns or a path).
    #[arg(long, value_name = "NAME|PATH", conflicts_with_all = ["cgroup", "device"])]
    netns: Option<String>,

    /// Change a file of this cgroup directory; only workloads below it are judged.
    #[arg(long, value_name = "DIR", conflicts_with = "device")]
    cgroup: Option<PathBuf>,

    /// Change a queue file of this block device.
    #[arg(long, value_name = "NAME")]
    device: Option<String>,

    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    before: Duration,

    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    after: Duration,

    /// One sample per workload per interval.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    interval: Duration,

    /// Put the old value back afterwards.
    #[arg(long)]
    revert: bool,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    collector: super::CollectorArgs,
}

#[derive(Debug, Serialize)]
struct Report {
    change: Change,
    verdicts: Vec<WorkloadVerdict>,
}

#[derive(Debug, Serialize)]
struct Change {
    knob: String,
    scope: Target,
    old: String,
    new: String,
    /// Seconds since the Unix epoch.
    at: f64,
    reverted: bool,
}

pub fn run(args: &Args, options: &LoadOptions) -> anyhow::Result<()> {
    let (name, value) = args
        .apply
        .split_once('=')
        .context("--apply takes KNOB=VALUE")?;
    let signals = verify::signals_for(name);
    if signals.is_empty() {
        bail!("no signal is known for {name}: nothing to judge");
    }
    let (target, scope) = target(args)?;
    let knob = Knob {
        name: name.to_string(),
        target,
    };
    let old = knob
        .read()
        .with_context(|| format!("reading {name} at {:?}", knob.target))?;

    // SIGINT or SIGTERM end the windows early; the old value still goes back.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .context("installing the signal handler")?;
    }
    let mut collector = Collector::start_with(Probe::load(options)?, args.collector.options()?)?;
    eprintln!(
        "ready: measuring {} before the change",
        humantime::format_duration(args.before)
    );
    let (before, previous) = window(
        &mut collector,
        args.before,
        args.interval,
        signals,
        None,
        &interrupted,
    )?;
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted before the change; {name} was not touched");
    }

    knob.write(value)
        .with_context(|| format!("writing {name}={value}"))?;
    let at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    eprintln!(
        "changed {name}: {old} -> {value}; measuring {}",
        humantime::format_duration(args.after)
    );
    let result = window(
        &mut collector,
        args.after,
        args.interval,
        signals,
        Some(previous),
        &interrupted,
    );
    if args.revert {
        knob.write(&old)
            .with_context(|| format!("reverting {name} to {old}"))?;
        eprintln!("reverted {name} to {old}");
    }
    let (after, last) = result?;
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted during the after window; no verdict");
    }

    let report = Report {
        change: Change {
            knob: name.to_string(),
            scope: knob.target.clone(),
            old,
            new: value.to_string(),
            at,
            reverted: args.revert,
        },
        verdicts: verify::judge(&before, &after, signals, &last, &scope),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// Where the knob is, and the cgroup path prefix of the workloads it affects.
fn target(args: &Args) -> anyhow::Result<(Target, String)> {
    if let Some(dir) = &args.cgroup {
        let hierarchies = Hierarchies::of_this_node();
        let roots = [hierarchies.cpu, hierarchies.blkio, hierarchies.unified];
        let scope = roots
            .iter()
            .flatten()
            .find_map(|root| dir.strip_prefix(root).ok())
            .map(|relative| format!("/{}", relative.display()))
            .context("--cgroup must be a directory in a cgroup hierarchy")?;
        return Ok((Target::Cgroup(dir.clone()), scope));
    }
    if let Some(netns) = &args.netns {
        let path = if netns.contains('/') {
            PathBuf::from(netns)
        } else {
            Path::new("/run/netns").join(netns)
        };
        // Sysctls of a namespace affect every workload living in it: judged node-wide,
        // the namespace's own workloads are the ones whose samples move.
        return Ok((Target::Netns(path), "/".to_string()));
    }
    if let Some(device) = &args.device {
        return Ok((Target::Device(device.clone()), "/".to_string()));
    }
    Ok((Target::Node, "/".to_string()))
}

/// Samples every workload once per interval for `length`.
fn window(
    collector: &mut Collector,
    length: Duration,
    interval: Duration,
    signals: &[verify::Signal],
    previous: Option<Snapshot>,
    interrupted: &AtomicBool,
) -> anyhow::Result<(Samples, Snapshot)> {
    let mut samples = Samples::default();
    let mut previous = match previous {
        Some(snapshot) => snapshot,
        None => collector.report()?,
    };
    let intervals = (length.as_secs_f64() / interval.as_secs_f64())
        .round()
        .max(1.0) as usize;
    for _ in 0..intervals {
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        thread::sleep(interval);
        let current = collector.report()?;
        samples.add(&previous, &current, signals);
        previous = current;
    }
    Ok((samples, previous))
}

fn table(report: &Report) -> String {
    let mut out = String::new();
    let c = &report.change;
    let _ = writeln!(
        out,
        "{} at {:?}: {} -> {}{}",
        c.knob,
        c.scope,
        c.old,
        c.new,
        if c.reverted { " (reverted)" } else { "" }
    );
    if report.verdicts.is_empty() {
        let _ = writeln!(out, "no workload had load on both sides of the change");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<50} {:<22} {:>9} {:>9} {:>9} {:>19} {:>8} {:>6}  VERDICT",
        "WORKLOAD", "SIGNAL", "BEFORE", "AFTER", "EFFECT", "95% CI", "P", "LOAD"
    );
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
    for v in &report.verdicts {
        let name = match (&v.namespace, &v.pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}/{}", v.container.as_deref().unwrap_or("")),
            _ => v.cgroup_path.clone().unwrap_or_default(),
        };
        let signal = serde_name(&v.signal);
        let verdict = serde_name(&v.comparison.verdict);
        let load = v
            .load_change
            .map_or_else(|| "-".to_string(), |l| format!("x{l:.2}"));
        let _ = writeln!(
            out,
            "{:<50} {:<22} {:>9} {:>9} {:>9} {:>19} {:>8.4} {:>6}  {verdict}",
            name.chars()
                .rev()
                .take(50)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>(),
            signal,
            num(v.before),
            num(v.after),
            num(Some(v.comparison.effect)),
            format!(
                "[{}, {}]",
                num(Some(v.comparison.ci95[0])),
                num(Some(v.comparison.ci95[1]))
            ),
            v.comparison.p_value,
            load,
        );
    }
    out
}
