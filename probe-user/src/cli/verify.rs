//! `tuneprobe verify`: change one knob (or run a command that changes something) between
//! two measurement windows and judge, per workload, whether the signal it targets moved;
//! or, with `--watch`, judge every change anyone makes to a known knob.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    kernel::loader::LoadOptions,
    kernel::loader::Probe,
    kernel::sockdiag,
    output::serde_name,
    report::Snapshot,
    signals::measure::Measure,
    tuning::{self, Scope},
    verify::{
        self, Affected, ChangeRecord, ChangeReport, Expectation, KnobAt, Plan, PlanTarget, Samples,
        Target, Watcher, Windows, WorkloadVerdict,
    },
    views::plot,
    window::Collector,
    workloads::cgroup::{CgroupPaths, Hierarchies, parse_kube_path},
};
use anyhow::{Context as _, bail, ensure};
use serde::Serialize;

use super::snapshot::parse_duration;

#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Change one knob and judge, per workload, whether its signal improved",
    long_about = "Measure a baseline window, apply KNOB=VALUE (or run --exec CMD), measure an \
                  after window, and compare the signal the knob should move, normalised by \
                  the load it acts on (throttled time and throttled periods per period for a \
                  cpu quota, listen overflows per connection attempt for somaxconn, \
                  SOCKET_RCVBUFF drops per datagram for rmem_default, ...), per workload: \
                  Mann-Whitney U \
                  test and Hodges-Lehmann shift with a 95% interval; verdict improved, \
                  regressed, no significant change or insufficient data. With --watch, judge \
                  every change anyone makes to a knob of `tuneprobe tuning`.",
    after_help = "Examples:\n  \
                  tuneprobe verify --apply cpu.cfs_quota_us=100000 --cgroup /sys/fs/cgroup/cpu/kubepods/burstable/pod.../c1 --revert\n  \
                  tuneprobe verify --apply net.core.somaxconn=65535 --pod 5f1c...-uid --plot somaxconn.svg\n  \
                  tuneprobe verify --exec 'nft delete table inet chaos' --signal retransmit_ratio --json\n  \
                  tuneprobe verify --apply net.core.somaxconn=65535 --netns shop --expect listen_overflow_ratio:lower:50%\n  \
                  tuneprobe advise --json | tuneprobe verify --plan -\n  \
                  tuneprobe verify --watch --after 60s"
)]
#[command(group(clap::ArgGroup::new("judged").args(["signals", "expectations"]).multiple(true)))]
pub(super) struct Args {
    /// The change: a sysctl (`net.core.somaxconn=65535`), a cgroup file
    /// (`cpu.cfs_quota_us=100000`) or a block queue file (`queue/scheduler=none`).
    #[arg(long, value_name = "KNOB=VALUE", conflicts_with_all = ["exec", "watch"])]
    apply: Option<String>,

