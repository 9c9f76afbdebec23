//! `cargo xtask bench`: what tuneprobe costs, next to an equivalent bpftrace program and
//! to nothing attached, measured in one run on this machine.
//!
//! 1. Workload impact: iperf3 TCP between two namespaces, UDP into a port that drops,
//!    DNS against dnsmasq, direct-IO reads from a loop device, TCP connections opened
//!    and closed as fast as one thread can; rounds interleave the
//!    three modes (A B C, B C A, C A B) so drift cancels, and medians are compared.
//! 2. Load mix (about 100k drops/s, 10k DNS queries/s, 5k IOPS, 2k TCP connections/s,
//!    retransmits, a throttled busy loop) under bpftrace and tuneprobe, with the kernel's run-time
//!    statistics on: kernel cost per event of every program, agent CPU and peak RSS.
//! 3. Scale: 100, 1,000, 10,000 and 30,000 cgroups with a drop each: RSS, `/metrics`
//!    time, snapshot time, attach time, and the RSS each added workload costs; with
//!    `--baseline`, another build measured at each point beside the one under test.
//!
//! Nothing global is changed: the statistics are on only while this process holds its
//! BPF_ENABLE_STATS fd, and everything the run creates is removed (`lab::Lab`'s drop),
//! on errors and Ctrl-C too.

mod agent;
mod lab;
mod load;
mod report;
pub mod soak;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use tuneprobe_lab::{Proc, pause, sh};

use self::{
    agent::{Agent, Mode, StatsEnabled, Tools, Usage, http_get, prepare, prog_stats},
    lab::{IPERF_LOSSY_PORT, IPERF_PORT, Lab},
    report::{
        AgentCost, AgentCosts, Attach, AttachTimes, BySample, Comparison, Config, FloorValue,
        Growth, KernelCost, LoadMix, Machine, Report, ScaleRun, ScaleStage, Target, WorkloadImpact,
        median, ratio,
    },
};
use crate::{is_root, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A quick run (seconds, tiny loads) through every stage and the JSON report, so
    /// the harness itself is tested; its numbers mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Where to write the JSON report.
    #[arg(long, value_name = "FILE", default_value = "target/bench/report.json")]
    out: PathBuf,
    /// The tuneprobe binary to measure (default: build and use target/release/tuneprobe).
    #[arg(long, value_name = "PATH")]
    tuneprobe: Option<PathBuf>,
    /// Skip `xtask setup` (the packages must be installed already).
    #[arg(long)]
    no_setup: bool,
    /// Run this stage alone (the scale stage takes two to four minutes, the whole run
    /// about eight).
    #[arg(long, value_enum, value_name = "STAGE")]
    only: Option<Stage>,
    /// Another tuneprobe binary (the current release, say) measured in the scale stage
    /// beside the one under test, at each point in turn, in the same run.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// The scale stage's points, in workloads (default: 100,1000,10000,30000; the
    /// smoke run's: 50).
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    scale: Vec<usize>,
    /// In the scale stage, keep `serve` running this long once every workload is
    /// exported before measuring it, with `--advice-window 60s`: its steady state, with
    /// the 60 s of samples the change watcher keeps and the adviser's eight snapshots
    /// (a default run measures within seconds, before either has filled).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    hold: u64,
    /// Internal: the scale stage's worker (moves itself through the cgroups under DIR).
    #[arg(long, hide = true, value_name = "DIR")]
    fill_cgroups: Option<PathBuf>,
    /// Internal: the network namespace the worker sends from.
    #[arg(long, hide = true, value_name = "NAME")]
    fill_netns: Option<String>,
}

/// A stage that can run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Stage {
    Scale,
}

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Plan {
    rounds: usize,
    workload_secs: u32,
    mix_rounds: usize,
    mix_secs: u32,
    drops_per_s: f64,
    dns_qps: f64,
    block_iops: u32,
    connects_per_s: f64,
    scale: Vec<usize>,
    /// One stage alone (`--only`).
    only: Option<Stage>,
    /// How long `serve` runs at each scale point before it is measured (`--hold`).
    hold: Duration,
}

impl Plan {
    fn full() -> Self {
        Self {
            rounds: 5,
            workload_secs: 4,
            mix_rounds: 2,
            mix_secs: 10,
            drops_per_s: 100_000.0,
            dns_qps: 10_000.0,
            block_iops: 5_000,
            connects_per_s: 2_000.0,
            scale: vec![100, 1_000, 10_000, 30_000],
            only: None,
            hold: Duration::ZERO,
        }
    }