    /// A change tuneprobe has no knob for (an nft rule, a DNS server's config): run CMD
    /// with `sh -c` between the windows; needs --signal or --expect.
    #[arg(
        long,
        value_name = "CMD",
        conflicts_with = "watch",
        requires = "judged"
    )]
    exec: Option<String>,

    /// With --exec and --revert: the command that undoes it.
    #[arg(long, value_name = "CMD", requires = "exec")]
    revert_with: Option<String>,

    /// Judge this signal instead of the knob's own (repeatable; with --watch, for every
    /// change); "What is judged" in docs/verify.md lists them all (retransmit_ratio,
    /// cpu_throttled_ms_per_period, rcvbuf_drop_ratio, dns_latency_ms, ...).
    #[arg(long = "signal", id = "signals", value_name = "SIGNAL", value_parser = parse_signal)]
    signals: Vec<Measure>,

    /// Predict, before measuring, that MEASURE moves lower or higher by at least
    /// MIN_EFFECT of its before median (default 10%), e.g. listen_overflow_ratio:lower:50%;
    /// judged one-sided as `as predicted`, `not as predicted`, `opposite` or `insufficient
    /// data`, the other verdicts marked exploratory (repeatable; judged too when not the
    /// knob's own; with --watch, on each change of a knob it belongs to).
    #[arg(
        long = "expect",
        id = "expectations",
        value_name = "MEASURE:lower|higher[:MIN_EFFECT]",
        value_parser = parse_expectation
    )]
    expectations: Vec<Expectation>,

    /// Make the change one advice of `tuneprobe advise --json` recommends (FILE, or - for
    /// stdin: one advice object, or an advise output with exactly one): --apply
    /// KNOB=RECOMMENDED at its target, with --expect its prediction.
    #[arg(
        long,
        value_name = "FILE|-",
        conflicts_with_all = ["apply", "exec", "watch", "expectations", "netns", "pod", "cgroup", "device"]
    )]
    plan: Option<PathBuf>,

    /// Run until stopped (or --for), judging every change anyone makes to a known knob;
    /// interim verdicts while each after window fills.
    #[arg(long)]
    watch: bool,

    /// With --watch: stop after this long; with --ab: measure this long (default 60s).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, conflicts_with_all = ["apply", "exec"])]
    duration: Option<Duration>,

    /// Change a sysctl inside this network namespace (a name under /run/netns or a path
    /// such as /proc/PID/ns/net); only its workloads are judged.
    #[arg(long, value_name = "NAME|PATH", conflicts_with_all = ["cgroup", "device", "pod"])]
    netns: Option<String>,

    /// The pod with this UID: a sysctl changes in its network namespace, a cgroup file
    /// in its cgroup; only its containers are judged.
    #[arg(long, value_name = "UID", conflicts_with_all = ["cgroup", "device"])]
    pod: Option<String>,

    /// Change a file of this cgroup directory; only workloads below it are judged.
    #[arg(long, value_name = "DIR", conflicts_with = "device")]
    cgroup: Option<PathBuf>,

    /// Change a queue file of this block device; block signals on it are judged.
    #[arg(long, value_name = "NAME")]
    device: Option<String>,

    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    before: Duration,

    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    after: Duration,

    /// One sample per workload per interval.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    interval: Duration,

    /// Put the old value back afterwards (also when interrupted).
    #[arg(long, conflicts_with = "watch")]
    revert: bool,

    /// Print JSON instead of tables (with --watch: one object per line).
    #[arg(long)]
    json: bool,

    /// Also draw the before/after samples of every verdict into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,

    #[command(flatten)]
    ab: super::verify_ab::AbArgs,

    #[command(flatten)]
    collector: super::CollectorArgs,
}

pub(super) fn parse_expectation(text: &str) -> Result<Expectation, String> {
    Expectation::parse(text).map_err(|e| e.to_string())
}

fn parse_signal(name: &str) -> Result<Measure, String> {
    Measure::parse(name).ok_or_else(|| {
        let names: Vec<String> = Measure::judged().map(Measure::name).collect();
        format!("unknown signal {name:?}; one of {}", names.join(", "))
    })
}

/// What is changed between the windows.
enum Change {
    Knob { knob: KnobAt, value: String },
    Command { run: String, undo: Option<String> },
}

pub(super) fn run(args: &Args, options: &LoadOptions) -> anyhow::Result<()> {
    if args.interval.is_zero() {
        bail!("--interval must be longer than zero");
    }
    if args.ab.ab {
        return ab(args, options);
    }
    let interrupted = interrupt_flag()?;
    if args.watch {
        return watch(args, options, &interrupted);
    }
    let args = &*with_plan(args)?;
    let (change, signals, affected) = plan(args)?;
    let old = old_value(&change)?;

    let (mut collector, before, previous) = measure_before(args, options, &interrupted)?;

    let (knob_name, new) = apply(&change, &old)?;
    let (at, affected_workloads) = (unix_now(), affected.workloads_in(&previous));
    eprintln!(
        "measuring {} after the change",
        humantime::format_duration(args.after)
    );
    let result = window(
        &mut collector,
        args.after,
        args.interval,
        Some(previous),
        &interrupted,
    );
    // Read the listeners before reverting: they are what the change left behind.
    let mut verdicts = match &result {
        Ok((after, last)) => verify::judge(&before, after, &signals, &affected, last),
        Err(_) => Vec::new(),
    };
    verify::explain_listen_backlogs(
        &knob_name,
        &old,
        &new,
        &mut verdicts,
        verify::listeners_by_netns(Path::new("/proc")),
    );
    verify::explain_new_sockets(&knob_name, &mut verdicts);
    verify::register_predictions(&mut verdicts, &args.expectations);
    if args.revert {
        revert(&change, &old)?;
    }
    result?;
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted during the after window; no verdict");
    }

    let report = ChangeReport {
        change: ChangeRecord {
            knob: knob_name,
            scope: scope_name(&change, &affected),
            owner: None,
            old: Some(old).filter(|o| !o.is_empty()),
            new: Some(new),
            at,
            affected: affected_workloads,
        },
        is_final: true,
        after_intervals: Windows::after_intervals(&Windows {
            before: args.before,
            after: args.after,
            interval: args.interval,
        }),
        signals,
        notes: verify::report_notes(&verdicts),
        verdicts,
    };
    print_report(args, report)
}

/// `--ab`: the options it shares with the rest of `verify`, handed to its own module.
fn ab(args: &Args, options: &LoadOptions) -> anyhow::Result<()> {
    let shared = super::verify_ab::Shared {
        signals: &args.signals,
        duration: args.duration,
        interval: args.interval,
        json: args.json,
        collector: &args.collector,
    };
    super::verify_ab::run(&args.ab, &shared, options)
}

/// Set by SIGINT or SIGTERM, which end the windows early; a changed knob still goes
/// back.
pub(super) fn interrupt_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .context("installing the signal handler")?;
    }
    Ok(interrupted)
}

/// The knob's value before the change (empty for a command).
fn old_value(change: &Change) -> anyhow::Result<String> {
    Ok(match change {
        Change::Knob { knob, .. } => knob
            .read()
            .with_context(|| format!("reading {} at {:?}", knob.name, knob.target))?,
        Change::Command { .. } => String::new(),
    })
}

/// Loads the programs, drops the privileges the rest does not need, and measures the
/// before window: the collector, its samples and the last snapshot.
fn measure_before(
    args: &Args,
    options: &LoadOptions,
    interrupted: &AtomicBool,
) -> anyhow::Result<(Collector, Samples, Snapshot)> {
    let probe = Probe::load(options)?;
    crate::privileges::after_attach(crate::privileges::needs::VERIFY);
    let mut collector = Collector::start_with(probe, args.collector.options()?)?;
    eprintln!(
        "ready: measuring {} before the change",
        humantime::format_duration(args.before)
    );
    let (before, previous) = window(
        &mut collector,
        args.before,
        args.interval,
        None,
        interrupted,
    )?;
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted before the change; nothing was touched");
    }
    Ok((collector, before, previous))
}

/// Makes the change; returns the knob's name (`exec` for a command) and its new value.
fn apply(change: &Change, old: &str) -> anyhow::Result<(String, String)> {
    Ok(match change {
        Change::Knob { knob, value } => {
            knob.write(value)
                .with_context(|| format!("writing {}={value}", knob.name))?;
            eprintln!("changed {}: {old} -> {value}", knob.name);
            (knob.name.clone(), value.clone())
        }
        Change::Command { run, .. } => {
            shell(run)?;
            eprintln!("changed: ran {run}");
            ("exec".to_string(), run.clone())
        }
    })
}

/// `--revert`: the old value back, or the `--revert-with` command.
fn revert(change: &Change, old: &str) -> anyhow::Result<()> {
    match change {
        Change::Knob { knob, .. } => {
            knob.write(old)
                .with_context(|| format!("reverting {} to {old}", knob.name))?;
            eprintln!("reverted {} to {old}", knob.name);
        }
        Change::Command {
            undo: Some(undo), ..
        } => {
            shell(undo)?;
            eprintln!("reverted: ran {undo}");
        }
        Change::Command { undo: None, .. } => {
            eprintln!("--revert without --revert-with: nothing to run");
        }
    }
    Ok(())
}

/// The report as JSON (with `reverted`) or as the table, and the plot if asked for.
fn print_report(args: &Args, report: ChangeReport) -> anyhow::Result<()> {
    let reverted = args.revert;
    if args.json {
        #[derive(Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            report: &'a ChangeReport,
            reverted: bool,
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Json {
                report: &report,
                reverted
            })?
        );
    } else {
        print!("{}", text(&report, reverted));
    }
    if let Some(path) = &args.plot {
        write_plot(path, &[report])?;
    }
    Ok(())
}