    fn smoke() -> Self {
        Self {
            rounds: 1,
            workload_secs: 1,
            mix_rounds: 1,
            mix_secs: 2,
            drops_per_s: 5_000.0,
            dns_qps: 500.0,
            block_iops: 200,
            connects_per_s: 100.0,
            scale: vec![50],
            only: None,
            hold: Duration::ZERO,
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(parent) = &args.fill_cgroups {
        let netns = args.fill_netns.as_deref().context("--fill-netns")?;
        return load::fill_cgroups(parent, netns);
    }
    ensure!(
        is_root(),
        "the benchmark loads eBPF programs and creates namespaces, cgroups and a loop \
         device: run as root"
    );
    let tuneprobe = prepare(args.no_setup, args.tuneprobe.as_ref())?;
    // With --no-setup (the smoke test) nothing installed them: name all that are
    // missing before a namespace is made.
    crate::test::preflight(&bench_tools(), [])?;
    let root = workspace_root();
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        root.join(&args.out)
    };
    let out_dir = out.parent().map(PathBuf::from).unwrap_or_default();
    fs::create_dir_all(&out_dir)?;
    // Private copies: a rebuild of the shared binary during the run must not change
    // what is measured halfway.
    let (tuneprobe, _remove_copy) = private_copy(&tuneprobe, &out_dir, "tuneprobe")?;
    let baseline = match &args.baseline {
        Some(path) => Some(private_copy(path, &out_dir, "baseline")?),
        None => None,
    };
    let tools = Tools {
        tuneprobe,
        baseline: baseline.as_ref().map(|(path, _)| path.clone()),
        serve_args: if args.hold > 0 {
            vec!["--advice-window".into(), "60s".into()]
        } else {
            Vec::new()
        },
        bpftrace_program: write_bpftrace_program(&out_dir)?,
        skb_consumed: skb_consumed()?,
        out_dir,
    };
    let mut plan = if args.smoke {
        Plan::smoke()
    } else {
        Plan::full()
    };
    if !args.scale.is_empty() {
        plan.scale.clone_from(&args.scale);
    }
    plan.only = args.only;
    plan.hold = Duration::from_secs(args.hold);
    let started = Instant::now();
    let mut report = bench(&plan, &tools, args.smoke)?;
    report.duration_s = started.elapsed().as_secs_f64();
    // The table reads the JSON, so that the two always agree.
    let report = serde_json::to_value(report)?;
    fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}", report::table(&report));
    println!(
        "report: {} ({:.0} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The programs the benchmark starts (lab.rs, load.rs, agent.rs, `machine`).
fn bench_tools() -> Vec<crate::test::Tool> {
    const PROGRAMS: &[&str] = &[
        "bpftrace", "iperf3", "fio", "dnsmasq", "nft", "ip", "ss", "bpftool", "losetup",
    ];
    crate::test::required_tools()
        .into_iter()
        .filter(|tool| PROGRAMS.contains(&tool.program.as_str()))
        .collect()
}

struct RemoveOnDrop(PathBuf);

/// A copy of the binary `path` in `dir`, named `name` and this run, removed on drop.
fn private_copy(path: &Path, dir: &Path, name: &str) -> anyhow::Result<(PathBuf, RemoveOnDrop)> {
    let copy = dir.join(format!("{name}-{}", std::process::id()));
    fs::copy(path, &copy).with_context(|| format!("copying {}", path.display()))?;
    Ok((copy.clone(), RemoveOnDrop(copy)))
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The bpftrace equivalents (xtask/bench/*.bt) as one program, plus a `ready` line that
/// BEGIN prints once every probe is attached.
fn write_bpftrace_program(out_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("xtask/bench");
    let mut program = String::from("BEGIN { printf(\"ready\\n\"); }\n");
    for script in ["drops", "retransmit", "block", "cpu", "dns", "connections"] {
        let path = dir.join(format!("{script}.bt"));
        program
            .push_str(&fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?);
        program.push('\n');
    }
    let path = out_dir.join("equivalent.bt");
    fs::write(&path, program)?;
    Ok(path)
}

/// `SKB_CONSUMED` from the kernel's BTF (enum values move between kernels).
fn skb_consumed() -> anyhow::Result<u32> {
    let out = sh(&[
        "bpftool",
        "btf",
        "dump",
        "file",
        "/sys/kernel/btf/vmlinux",
        "format",
        "c",
    ])?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("SKB_CONSUMED = "))
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .context("no SKB_CONSUMED in the kernel's BTF")
}

fn bench(plan: &Plan, tools: &Tools, smoke: bool) -> anyhow::Result<Report> {
    let id = std::process::id().to_string();
    let mut lab = Lab::new(&id)?;
    let mut attach: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
    let mut run_no = 0;
    let mut impact: BTreeMap<(&str, Mode), Vec<Rate>> = BTreeMap::new();
    let mut mix: BTreeMap<Mode, Vec<MixRun>> = BTreeMap::new();
    let mut floor = BTreeMap::new();
    if plan.only.is_none() {
        lab.start_servers()?;
        let device = lab.create_loop_device(64)?;
        let cpu_cgroup = lab.create_cpu_cgroup(&id)?;
        impact = impact_stage(plan, &lab, &device, tools, &mut run_no, &mut attach)?;
        let stats = StatsEnabled::new()?;
        let sinks = (device.as_str(), cpu_cgroup.as_path());
        mix = mix_stage(plan, &lab, sinks, tools, &mut run_no, &mut attach)?;
        floor = floor_stage(plan, &lab, tools, &mut run_no)?;
        drop(stats);
    }

    eprintln!("xtask bench: scale {:?}", plan.scale);
    let mut scale = ScaleStage::default();
    for (point, &count) in plan.scale.iter().enumerate() {
        let at = ScalePoint {
            point,
            count,
            hold: plan.hold,
        };
        scale_point(&mut lab, tools, at, &mut run_no, &mut attach, &mut scale)?;
    }
    drop(lab);

    Ok(assemble(plan, smoke, &impact, &mix, scale, &attach, floor))
}

/// Workload impact: each workload alone under each observer, in rotated rounds.
fn impact_stage(
    plan: &Plan,
    lab: &Lab,
    device: &str,
    tools: &Tools,
    run_no: &mut usize,
    attach: &mut BTreeMap<Mode, Vec<f64>>,
) -> anyhow::Result<BTreeMap<(&'static str, Mode), Vec<Rate>>> {
    eprintln!("xtask bench: workload impact, {} rounds", plan.rounds);
    let mut impact: BTreeMap<(&str, Mode), Vec<Rate>> = BTreeMap::new();
    for round in 0..plan.rounds {
        for k in 0..Mode::ALL.len() {
            let mode = Mode::ALL[(round + k) % Mode::ALL.len()];
            *run_no += 1;
            let agent = Agent::start(mode, tools, *run_no)?;
            if let Some(agent) = &agent {
                attach.entry(mode).or_default().push(ms(agent.attach));
            }
            let rates = impact_run(plan.workload_secs, lab, device)?;
            if let Some(agent) = agent {
                agent.stop()?;
            }
            print_impact_run(round, mode, &rates);
            for ((workload, _), rate) in UNITS.iter().zip(rates) {
                impact.entry((workload, mode)).or_default().push(rate);
            }
        }
    }
    Ok(impact)
}

/// The load mix under each observer, with the kernel's run-time statistics on.
fn mix_stage(
    plan: &Plan,
    lab: &Lab,
    (device, cpu_cgroup): (&str, &Path),
    tools: &Tools,
    run_no: &mut usize,
    attach: &mut BTreeMap<Mode, Vec<f64>>,
) -> anyhow::Result<BTreeMap<Mode, Vec<MixRun>>> {
    eprintln!("xtask bench: load mix, {} rounds", plan.mix_rounds);
    let observers = [Mode::Bpftrace, Mode::Tuneprobe];
    let mut mix: BTreeMap<Mode, Vec<MixRun>> = BTreeMap::new();
    for round in 0..plan.mix_rounds {
        for k in 0..observers.len() {
            let mode = observers[(round + k) % observers.len()];
            *run_no += 1;
            let agent = Agent::start(mode, tools, *run_no)?.context("an observer")?;
            attach.entry(mode).or_default().push(ms(agent.attach));
            let run = load_mix(plan, lab, device, cpu_cgroup, &agent)?;
            let output = agent.stop()?;
            if let (Mode::Bpftrace, Some(output)) = (mode, output) {
                bpftrace_saw_the_mix(&output)?;
            }
            print_mix_run(round, mode, &run);
            mix.entry(mode).or_default().push(run);
        }
    }
    Ok(mix)
}

/// One run of each workload alone for `secs`, in the order of [`UNITS`]: tcp, udp drops,
/// dns, block, connect.
fn impact_run(secs: u32, lab: &Lab, device: &str) -> anyhow::Result<[Rate; 5]> {
    let tcp = Rate::measure(|| {
        let bits_per_s = load::iperf3_result(
            &mut load::iperf3(lab, IPERF_PORT, secs, None)?,
            wait_for(secs),
        )?;
        Ok(bits_per_s / 1e6 * f64::from(secs))
    })?;
    let udp = Rate::measure(|| {
        let before = lab.dropped_in_b()?;
        join(load::udp_flood(lab, f64::from(secs), None)?)?;
        Ok((lab.dropped_in_b()? - before) as f64)
    })?;
    let dns = Rate::measure(|| {
        let answers: u64 = load::dns_load(lab, f64::from(secs), 1, None)?
            .into_iter()
            .map(join)
            .sum::<anyhow::Result<u64>>()?;
        Ok(answers as f64)
    })?;
    let block = Rate::measure(|| {
        let iops = load::fio_result(&mut load::fio(device, secs, None)?, wait_for(secs))?;
        Ok(iops * f64::from(secs))
    })?;
    let connect =
        Rate::measure(|| Ok(join(load::connect_load(lab, f64::from(secs), None)?)? as f64))?;
    Ok([tcp, udp, dns, block, connect])
}

/// The progress line of one impact run.
fn print_impact_run(round: usize, mode: Mode, rates: &[Rate; 5]) {
    let [tcp, udp, dns, block, connect] = rates;
    eprintln!(
        "  round {} {:<9}: tcp {:.0} Mbit/s, udp drops {:.0}/s, dns {:.0}/s, \
         block {:.0} IOPS, connect {:.0}/s; per busy CPU-second {:.0}, {:.0}, {:.0}, \
         {:.0}, {:.0}",
        round + 1,
        mode.name(),
        tcp.per_s,
        udp.per_s,
        dns.per_s,
        block.per_s,
        connect.per_s,
        tcp.per_cpu_s,
        udp.per_cpu_s,
        dns.per_cpu_s,
        block.per_cpu_s,
        connect.per_cpu_s,
    );
}

/// The maps of the bpftrace script that prove it saw the same events as tuneprobe.
const BPFTRACE_MAPS: [&str; 6] = [
    "@drops[",
    "@service_us[",
    "@throttled[",
    "@latency_us[",
    "@retransmits[",
    "@connect_attempts[",
];

/// Fails unless bpftrace's output under the load mix has each of its maps.
fn bpftrace_saw_the_mix(output: &str) -> anyhow::Result<()> {
    for map in BPFTRACE_MAPS {
        ensure!(
            output.contains(map),
            "bpftrace recorded no {map}] under the load mix: {output:.2000}"
        );
    }
    Ok(())
}

/// The progress line of one load-mix run.
fn print_mix_run(round: usize, mode: Mode, run: &MixRun) {
    eprintln!(
        "  round {} {:<9}: cpu {:.2}% of a core (programs {:.2}%), peak RSS {:.1} MiB; achieved {:.0} \
         drops/s, {:.0} DNS/s, {:.0} IOPS, {:.0} retransmits/s, {:.0} connections/s",
        round + 1,
        mode.name(),
        run.cpu_percent,
        run.bpf_cpu_percent,
        run.peak_rss_kib as f64 / 1024.0,
        run.drops_per_s,
        run.dns_qps,
        run.block_iops,
        run.retransmits_per_s,
        run.connects_per_s,
    );
}

/// What the cheapest possible programs cost per event on this machine, under the mix's
/// drop rate: an empty bpftrace program and a bare `count()` on the two hottest hooks.
/// Every per-cgroup program pays at least this, plus the reads that find its cgroup.
fn floor_stage(
    plan: &Plan,
    lab: &Lab,
    tools: &Tools,
    run_no: &mut usize,
) -> anyhow::Result<BTreeMap<String, FloorValue>> {
    eprintln!("xtask bench: floor (empty and count-only bpftrace programs)");
    // The cheapest programs there are on the hottest hooks and on a rare one: empty;
    // one count; a count per value of a field the tracepoint hands over (a per-CPU hash
    // lookup and nothing else: the least any count per workload or reason does).
    let programs = [
        (
            "empty",
            "tracepoint:skb:kfree_skb { }\ntracepoint:sched:sched_switch { }\n\
             tracepoint:tcp:tcp_retransmit_skb { }\n",
        ),
        (
            "count",
            "tracepoint:skb:kfree_skb { @drops = count(); }\n\
             tracepoint:sched:sched_switch { @switches = count(); }\n\
             tracepoint:tcp:tcp_retransmit_skb { @retransmits = count(); }\n",
        ),
        (
            "keyed_count",
            "tracepoint:skb:kfree_skb { @drops[args->reason] = count(); }\n\
             tracepoint:sched:sched_switch { @switches[args->next_pid] = count(); }\n\
             tracepoint:tcp:tcp_retransmit_skb { @retransmits[args->sport] = count(); }\n",
        ),
    ];
    let mut agents = Vec::new();
    for (label, body) in programs {
        let path = tools.out_dir.join(format!("floor-{label}.bt"));
        fs::write(&path, format!("BEGIN {{ printf(\"ready\\n\"); }}\n{body}"))?;
        *run_no += 1;
        let agent =
            Agent::start_with(Mode::Bpftrace, tools, *run_no, &path)?.context("bpftrace")?;
        agents.push((label, agent));
    }
    let before: Vec<_> = agents
        .iter()
        .map(|(_, a)| prog_stats(a.pid()))
        .collect::<anyhow::Result<_>>()?;
    let secs = plan.mix_secs.min(5);
    // The mix's drop rate, and retransmits as in the mix (rare: ~100/s).
    let mut lossy = load::iperf3(lab, IPERF_LOSSY_PORT, secs, Some("20M"))?;
    join(load::udp_flood(
        lab,
        f64::from(secs),
        Some(plan.drops_per_s),
    )?)?;
    load::iperf3_result(&mut lossy, wait_for(secs))?;
    let mut floor = BTreeMap::new();
    for ((label, agent), before) in agents.into_iter().zip(before) {
        let after = prog_stats(agent.pid())?;
        agent.stop()?;
        for (hook, name) in [
            ("kfree_skb", "kfree_skb"),
            ("sched_switch", "sched_switch"),
            // bpftrace's program names are cut at 15 characters.
            ("tcp_retransmit_skb", "tcp_retransmit_"),
        ] {
            let (Some(a), b) = (
                after.get(name),
                before.get(name).copied().unwrap_or_default(),
            ) else {
                bail!("no {hook} program in the {label} floor run");
            };
            let runs = a.run_cnt - b.run_cnt;
            let per_event =
                (runs > 0).then(|| (a.run_time_ns - b.run_time_ns) as f64 / runs as f64);
            floor.insert(
                format!("{hook}_{label}_ns_per_event"),
                FloorValue::NsPerEvent(per_event),
            );
            floor.insert(format!("{hook}_{label}_events"), FloorValue::Events(runs));
        }
    }
    Ok(floor)
}

/// One workload run: its rate, and its work per second of busy CPU.
///
/// Throughput alone cannot tell a 2% cost on a shared virtual machine: the hypervisor
/// takes time away (steal) unevenly, and the bare runs spread by tens of percent. The
/// same work per busy CPU-second of the whole machine (user, system, irq, softirq; not
/// idle, iowait or steal, `/proc/stat`) counts everything an observer adds — its
/// programs in softirq and syscalls, its agent — and not the time the machine was not
/// ours. The bench runs alone, so nothing else is in it.
#[derive(Clone, Copy, Debug)]
struct Rate {
    per_s: f64,
    per_cpu_s: f64,
}

impl Rate {
    /// Runs `work`, which returns how much it did (Mbit, packets, queries, IOs).
    fn measure(work: impl FnOnce() -> anyhow::Result<f64>) -> anyhow::Result<Self> {
        let cpu_before = busy_cpu_s()?;
        let started = Instant::now();
        let done = work()?;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = busy_cpu_s()? - cpu_before;
        Ok(Self {
            per_s: done / elapsed,
            per_cpu_s: if cpu > 0.0 { done / cpu } else { 0.0 },
        })
    }
}

/// Busy CPU time of the whole machine since boot, in seconds (see [`Rate`]).
fn busy_cpu_s() -> anyhow::Result<f64> {
    let stat = fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    // cpu user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already part of user.
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("/proc/stat's cpu line")?;
    ensure!(ticks.len() >= 8, "/proc/stat's cpu line: {line}");
    let busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6];
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(busy as f64 / hz)
}

/// Waiting time for a client that runs `secs`.
fn wait_for(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs) + 30)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn join<T>(handle: thread::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))?
}

struct MixRun {
    cpu_percent: f64,
    peak_rss_kib: u64,
    drops_per_s: f64,
    dns_qps: f64,
    block_iops: f64,
    retransmits_per_s: f64,
    connects_per_s: f64,
    /// Kernel time of all its programs, in percent of one core.
    bpf_cpu_percent: f64,
    /// Per program: (events, ns per event) over the window.
    programs: BTreeMap<String, (u64, f64)>,
    /// DNS queries answered in the window (each one query out, one response in).
    dns_answers: u64,
}

fn load_mix(
    plan: &Plan,
    lab: &Lab,
    device: &str,
    cpu_cgroup: &std::path::Path,
    agent: &Agent,
) -> anyhow::Result<MixRun> {
    let secs = plan.mix_secs;
    let _busy = load::busy_loop(cpu_cgroup)?;
    let retransmits_before = netstat(&lab.net.a, "Tcp:", "RetransSegs")?;
    let drops_before = lab.dropped_in_b()?;
    let usage_before = agent.usage()?;
    let progs_before = prog_stats(agent.pid())?;
    let t0 = Instant::now();
    let mut iperf = load::iperf3(lab, IPERF_LOSSY_PORT, secs, Some("20M"))?;
    let mut fio = load::fio(device, secs, Some(plan.block_iops))?;
    let flood = load::udp_flood(lab, f64::from(secs), Some(plan.drops_per_s))?;
    let dns = load::dns_load(lab, f64::from(secs), 2, Some(plan.dns_qps))?;
    let connects = load::connect_load(lab, f64::from(secs), Some(plan.connects_per_s))?;
    if let Some(listen) = &agent.listen {
        // As Prometheus would, once in the window.
        pause(Duration::from_secs(u64::from(secs) / 2))?;
        http_get(listen, "/metrics")?;
    }
    join(flood)?;
    let answers: u64 = dns.into_iter().map(join).sum::<anyhow::Result<u64>>()?;
    let connections = join(connects)?;
    let block_iops = load::fio_result(&mut fio, wait_for(secs))?;
    load::iperf3_result(&mut iperf, wait_for(secs))?;
    let elapsed = t0.elapsed().as_secs_f64();
    let usage_after: Usage = agent.usage()?;
    let progs_after = prog_stats(agent.pid())?;
    let drops = lab.dropped_in_b()? - drops_before;
    let retransmits = netstat(&lab.net.a, "Tcp:", "RetransSegs")? - retransmits_before;
    let bpf_ns: u64 = progs_after
        .iter()
        .map(|(name, after)| {
            after.run_time_ns - progs_before.get(name).map_or(0, |b| b.run_time_ns)
        })
        .sum();
    let programs = progs_after
        .iter()
        .filter(|(name, _)| name.as_str() != "BEGIN")
        .map(|(name, after)| {
            let before = progs_before.get(name).copied().unwrap_or_default();
            let runs = after.run_cnt - before.run_cnt;
            let ns = after.run_time_ns - before.run_time_ns;
            let per_event = if runs > 0 {
                ns as f64 / runs as f64
            } else {
                f64::NAN
            };
            (name.clone(), (runs, per_event))
        })
        .collect();
    Ok(MixRun {
        cpu_percent: (usage_after.cpu_s - usage_before.cpu_s) / elapsed * 100.0,
        bpf_cpu_percent: bpf_ns as f64 / 1e9 / elapsed * 100.0,
        peak_rss_kib: usage_after.peak_rss_kib,
        // The flood and the DNS clients run exactly `secs`; the rest took longer to end.
        drops_per_s: drops as f64 / f64::from(secs),
        dns_qps: answers as f64 / f64::from(secs),
        block_iops,
        retransmits_per_s: retransmits as f64 / f64::from(secs),
        connects_per_s: connections as f64 / f64::from(secs),
        programs,
        dns_answers: answers,
    })
}

/// A counter from a namespace's /proc/net/snmp (`group` like "Tcp:").
fn netstat(ns: &str, group: &str, name: &str) -> anyhow::Result<u64> {
    let text = sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"])?;
    let mut lines = text.lines().filter(|l| l.starts_with(group));
    let (header, values) = (lines.next(), lines.next());
    let (Some(header), Some(values)) = (header, values) else {
        bail!("no {group} in /proc/net/snmp");
    };
    header
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(key, _)| *key == name)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no {group} {name}"))
}

/// One point of the scale stage: `count` cgroups, measured with the build under test
/// and, with `--baseline`, with the baseline as well, on the same cgroups (which of the
/// two goes first alternates from point to point, so drift does not favour one).
fn scale_point(
    lab: &mut Lab,
    tools: &Tools,
    ScalePoint { point, count, hold }: ScalePoint,
    run_no: &mut usize,
    attach: &mut BTreeMap<Mode, Vec<f64>>,
    scale: &mut ScaleStage,
) -> anyhow::Result<()> {
    let parent = lab.create_scale_cgroups(&format!("{}-{count}", std::process::id()), count)?;
    let mut builds = vec![(false, tools.clone())];
    if let Some(baseline) = &tools.baseline {
        let other = Tools {
            tuneprobe: baseline.clone(),
            ..tools.clone()
        };
        builds.push((true, other));
        if point % 2 == 0 {
            builds.reverse();
        }
    }
    for (is_baseline, tools) in builds {
        *run_no += 1;
        let run = scale_run(lab, &tools, &parent, (count, hold), *run_no)?;
        eprintln!(
            "  {count} workloads, {}: RSS {:.1} MiB (peak {:.1}), /metrics {} ms, snapshot \
             {:.0} ms ({} in its JSON)",
            if is_baseline { "baseline" } else { "tuneprobe" },
            run.rss_mib,
            run.peak_rss_mib,
            report::fmt(run.metrics_ms, 1),
            run.snapshot_ms,
            run.snapshot_workloads,
        );
        if is_baseline {
            scale.baseline.push(run);
        } else {
            attach
                .entry(Mode::Tuneprobe)
                .or_default()
                .push(run.attach_ms);
            scale.tuneprobe.push(run);
        }
    }
    lab.remove_scale_cgroups();
    Ok(())
}

/// A point of the scale stage: its place in the plan, its workloads, how long `serve`
/// runs before it is measured.
struct ScalePoint {
    point: usize,
    count: usize,
    hold: Duration,
}

/// `serve` and `snapshot` of `tools.tuneprobe` with the `count` cgroups under `parent`,
/// `serve` measured `hold` after every workload was exported.
fn scale_run(
    lab: &Lab,
    tools: &Tools,
    parent: &Path,
    (count, hold): (usize, Duration),
    run_no: usize,
) -> anyhow::Result<ScaleRun> {
    let marker = parent
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    // serve: attach, one drop per cgroup, then scrapes once the collector has them all.
    let agent = Agent::start(Mode::Tuneprobe, tools, run_no)?.context("tuneprobe")?;
    let listen = agent.listen.clone().unwrap_or_default();
    let filled = load::run_fill(lab, parent)?;
    ensure!(
        filled as usize == count,
        "filled {filled} of {count} cgroups"
    );
    let last = drop_series_settled(&listen, &marker)?;
    pause(hold)?;
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let (body, took) = http_get(&listen, "/metrics")?;
        bytes = body.len();
        times.push(ms(took));
    }
    let usage = agent.usage()?;
    let attach_ms = ms(agent.attach);
    agent.stop()?;

    let (snapshot_ms, in_json) = snapshot_at_scale(lab, tools, parent, &marker, (count, run_no))?;
    Ok(ScaleRun {
        workloads: count,
        rss_mib: usage.rss_kib as f64 / 1024.0,
        peak_rss_mib: usage.peak_rss_kib as f64 / 1024.0,
        kib_per_added_workload: None,
        metrics_ms: median(&times),
        metrics_ms_samples: times,
        metrics_bytes: bytes,
        drop_series: last,
        snapshot_ms,
        snapshot_workloads: in_json,
        attach_ms,
    })
}

/// The number of drop series of the cgroups named `marker` on `/metrics` once it stops
/// growing between two scrapes a second apart (at most a minute).
fn drop_series_settled(listen: &str, marker: &str) -> anyhow::Result<usize> {
    let series = |body: &str| {
        body.lines()
            .filter(|l| l.starts_with("tuneprobe_packet_drops_total{") && l.contains(marker))
            .count()
    };
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        pause(Duration::from_millis(1100))?;
        let (body, _) = http_get(listen, "/metrics")?;
        let now = series(&body);
        if now > 0 && now == last {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "/metrics still growing after 60 s"
        );
        last = now;
    }
    Ok(last)
}

/// snapshot: the same fill inside its window; what counts is the time from the end of
/// the window to the printed report. That time in ms, and the workloads named `marker`
/// in its JSON.
fn snapshot_at_scale(
    lab: &Lab,
    tools: &Tools,
    parent: &Path,
    marker: &str,
    (count, run_no): (usize, usize),
) -> anyhow::Result<(f64, usize)> {
    let window = 2 + count as u64 / 1000;
    let output = tools.out_dir.join(format!("snapshot-{run_no}.json"));
    let errors = tools.out_dir.join(format!("snapshot-{run_no}.err"));
    let mut snapshot = Proc::spawn(
        "tuneprobe snapshot",
        Command::new(&tools.tuneprobe)
            .args(["snapshot", "--kube-api", "none", "--json", "--for"])
            .arg(format!("{window}s"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&output)?)
            .stderr(fs::File::create(&errors)?),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&errors)
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("ready"))
    {
        ensure!(
            snapshot.try_wait().is_none() && Instant::now() < deadline,
            "snapshot did not get ready: {}",
            fs::read_to_string(&errors).unwrap_or_default()
        );
        pause(Duration::from_millis(2))?;
    }
    let ready = Instant::now();
    let filled = load::run_fill(lab, parent)?;
    ensure!(
        ready.elapsed() < Duration::from_secs(window),
        "filling {count} cgroups took longer than the {window} s window"
    );
    ensure!(
        filled as usize == count,
        "filled {filled} of {count} cgroups"
    );
    let status = snapshot.wait(Duration::from_secs(window + 120))?;
    let snapshot_ms = ms(ready.elapsed()) - window as f64 * 1e3;
    ensure!(status.success(), "snapshot failed: {status}");
    let json: Value =
        serde_json::from_str(&fs::read_to_string(&output)?).context("snapshot JSON")?;
    let in_json = json["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| {
            w["cgroup_path"]
                .as_str()
                .is_some_and(|p| p.contains(marker))
        })
        .count();
    Ok((snapshot_ms, in_json))
}

/// tuneprobe's programs, the bpftrace probes that do the same job (their kernel names
/// are cut at 15 characters), and whether the program only counts.
const EQUIVALENTS: &[(&str, Option<&str>, bool)] = &[
    ("kfree_skb", Some("kfree_skb"), true),
    ("tcp_retransmit_skb", Some("tcp_retransmit_"), true),
    ("block_rq_insert", Some("block_rq_insert"), false),
    ("block_rq_issue", Some("block_rq_issue"), false),
    ("block_rq_merge", None, false),
    ("block_rq_complete", Some("block_rq_comple"), false),
    ("sched_switch", Some("sched_switch"), false),
    ("dns_egress", Some("net_dev_queue"), false),
    ("dns_ingress", Some("netif_receive_s"), false),
    ("inet_sock_set_state", Some("inet_sock_set_s"), false),
    ("tcp_send_reset", Some("tcp_send_reset"), false),
    ("tcp_receive_reset", Some("tcp_receive_res"), false),
];

fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

/// The mix runs of `mode` (none when it did not run).
fn runs_of(mix: &BTreeMap<Mode, Vec<MixRun>>, mode: Mode) -> &[MixRun] {
    mix.get(&mode).map_or(&[], Vec::as_slice)
}

/// A program's median ns per event and median events over the mix runs of `runs`.
fn program_cost(runs: &[MixRun], name: &str) -> (Option<f64>, Option<f64>) {
    let per_event: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.programs.get(name).map(|p| p.1))
        .collect();
    let events: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.programs.get(name).map(|p| p.0 as f64))
        .collect();
    (median(&per_event), median(&events))
}

/// All of a program's run time over the window, per DNS query answered in it.
fn per_dns_message(runs: &[MixRun], name: &str) -> Option<f64> {
    let per_message: Vec<f64> = runs
        .iter()
        .filter(|r| r.dns_answers > 0)
        .filter_map(|r| {
            r.programs
                .get(name)
                .map(|&(events, ns)| events as f64 * ns / r.dns_answers as f64)
        })
        .collect();
    median(&per_message)
}

/// What one of tuneprobe's programs cost in the kernel over the load mix, next to its
/// bpftrace equivalent.
fn kernel_cost(
    mix: &BTreeMap<Mode, Vec<MixRun>>,
    (name, equivalent, count_only): (&'static str, Option<&'static str>, bool),
) -> KernelCost {
    let (tp_runs, bt_runs) = (runs_of(mix, Mode::Tuneprobe), runs_of(mix, Mode::Bpftrace));
    // Programs with BTF carry their full name; bpftrace's are cut.
    let (tp_ns, tp_events) = match program_cost(tp_runs, name) {
        (None, None) => program_cost(tp_runs, kernel_name(name)),
        found => found,
    };
    let (bt_ns, bt_events) = equivalent.map_or((None, None), |e| program_cost(bt_runs, e));
    // The DNS programs and their bpftrace equivalents run on different packets (a
    // `cgroup_skb` program on packets a socket sends or receives; `net_dev_queue` and
    // `netif_receive_skb` on every packet a device does, most of them returning at
    // once), so per event they are not comparable: per DNS message they are.
    let per_message = name.starts_with("dns_").then(|| {
        let tp =
            per_dns_message(tp_runs, kernel_name(name)).or_else(|| per_dns_message(tp_runs, name));
        let bt = equivalent.and_then(|e| per_dns_message(bt_runs, e));
        (tp, bt)
    });
    KernelCost {
        program: name,
        count_only,
        tuneprobe_ns_per_event: tp_ns,
        tuneprobe_events: tp_events,
        bpftrace_probe: equivalent,
        bpftrace_ns_per_event: bt_ns,
        bpftrace_events: bt_events,
        ratio: ratio(tp_ns, bt_ns),
        tuneprobe_ns_per_dns_message: per_message.and_then(|m| m.0),
        bpftrace_ns_per_dns_message: per_message.and_then(|m| m.1),
    }
}

/// The targets on one program's kernel cost: no more than bpftrace's equivalent (per DNS
/// message for the DNS programs), and under 100 ns per event for a count-only one.
fn kernel_cost_targets(cost: &KernelCost, targets: &mut Vec<Target>) {
    let name = cost.program;
    let (tp_ns, bt_ns) = (cost.tuneprobe_ns_per_event, cost.bpftrace_ns_per_event);
    if name.starts_with("dns_")
        && let Some(equivalent) = cost.bpftrace_probe
    {
        let (tp, bt) = (
            cost.tuneprobe_ns_per_dns_message,
            cost.bpftrace_ns_per_dns_message,
        );
        targets.push(Target::new(
            &format!("{name} costs no more per DNS message than bpftrace's {equivalent}"),
            ratio(tp, bt).map(|r| r <= 1.0),
            format!(
                "{} ns vs {} ns (per event: {} ns vs {} ns, over {} vs {} events)",
                report::fmt(tp, 0),
                report::fmt(bt, 0),
                report::fmt(tp_ns, 0),
                report::fmt(bt_ns, 0),
                report::fmt(cost.tuneprobe_events, 0),
                report::fmt(cost.bpftrace_events, 0)
            ),
        ));
    } else if let Some(equivalent) = cost.bpftrace_probe {
        targets.push(Target::new(
            &format!("{name} costs no more per event than bpftrace's {equivalent}"),
            cost.ratio.map(|r| r <= 1.0),
            format!(
                "{} ns vs {} ns",
                report::fmt(tp_ns, 0),
                report::fmt(bt_ns, 0)
            ),
        ));
    }
    if cost.count_only {
        targets.push(Target::new(
            &format!("count-only {name} under 100 ns per event"),
            tp_ns.map(|ns| ns < 100.0),
            format!("{} ns", report::fmt(tp_ns, 0)),
        ));
    }
}

/// The workloads of the impact runs and their units.
const UNITS: [(&str, &str); 5] = [
    ("tcp", "Mbit/s"),
    ("udp_drops", "drops/s"),
    ("dns", "queries/s"),
    ("block", "IOPS"),
    ("connect", "connections/s"),
];

/// The impact runs of one workload, by mode.
struct Rates<'a> {
    impact: &'a BTreeMap<(&'a str, Mode), Vec<Rate>>,
    workload: &'a str,
}

impl Rates<'_> {
    fn samples(&self, mode: Mode, of: fn(&Rate) -> f64) -> Vec<f64> {
        self.impact
            .get(&(self.workload, mode))
            .map(|rates| rates.iter().map(of).collect())
            .unwrap_or_default()
    }

    fn median(&self, mode: Mode, of: fn(&Rate) -> f64) -> Option<f64> {
        median(&self.samples(mode, of))
    }

    /// `mode`'s median over the bare runs' median.
    fn ratio(&self, mode: Mode, of: fn(&Rate) -> f64) -> Option<f64> {
        ratio(self.median(mode, of), self.median(Mode::Nothing, of))
    }

    /// How far apart the bare runs themselves are: a ratio closer to 100% than this is
    /// within the noise of this machine.
    fn spread(&self, of: fn(&Rate) -> f64) -> Option<f64> {
        let bare = self.samples(Mode::Nothing, of);
        median(&bare).filter(|m| *m > 0.0).map(|m| {
            let (lo, hi) = bare
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            (hi - lo) / m
        })
    }

    fn comparison(&self, of: fn(&Rate) -> f64) -> Comparison {
        Comparison {
            nothing: self.median(Mode::Nothing, of),
            bpftrace: self.median(Mode::Bpftrace, of),
            tuneprobe: self.median(Mode::Tuneprobe, of),
            bpftrace_ratio: self.ratio(Mode::Bpftrace, of),
            tuneprobe_ratio: self.ratio(Mode::Tuneprobe, of),
            bare_spread: self.spread(of),
        }
    }

    fn by_sample(&self, of: fn(&Rate) -> f64) -> BySample {
        BySample {
            nothing: self.samples(Mode::Nothing, of),
            bpftrace: self.samples(Mode::Bpftrace, of),
            tuneprobe: self.samples(Mode::Tuneprobe, of),
        }
    }
}

/// What each observer does to one workload, and the target on tuneprobe's share.
fn workload_impact(
    impact: &BTreeMap<(&str, Mode), Vec<Rate>>,
    (workload, unit): (&'static str, &'static str),
    targets: &mut Vec<Target>,
) -> WorkloadImpact {
    let rates = Rates { impact, workload };
    let throughput = |r: &Rate| r.per_s;
    let per_cpu = |r: &Rate| r.per_cpu_s;
    let (tp_ratio, tp_cpu_ratio) = (
        rates.ratio(Mode::Tuneprobe, throughput),
        rates.ratio(Mode::Tuneprobe, per_cpu),
    );
    let percent = |r: Option<f64>| report::fmt(r.map(|r| r * 100.0), 1);
    // Judged on work per busy CPU-second, the measure this machine can resolve
    // (see `Rate`); the throughput ratio is shown beside it.
    targets.push(Target::new(
        &format!("{workload} with tuneprobe at least 98% of bare (per busy CPU-second)"),
        tp_cpu_ratio.map(|r| r >= 0.98),
        format!(
            "{}% (bare spread {}%); throughput {}% (bare spread {}%)",
            percent(tp_cpu_ratio),
            report::fmt(rates.spread(per_cpu).map(|s| s * 100.0), 0),
            percent(tp_ratio),
            report::fmt(rates.spread(throughput).map(|s| s * 100.0), 0)
        ),
    ));
    WorkloadImpact {
        workload,
        unit,
        throughput: rates.comparison(throughput),
        per_cpu_s: rates.comparison(per_cpu),
        samples: rates.by_sample(throughput),
        per_cpu_s_samples: rates.by_sample(per_cpu),
    }
}

/// An agent's own CPU, kernel CPU and memory over the mix runs of `runs`.
fn agent_cost(runs: &[MixRun]) -> AgentCost {
    let cpu: Vec<f64> = runs.iter().map(|r| r.cpu_percent).collect();
    let bpf: Vec<f64> = runs.iter().map(|r| r.bpf_cpu_percent).collect();
    let rss: Vec<f64> = runs
        .iter()
        .map(|r| r.peak_rss_kib as f64 / 1024.0)
        .collect();
    AgentCost {
        cpu_percent: median(&cpu),
        cpu_percent_samples: cpu,
        bpf_cpu_percent: median(&bpf),
        bpf_cpu_percent_samples: bpf,
        peak_rss_mib: median(&rss),
    }
}

/// The load the mix achieved, the median over every run of every mode.
fn achieved_load(mix: &BTreeMap<Mode, Vec<MixRun>>) -> LoadMix {
    let achieved =
        |f: fn(&MixRun) -> f64| median(&mix.values().flatten().map(f).collect::<Vec<_>>());
    LoadMix {
        drops_per_s: achieved(|r| r.drops_per_s),
        dns_qps: achieved(|r| r.dns_qps),
        block_iops: achieved(|r| r.block_iops),
        retransmits_per_s: achieved(|r| r.retransmits_per_s),
        connects_per_s: achieved(|r| r.connects_per_s),
    }
}

/// The targets on the agent itself: CPU under the mix, attach time.
fn agent_targets(mix: &BTreeMap<Mode, Vec<MixRun>>, attach: &Attach, targets: &mut Vec<Target>) {
    let tp_cpu = median(
        &runs_of(mix, Mode::Tuneprobe)
            .iter()
            .map(|r| r.cpu_percent)
            .collect::<Vec<_>>(),
    );
    targets.push(Target::new(
        "tuneprobe CPU under the load mix below 2% of a core",
        tp_cpu.map(|c| c < 2.0),
        format!("{}%", report::fmt(tp_cpu, 2)),
    ));
    let tp_attach = attach.tuneprobe.median_ms;
    targets.push(Target::new(
        "attach to ready under 1 s",
        tp_attach.map(|a| a < 1000.0),
        format!("{} ms (median)", report::fmt(tp_attach, 0)),
    ));
}

/// The targets of the scale stage (issue 23): memory, `/metrics` and snapshot times
/// at 1,000 and 10,000 workloads, and the RSS each added workload costs.
fn scale_targets(scale: &[ScaleRun], growth: &Growth, targets: &mut Vec<Target>) {
    let at = |n: usize| scale.iter().find(|s| s.workloads == n);
    let (at_1k, at_10k) = (at(1_000), at(10_000));
    let mut check = |name: &str, value: Option<f64>, limit: f64, unit: &str, decimals| {
        targets.push(Target::new(
            name,
            value.map(|v| v <= limit),
            format!("{} {unit}", report::fmt(value, decimals)),
        ));
    };
    let rss_1k = at_1k.map(|s| s.rss_mib);
    check(
        "RSS at most 32 MiB at 1,000 workloads",
        rss_1k,
        32.0,
        "MiB",
        1,
    );
    let peak_10k = at_10k.map(|s| s.peak_rss_mib);
    check(
        "peak RSS at most 96 MiB at 10,000 workloads",
        peak_10k,
        96.0,
        "MiB",
        1,
    );
    check(
        "RSS at most 8 KiB per added workload",
        growth.tuneprobe_kib_per_workload,
        8.0,
        "KiB",
        1,
    );
    let metrics_1k = at_1k.and_then(|s| s.metrics_ms);
    check(
        "/metrics at most 15 ms at 1,000 workloads",
        metrics_1k,
        15.0,
        "ms",
        1,
    );
    let metrics_10k = at_10k.and_then(|s| s.metrics_ms);
    check(
        "/metrics at most 100 ms at 10,000 workloads",
        metrics_10k,
        100.0,
        "ms",
        1,
    );
    let snapshot_10k = at_10k.map(|s| s.snapshot_ms);
    check(
        "snapshot at most 300 ms after its window at 10,000 workloads",
        snapshot_10k,
        300.0,
        "ms",
        0,
    );
}

/// The attach times of both agents, by sample and their median.
fn attach_times(attach: &BTreeMap<Mode, Vec<f64>>) -> Attach {
    let times = |mode: Mode| {
        let samples_ms = attach.get(&mode).cloned().unwrap_or_default();
        AttachTimes {
            median_ms: median(&samples_ms),
            samples_ms,
        }
    };
    Attach {
        bpftrace: times(Mode::Bpftrace),
        tuneprobe: times(Mode::Tuneprobe),
    }
}

/// The plan, as the report states it.
fn config(plan: &Plan) -> Config {
    Config {
        rounds: plan.rounds,
        workload_secs: plan.workload_secs,
        mix_rounds: plan.mix_rounds,
        mix_secs: plan.mix_secs,
        target_drops_per_s: plan.drops_per_s,
        target_dns_qps: plan.dns_qps,
        target_block_iops: plan.block_iops,
        scale: plan.scale.clone(),
        hold_s: plan.hold.as_secs(),
        only: plan.only.map(|_| "scale".to_string()),
    }
}

/// The report from every run's measurements, with its targets judged in order: the
/// kernel cost of each program, the impact on each workload, the agent itself.
fn assemble(
    plan: &Plan,
    smoke: bool,
    impact: &BTreeMap<(&str, Mode), Vec<Rate>>,
    mix: &BTreeMap<Mode, Vec<MixRun>>,
    scale: ScaleStage,
    attach: &BTreeMap<Mode, Vec<f64>>,
    floor: BTreeMap<String, FloorValue>,
) -> Report {
    let mut targets = Vec::new();
    let kernel_cost: Vec<KernelCost> = EQUIVALENTS
        .iter()
        .map(|&program| kernel_cost(mix, program))
        .inspect(|cost| kernel_cost_targets(cost, &mut targets))
        .collect();
    let workload_impact: Vec<WorkloadImpact> = UNITS
        .iter()
        .map(|&workload| workload_impact(impact, workload, &mut targets))
        .collect();
    let attach = attach_times(attach);
    agent_targets(mix, &attach, &mut targets);
    // A stage run alone is judged alone: the others' targets would all read "n/a".
    if plan.only.is_some() {
        targets.clear();
    }
    let scale = scale.with_growth();
    let growth = scale.growth();
    scale_targets(&scale.tuneprobe, &growth, &mut targets);
    Report {
        smoke,
        machine: machine(),
        config: config(plan),
        kernel_cost,
        workload_impact,
        agent_cost: AgentCosts {
            load_mix: achieved_load(mix),
            bpftrace: agent_cost(runs_of(mix, Mode::Bpftrace)),
            tuneprobe: agent_cost(runs_of(mix, Mode::Tuneprobe)),
        },
        scale: scale.tuneprobe,
        baseline_scale: scale.baseline,
        growth,
        attach,
        targets,
        floor,
        // Set by `run` at the end.
        duration_s: 0.0,
    }
}

fn machine() -> Machine {
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string());
    let mem_kib = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    let version = |cmd: &[&str]| {
        sh(cmd)
            .ok()
            .and_then(|o| o.lines().next().map(str::to_string))
    };
    Machine {
        kernel: version(&["uname", "-r"]),
        cpus: thread::available_parallelism()
            .map(std::num::NonZero::get)
            .ok(),
        cpu_model,
        memory_mib: mem_kib.map(|k| k / 1024),
        bpftrace: version(&["bpftrace", "--version"]),
        iperf3: version(&["iperf3", "--version"]),
        fio: version(&["fio", "--version"]),
    }
}