/// `--watch`: a report whenever a change's verdicts move forward.
fn watch(args: &Args, options: &LoadOptions, interrupted: &AtomicBool) -> anyhow::Result<()> {
    let probe = Probe::load(options)?;
    crate::privileges::after_attach(crate::privileges::needs::VERIFY);
    let mut collector = Collector::start_with(probe, args.collector.options()?)?;
    let mut watcher = Watcher::new(Windows {
        before: args.before,
        after: args.after,
        interval: args.interval,
    })
    .judging(args.signals.clone())
    .expecting(args.expectations.clone());
    eprintln!(
        "ready: watching every knob of `tuneprobe tuning`; verdicts after {} of samples",
        humantime::format_duration(args.after)
    );
    let started = Instant::now();
    let mut finished = Vec::new();
    while !interrupted.load(Ordering::Relaxed)
        && args.duration.is_none_or(|d| started.elapsed() < d)
    {
        let snapshot = collector.report()?;
        let inventory = tuning::this_node().context("reading the tuning inventory")?;
        for report in watcher.observe(snapshot, inventory, unix_now()) {
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", text(&report, false));
            }
            std::io::stdout().flush()?;
            if report.is_final {
                finished.push(report);
                if let Some(path) = &args.plot {
                    write_plot(path, &finished)?;
                }
            }
        }
        sleep_unless(args.interval, interrupted);
    }
    Ok(())
}

pub(super) fn sleep_unless(length: Duration, interrupted: &AtomicBool) {
    let until = Instant::now() + length;
    while !interrupted.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn shell(command: &str) -> anyhow::Result<()> {
    let status = Command::new("sh")
        .args(["-c", command])
        .status()
        .with_context(|| format!("running {command}"))?;
    if !status.success() {
        bail!("{command} failed: {status}");
    }
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The change, the signals to judge and the workloads it affects.
fn plan(args: &Args) -> anyhow::Result<(Change, Vec<Measure>, Affected)> {
    let (change, name) = match (&args.apply, &args.exec) {
        (Some(apply), _) => {
            let (name, value) = apply.split_once('=').context("--apply takes KNOB=VALUE")?;
            let (target, _) = target(args, name)?;
            let change = Change::Knob {
                knob: KnobAt {
                    name: name.to_string(),
                    target,
                },
                value: value.to_string(),
            };
            (change, Some(name))
        }
        (None, Some(run)) => (
            Change::Command {
                run: run.clone(),
                undo: args.revert_with.clone(),
            },
            None,
        ),
        (None, None) => bail!("say what to change: --apply KNOB=VALUE, --exec CMD or --watch"),
    };
    let mut signals = if args.signals.is_empty() {
        let name = name.unwrap_or_default();
        let signals = tuning::measures_for(name);
        if signals.is_empty() && args.expectations.is_empty() {
            let why = tuning::knob_named(name).map_or_else(
                || "it is not a knob of tuneprobe's table".to_string(),
                |k| k.why.split_whitespace().collect::<Vec<_>>().join(" "),
            );
            bail!(
                "tuneprobe judges {name} on no signal ({why}); choose one with --signal \
                 (judged knobs: {})",
                tuning::judged_knobs()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        signals.to_vec()
    } else {
        args.signals.clone()
    };
    // A predicted measure is judged, whether or not it is one of the knob's own.
    for (i, e) in args.expectations.iter().enumerate() {
        ensure!(
            args.expectations[..i]
                .iter()
                .all(|o| o.measure != e.measure),
            "--expect predicts {} twice",
            e.measure.name()
        );
        if !signals.contains(&e.measure) {
            signals.push(e.measure);
        }
    }
    let (_, affected) = target(args, name.unwrap_or(""))?;
    Ok((change, signals, affected))
}

/// `--plan FILE`: the arguments its advice stands for (`--apply`, the target option,
/// `--expect`), said on stderr before anything is measured; without it, `args` as given.
fn with_plan(args: &Args) -> anyhow::Result<std::borrow::Cow<'_, Args>> {
    let Some(file) = &args.plan else {
        return Ok(std::borrow::Cow::Borrowed(args));
    };
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the plan from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let plan = Plan::parse(&text).with_context(|| format!("--plan {}", file.display()))?;
    eprintln!("plan: {plan}");
    let mut planned = args.clone();
    planned.apply = Some(format!("{}={}", plan.knob, plan.value));
    if let Some((remount, undo)) = plan.remounts() {
        planned.apply = None;
        planned.exec = Some(remount);
        planned.revert_with = Some(undo);
    }
    planned.expectations = vec![plan.expectation];
    match plan.target {
        None | Some(PlanTarget::Mount(_)) => {}
        Some(PlanTarget::Pod(uid)) => planned.pod = Some(uid),
        Some(PlanTarget::Netns(netns)) => planned.netns = Some(netns),
        Some(PlanTarget::Cgroup(dir)) => planned.cgroup = Some(dir.into()),
        Some(PlanTarget::Device(device)) => planned.device = Some(device),
    }
    Ok(std::borrow::Cow::Owned(planned))
}

/// The pod's cgroup path (relative, `/kubepods/.../pod<uid>`) in a hierarchy.
fn pod_path(root: &Path, uid: &str) -> anyhow::Result<String> {
    CgroupPaths::new(root.to_path_buf())
        .known()
        .map(|(_, path)| path.to_string())
        .filter_map(|path| {
            let identity = parse_kube_path(&path);
            (identity.pod_uid.as_deref() == Some(uid))
                .then_some(identity.pod_cgroup)
                .flatten()
        })
        .min_by_key(String::len)
        .with_context(|| format!("no cgroup of pod {uid} under {}", root.display()))
}

/// Where the knob is, and the workloads it affects. A knob of the table lives where its
/// scope says; another is a file of the cgroup, namespace or device the options name
/// (with `--pod`, a cgroup file when the pod's cgroup has one of that name, otherwise a
/// sysctl of the pod's network namespace).
fn target(args: &Args, knob: &str) -> anyhow::Result<(Target, Affected)> {
    let scope = tuning::knob_named(knob).map(|k| k.scope);
    ensure!(
        scope != Some(Scope::Resolver),
        "{knob} is a DNS resolver deployment, not a knob tuneprobe writes: make the change \
         with --exec CMD and judge it with --expect dns_latency_p99_ms:lower"
    );
    ensure!(
        scope != Some(Scope::Mount),
        "{knob} is a mount option, changed by remounting: use --exec 'mount -o remount,{knob} \
         MOUNTPOINT' with --revert-with"
    );
    if let Some(uid) = &args.pod {
        return pod_target(uid, knob, scope);
    }
    if let Some(dir) = &args.cgroup {
        let hierarchies = Hierarchies::of_this_node();
        let roots = [&hierarchies.cpu, &hierarchies.blkio, &hierarchies.unified];
        let scope = roots
            .into_iter()
            .flatten()
            .find_map(|root| dir.strip_prefix(root).ok())
            .map(|relative| format!("/{}", relative.display()))
            .context("--cgroup must be a directory in a cgroup hierarchy")?;
        return Ok((Target::Cgroup(dir.clone()), Affected::Cgroup(scope)));
    }
    if let Some(netns) = &args.netns {
        let path = if netns.contains('/') {
            PathBuf::from(netns)
        } else {
            Path::new("/run/netns").join(netns)
        };
        let inode = sockdiag::netns_inode(&path)
            .with_context(|| format!("network namespace {}", path.display()))?;
        return Ok((Target::Netns(path), Affected::Netns { inode, owner: None }));
    }
    if let Some(device) = &args.device {
        return Ok((
            Target::Device(device.clone()),
            Affected::Device(device.clone()),
        ));
    }
    Ok((Target::Node, Affected::Node))
}

/// `--pod UID`: the knob's file in the pod's cgroup, in whichever hierarchy has it, or
/// the sysctl in the pod's network namespace.
fn pod_target(uid: &str, knob: &str, scope: Option<Scope>) -> anyhow::Result<(Target, Affected)> {
    let hierarchies = Hierarchies::of_this_node();
    let roots = [&hierarchies.unified, &hierarchies.cpu, &hierarchies.blkio];
    let dirs: Vec<(PathBuf, String)> = roots
        .into_iter()
        .flatten()
        .filter_map(|root| {
            let path = pod_path(root, uid).ok()?;
            Some((root.join(path.trim_start_matches('/')), path))
        })
        .collect();
    let (_, pod) = dirs
        .first()
        .with_context(|| format!("no cgroup of pod {uid} in any cgroup hierarchy"))?;
    let pod = pod.clone();
    let in_cgroup = matches!(scope, Some(Scope::Cgroup) | None);
    if let Some((dir, _)) = dirs
        .iter()
        .find(|(dir, _)| in_cgroup && dir.join(knob).exists())
    {
        return Ok((Target::Cgroup(dir.clone()), Affected::Cgroup(pod)));
    }
    ensure!(
        scope != Some(Scope::Cgroup),
        "pod {uid}'s cgroup has no {knob} in any hierarchy (cgroup v1 and v2 name their \
         files differently: cpu.max is cfs_quota_us and cfs_period_us on v1)"
    );
    // The pod's namespace, through any of its processes.
    let process = crate::workloads::procfs::processes(Path::new("/proc"))
        .into_iter()
        .find(|p| parse_kube_path(&p.cgroup).pod_uid.as_deref() == Some(uid))
        .with_context(|| format!("no running process of pod {uid}"))?;
    let ns = sockdiag::netns_of_pid(Path::new("/proc"), process.pid);
    let inode = sockdiag::netns_inode(&ns)?;
    Ok((
        Target::Netns(ns),
        Affected::Netns {
            inode,
            owner: Some(pod),
        },
    ))
}

fn scope_name(change: &Change, affected: &Affected) -> String {
    match (change, affected) {
        (Change::Knob { knob, .. }, _) => match &knob.target {
            Target::Node => "node".into(),
            Target::Netns(path) => format!("netns:{}", path.display()),
            Target::Cgroup(dir) => format!("cgroup:{}", dir.display()),
            Target::Device(device) => format!("device:{device}"),
        },
        (Change::Command { .. }, Affected::Node) => "node".into(),
        (Change::Command { .. }, Affected::Cgroup(path)) => format!("cgroup:{path}"),
        (Change::Command { .. }, Affected::Netns { inode, .. }) => format!("netns:{inode}"),
        (Change::Command { .. }, Affected::Device(device)) => format!("device:{device}"),
    }
}

/// Samples every workload once per interval for `length`.
fn window(
    collector: &mut Collector,
    length: Duration,
    interval: Duration,
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
        sleep_unless(interval, interrupted);
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        let current = collector.report()?;
        samples.add(&previous, &current, unix_now());
        previous = current;
    }
    Ok((samples, previous))
}

fn workload_name(v: &WorkloadVerdict) -> String {
    let name = v.workload.display_name();
    match &v.device {
        Some(device) => format!("{name} on {device}"),
        None => name,
    }
}

fn write_plot(path: &Path, reports: &[ChangeReport]) -> anyhow::Result<()> {
    let title = match reports {
        [one] => format!(
            "{} at {}: {} -> {}",
            one.change.knob,
            one.change.scope,
            one.change.old.as_deref().unwrap_or("?"),
            one.change.new.as_deref().unwrap_or("?")
        ),
        _ => format!("{} tuning changes", reports.len()),
    };
    let panels: Vec<(String, &WorkloadVerdict)> = reports
        .iter()
        .flat_map(|r| {
            r.verdicts.iter().map(move |v| {
                let label = if reports.len() > 1 {
                    format!(
                        "{} ({}): {}",
                        r.change.knob,
                        r.change.scope,
                        workload_name(v)
                    )
                } else {
                    workload_name(v)
                };
                (label, v)
            })
        })
        .collect();
    std::fs::write(path, plot::svg(&title, &panels))
        .with_context(|| format!("writing {}", path.display()))
}

/// The report for a person: the change, a table of verdicts, notes, and a before/after
/// picture per verdict.
fn text(report: &ChangeReport, reverted: bool) -> String {
    let mut out = String::new();
    let c = &report.change;
    let _ = writeln!(
        out,
        "{} at {}: {} -> {}{}{}",
        c.knob,
        c.scope,
        c.old.as_deref().unwrap_or("(none)"),
        c.new.as_deref().unwrap_or("(none)"),
        if reverted { " (reverted)" } else { "" },
        if report.is_final {
            String::new()
        } else {
            format!(" [interim, {} intervals after]", report.after_intervals)
        }
    );
    for note in &report.notes {
        let _ = writeln!(out, "  {note}");
    }
    if report.verdicts.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<50} {:<22} {:>9} {:>9} {:>9} {:>21} {:>8} {:>6}  VERDICT",
        "WORKLOAD", "SIGNAL", "BEFORE", "AFTER", "EFFECT", "95% CI", "P", "LOAD"
    );
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
    for v in &report.verdicts {
        let name = workload_name(v);
        let tail: String = {
            let chars: Vec<char> = name.chars().collect();
            chars[chars.len().saturating_sub(50)..].iter().collect()
        };
        let load = v
            .load_change
            .map_or_else(|| "-".to_string(), |l| format!("x{l:.2}"));
        let _ = writeln!(
            out,
            "{tail:<50} {:<22} {:>9} {:>9} {:>9} {:>21} {:>8.4} {:>6}  {}",
            v.signal.name(),
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
            verdict_cell(v)
        );
    }
    details(&mut out, &report.verdicts);
    out
}

/// A verdict with its role: `improved [as predicted]`, `no significant change
/// [exploratory]`, or the verdict alone when nothing was predicted.
fn verdict_cell(v: &WorkloadVerdict) -> String {
    let verdict = serde_name(&v.comparison.verdict);
    match (&v.prediction, v.exploratory) {
        (Some(p), _) => format!("{verdict} [{}]", serde_name(&p.outcome)),
        (None, true) => format!("{verdict} [exploratory]"),
        (None, false) => verdict,
    }
}

/// `prediction: listen_overflow_ratio lower by >= 50%: as predicted (effect -0.19, 95%
/// CI [-0.21, -0.17], one-sided p 0.001)`.
fn prediction_line(v: &WorkloadVerdict) -> Option<String> {
    let p = v.prediction.as_ref()?;
    let c = &v.comparison;
    Some(format!(
        "prediction: {}: {} (effect {:.4}, 95% CI [{:.4}, {:.4}], one-sided p {:.4})",
        p.claim(v.signal),
        serde_name(&p.outcome),
        c.effect,
        c.ci95[0],
        c.ci95[1],
        p.p_value
    ))
}

/// Per verdict: its picture, prediction, notes and listeners.
fn details(out: &mut String, verdicts: &[WorkloadVerdict]) {
    for v in verdicts {
        let per = v.load.map_or_else(String::new, |l| format!(" (per {l})"));
        let _ = writeln!(
            out,
            "\n{} — {}{per}: {}",
            workload_name(v),
            v.signal.name(),
            verdict_cell(v)
        );
        out.push_str(&plot::terminal(v, 50));
        if let Some(line) = prediction_line(v) {
            let _ = writeln!(out, "  {line}");
        }
        for note in &v.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        for l in &v.listeners {
            let _ = writeln!(
                out,
                "  listener {} backlog {} queued {}",
                l.address, l.backlog, l.queued
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{Parser as _, error::ErrorKind};

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        let all = ["tuneprobe", "verify"].iter().chain(args);
        match Cli::try_parse_from(all)?.command {
            Command::Verify(args) => Ok(*args),
            _ => unreachable!("verify parses as verify"),
        }
    }

    fn refused(args: &[&str]) -> (ErrorKind, String) {
        let err = parse(args).expect_err("refused");
        (err.kind(), err.to_string())
    }

    #[test]
    fn expect_is_repeatable_and_counts_as_a_signal_for_exec() {
        let args = parse(&[
            "--apply",
            "net.core.somaxconn=1024",
            "--expect",
            "listen_overflow_ratio:lower:50%",
            "--expect",
            "srtt_ms:higher",
        ])
        .unwrap();
        let names: Vec<String> = args.expectations.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "listen_overflow_ratio lower by >= 50%",
                "srtt_ms higher by >= 10%"
            ]
        );
        // The knob's own measure first, then the predicted one it lacks.
        let (_, signals, _) = plan(&args).unwrap();
        assert_eq!(signals, [Measure::ListenOverflowRatio, Measure::SrttMs]);

        let exec = parse(&["--exec", "true", "--expect", "retransmit_ratio:lower"]).unwrap();
        assert_eq!(plan(&exec).unwrap().1, [Measure::RetransmitRatio]);
        let (kind, _) = refused(&["--exec", "true"]);
        assert_eq!(kind, ErrorKind::MissingRequiredArgument);
        // A knob judged on nothing is judged on what is predicted of it.
        let wmem = parse(&[
            "--apply",
            "net.ipv4.tcp_wmem=4096 16384 4194304",
            "--expect",
            "retransmit_ratio:lower",
        ])
        .unwrap();
        assert_eq!(plan(&wmem).unwrap().1, [Measure::RetransmitRatio]);
        let twice = parse(&[
            "--apply",
            "net.core.somaxconn=1024",
            "--expect",
            "srtt_ms:lower",
            "--expect",
            "srtt_ms:higher",
        ])
        .unwrap();
        let err = plan(&twice).err().expect("refused");
        assert_eq!(err.to_string(), "--expect predicts srtt_ms twice");
    }

    #[test]
    fn a_bad_expect_says_what_is_wrong() {
        for (expect, says) in [
            ("overflows:lower", "unknown measure \"overflows\"; one of "),
            (
                "listen_overflow_ratio:sideways",
                "unknown direction \"sideways\"",
            ),
            (
                "listen_overflow_ratio:lower:half",
                "minimum effect \"half\"",
            ),
            (
                "listen_overflow_ratio",
                "expected MEASURE:lower|higher[:MIN_EFFECT]",
            ),
        ] {
            let (kind, message) = refused(&["--apply", "a=1", "--expect", expect]);
            assert_eq!(kind, ErrorKind::ValueValidation, "{message}");
            assert!(message.contains(says), "{expect}: {message}");
        }
    }

    #[test]
    fn plan_stands_for_apply_target_and_expect() {
        let file = std::env::temp_dir().join(format!("tuneprobe-plan-{}.json", std::process::id()));
        std::fs::write(
            &file,
            r#"{"advice": [{"knob": "net.core.somaxconn", "scope": "netns",
                "target": {"option": "--netns", "value": "shop"}, "recommended": "65535",
                "prediction": {"measure": "listen_overflow_ratio", "direction": "lower",
                               "min_effect": 0.5}}]}"#,
        )
        .unwrap();
        let path = file.display().to_string();
        let args = parse(&["--plan", &path]).unwrap();
        let planned = with_plan(&args);
        std::fs::remove_file(&file).unwrap();
        let planned = planned.unwrap();
        assert_eq!(planned.apply.as_deref(), Some("net.core.somaxconn=65535"));
        assert_eq!(planned.netns.as_deref(), Some("shop"));
        assert!(planned.pod.is_none() && planned.cgroup.is_none() && planned.device.is_none());
        assert_eq!(
            planned.expectations[0].to_string(),
            "listen_overflow_ratio lower by >= 50%"
        );
        // Without --plan, the arguments as given.
        let plain = parse(&["--apply", "a=1"]).unwrap();
        assert!(matches!(
            with_plan(&plain).unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
        for other in [
            &["--apply", "a=1"][..],
            &["--exec", "true"],
            &["--watch"],
            &["--expect", "srtt_ms:lower"],
            &["--pod", "uid"],
            &["--netns", "shop"],
            &["--cgroup", "/sys/fs/cgroup/x"],
            &["--device", "sda"],
        ] {
            let mut args = vec!["--plan", "advice.json"];
            args.extend_from_slice(other);
            assert_eq!(refused(&args).0, ErrorKind::ArgumentConflict, "{other:?}");
        }
        let missing = parse(&["--plan", "/nonexistent/advice.json"]).unwrap();
        let err = with_plan(&missing).expect_err("refused");
        assert!(
            format!("{err:#}").starts_with("reading /nonexistent/advice.json: "),
            "{err:#}"
        );
    }
}
