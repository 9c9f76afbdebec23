//! `cargo xtask soak --for DURATION`: every signal driven for a long time while
//! `tuneprobe serve` runs, with cgroups created and destroyed all along, and the agent's
//! memory, CPU, kernel map occupancy, lost updates and own errors sampled at intervals.
//! It fails if any of them grows.
//!
//! The load, in the benchmark's lab (two network namespaces, a loop device, a throttled
//! cpu cgroup): UDP into a dropping port, DNS against dnsmasq, direct-IO reads,
//! retransmits through 5% loss, a throttled busy loop, and churn: 100 new cgroups with a
//! drop each, removed again, every few seconds.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::ensure;
use serde_json::{Value, json};
use tuneprobe_lab::{Proc, sh};

use super::{
    agent::{self, Usage, http_get},
    lab::{IPERF_LOSSY_PORT, Lab},
    load,
};
use crate::{is_root, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to run.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, default_value = "10m")]
    duration: Duration,
    /// How often to sample the agent.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    interval: Duration,
    /// tuneprobe's --pod-grace: short, so deleted workloads' map entries are collected
    /// during the run.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    grace: Duration,
    /// Where to write the JSON report.
    #[arg(long, value_name = "FILE", default_value = "target/soak/report.json")]
    out: PathBuf,
    /// Print the JSON report instead of the table.
    #[arg(long)]
    json: bool,
    /// The tuneprobe binary (default: build and use target/release/tuneprobe).
    #[arg(long, value_name = "PATH")]
    tuneprobe: Option<PathBuf>,
    /// Skip `xtask setup` (the packages must be installed already).
    #[arg(long)]
    no_setup: bool,
}

/// `90s`, `10m`, `1h`, `500ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: add a unit (ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{text:?}: unit must be ms, s, m or h")),
    }
}

/// One look at the agent.
#[derive(Debug, Clone)]
struct Sample {
    at_s: f64,
    rss_kib: u64,
    cpu_s: f64,
    /// Entries per kernel map, by map name.
    map_entries: BTreeMap<String, u64>,
    /// Counters from /metrics, summed over labels.
    map_overflows: f64,
    agent_errors: f64,
    gc_deleted: f64,
    drops: f64,
    scrape_ms: f64,
}

impl Sample {
    fn json(&self) -> Value {
        json!({
            "at_s": self.at_s, "rss_kib": self.rss_kib, "cpu_s": self.cpu_s,
            "map_entries": self.map_entries, "map_overflows": self.map_overflows,
            "agent_errors": self.agent_errors, "gc_deleted_entries": self.gc_deleted,
            "drops": self.drops, "scrape_ms": self.scrape_ms,
        })
    }
}

/// The sum of every series of `name` in a Prometheus exposition.
fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Entries of every hash-like map the process holds, counted with bpftool. The maps
/// are found through the process's descriptors (`map_id:` in `/proc/PID/fdinfo/N`).
fn map_entries(pid: u32) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut ids: Vec<String> = fs::read_dir(format!("/proc/{pid}/fdinfo"))?
        .flatten()
        .filter_map(|fd| fs::read_to_string(fd.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .map(|id| id.trim().to_string())
        })
        .collect();
    ids.sort();
    ids.dedup();
    let mut out = BTreeMap::new();
    for id in ids {
        let info: Value =
            serde_json::from_str(&sh(&["bpftool", "map", "show", "id", &id, "--json"])?)?;
        let kind = info["type"].as_str().unwrap_or_default();
        // Arrays always hold max_entries, ring buffers have no entries to count.
        if kind.contains("array") || kind == "ringbuf" {
            continue;
        }
        let name = info["name"].as_str().unwrap_or(&id).to_string();
        let dump: Value =
            serde_json::from_str(&sh(&["bpftool", "map", "dump", "id", &id, "--json"])?)?;
        let count = dump.as_array().map_or(0, Vec::len) as u64;
        *out.entry(name).or_default() += count;
    }
    Ok(out)
}

fn sample(pid: u32, addr: &str, started: Instant) -> anyhow::Result<Sample> {
    let (metrics, took) = http_get(addr, "/metrics")?;
    let usage = Usage::of(pid)?;
    Ok(Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_kib: usage.rss_kib,
        cpu_s: usage.cpu_s,
        map_entries: map_entries(pid)?,
        map_overflows: metric_sum(&metrics, "tuneprobe_map_overflows_total"),
        agent_errors: metric_sum(&metrics, "tuneprobe_agent_errors_total"),
        gc_deleted: metric_sum(&metrics, "tuneprobe_gc_deleted_entries_total"),
        drops: metric_sum(&metrics, "tuneprobe_packet_drops_total"),
        scrape_ms: took.as_secs_f64() * 1e3,
    })
}

/// What "no growth" means, judged on the samples after the first third (warm-up: maps
/// and caches fill, the first churn rounds pass their grace period).
#[derive(Debug)]
struct Verdict {
    rss_growth_kib: i64,
    rss_ok: bool,
    /// Maps whose occupancy at the end exceeds the steady part's by more than the slack.
    growing_maps: Vec<String>,
    errors: f64,
    overflows_during_steady: f64,
}

fn judge(samples: &[Sample]) -> Verdict {
    let steady = &samples[samples.len() / 3..];
    let (first, last) = (&steady[0], &steady[steady.len() - 1]);
    let rss_growth_kib = last.rss_kib as i64 - first.rss_kib as i64;
    // Allocator noise: a few MiB or 10%, whichever is larger.
    let slack = (4 * 1024).max(first.rss_kib as i64 / 10);
    let growing_maps = last
        .map_entries
        .iter()
        .filter(|&(map, &now)| {
            let earlier = steady[..steady.len() - 1]
                .iter()
                .filter_map(|s| s.map_entries.get(map))
                .max()
                .copied()
                .unwrap_or(0);
            // One churn round of entries may be in flight at any sample.
            now > earlier + earlier / 5 + 200
        })
        .map(|(map, _)| map.clone())
        .collect();
    Verdict {
        rss_growth_kib,
        rss_ok: rss_growth_kib <= slack,
        growing_maps,
        errors: last.agent_errors,
        overflows_during_steady: last.map_overflows - first.map_overflows,
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        is_root(),
        "the soak loads eBPF programs and creates namespaces, cgroups and a loop device: run as root"
    );
    ensure!(
        args.duration >= args.interval * 3,
        "--for must be at least three --interval samples"
    );
    let tuneprobe = agent::prepare(args.no_setup, args.tuneprobe.as_ref())?;
    let root = workspace_root();
    let id = format!("s{}", std::process::id() % 100_000);
    let mut lab = Lab::new(&id)?;
    lab.start_servers()?;
    let device = lab.create_loop_device(64)?;
    let cpu = lab.create_cpu_cgroup(&id)?;
    let (agent, addr) = serve(&tuneprobe, args.grace)?;

    let secs = args.duration.as_secs_f64();
    let whole = args.duration.as_secs() as u32 + 5;
    let flood = load::udp_flood(&lab, secs, Some(20_000.0))?;
    let dns = load::dns_load(&lab, secs, 2, Some(2_000.0))?;
    let _fio = load::fio(&device, whole, Some(1_000))?;
    let _busy = load::busy_loop(&cpu)?;
    let _lossy = load::iperf3(&lab, IPERF_LOSSY_PORT, whole, Some("50M"))?;

    let started = Instant::now();
    let (mut samples, churn) = churn(args, &mut lab, &id, agent.pid(), &addr, started)?;
    let sent = flood
        .join()
        .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    let mut answered = 0;
    for thread in dns {
        answered += thread
            .join()
            .map_err(|_| anyhow::anyhow!("dns thread panicked"))??;
    }
    samples.push(sample(agent.pid(), &addr, started)?);
    drop(agent);

    let verdict = judge(&samples);
    let load = Load {
        sent,
        answered,
        churned: churn.0,
        rounds: churn.1,
    };
    let report = report(args, &samples, &load, &verdict);
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        root.join(&args.out)
    };
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    if args.json {
        println!("{report}");
    } else {
        println!(
            "soak: {:.0} s, {} cgroups churned in {} rounds, {} drops sent, {} DNS answers; \
             RSS {:+} KiB after warm-up, growing maps {:?}, agent errors {}; report in {}",
            samples[samples.len() - 1].at_s,
            load.churned,
            load.rounds,
            load.sent,
            load.answered,
            verdict.rss_growth_kib,
            verdict.growing_maps,
            verdict.errors,
            out.display()
        );
    }
    ensure!(
        verdict.rss_ok && verdict.growing_maps.is_empty() && verdict.errors == 0.0,
        "the soak saw growth or errors: {verdict:?}"
    );
    Ok(())
}

/// `tuneprobe serve` on a free local port, once it is ready; and that address.
fn serve(tuneprobe: &Path, grace: Duration) -> anyhow::Result<(Proc, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let grace = format!("{}ms", grace.as_millis());
    let agent = Proc::spawn(
        "tuneprobe serve",
        Command::new(tuneprobe)
            .args(["serve", "--listen", &addr, "--kube-api", "none"])
            .args(["--pod-grace", &grace])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&addr, "/readyz").is_err() {
        ensure!(Instant::now() < deadline, "tuneprobe serve never got ready");
        tuneprobe_lab::pause(Duration::from_millis(100))?;
    }
    Ok((agent, addr))
}

/// Cgroup churn for the whole duration, sampling the agent every interval (printed
/// unless `--json`): the samples, cgroups churned and churn rounds.
fn churn(
    args: &Args,
    lab: &mut Lab,
    id: &str,
    pid: u32,
    addr: &str,
    started: Instant,
) -> anyhow::Result<(Vec<Sample>, (u64, u32))> {
    let mut samples = vec![sample(pid, addr, started)?];
    let mut next_sample = started + args.interval;
    let mut churned = 0u64;
    let mut round = 0u32;
    while started.elapsed() < args.duration {
        // Churn: 100 cgroups with a drop each, created and removed again.
        let parent = lab.create_scale_cgroups(&format!("{id}r{round}"), 100)?;
        churned += load::run_fill(lab, &parent)?;
        lab.remove_scale_cgroups();
        round += 1;
        tuneprobe_lab::pause(Duration::from_secs(2))?;
        if Instant::now() >= next_sample {
            let s = sample(pid, addr, started)?;
            if !args.json {
                print_sample(&s, &samples[samples.len() - 1]);
            }
            samples.push(s);
            next_sample += args.interval;
        }
    }
    Ok((samples, (churned, round)))
}

/// One progress line: the sample, with the agent's CPU since the one before.
fn print_sample(s: &Sample, before: &Sample) {
    println!(
        "soak: {:>6.0}s  rss {:>7.1} MiB  cpu {:>6.2}%  map entries {:>6}  overflows {:>8}  gc deleted {:>8}  errors {}",
        s.at_s,
        s.rss_kib as f64 / 1024.0,
        100.0 * (s.cpu_s - before.cpu_s) / (s.at_s - before.at_s).max(1e-9),
        s.map_entries.values().sum::<u64>(),
        s.map_overflows,
        s.gc_deleted,
        s.agent_errors
    );
}

/// The load the soak drove.
struct Load {
    sent: u64,
    answered: u64,
    churned: u64,
    rounds: u32,
}

/// The JSON report: the load, every sample, the agent's CPU and the verdict.
fn report(args: &Args, samples: &[Sample], load: &Load, verdict: &Verdict) -> Value {
    let first = &samples[0];
    let last = &samples[samples.len() - 1];
    json!({
        "duration_s": last.at_s,
        "interval_s": args.interval.as_secs_f64(),
        "load": { "udp_sent": load.sent, "dns_answered": load.answered,
                  "churned_cgroups": load.churned, "churn_rounds": load.rounds },
        "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
        "agent_cpu_percent": 100.0 * (last.cpu_s - first.cpu_s) / (last.at_s - first.at_s).max(1e-9),
        "verdict": {
            "rss_growth_kib": verdict.rss_growth_kib,
            "rss_flat": verdict.rss_ok,
            "growing_maps": verdict.growing_maps,
            "agent_errors": verdict.errors,
            "map_overflows_during_steady_state": verdict.overflows_during_steady,
            "no_growth": verdict.rss_ok && verdict.growing_maps.is_empty() && verdict.errors == 0.0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rss_kib: u64, entries: u64) -> Sample {
        Sample {
            at_s: 0.0,
            rss_kib,
            cpu_s: 0.0,
            map_entries: BTreeMap::from([("DROPS".to_string(), entries)]),
            map_overflows: 0.0,
            agent_errors: 0.0,
            gc_deleted: 0.0,
            drops: 0.0,
            scrape_ms: 0.0,
        }
    }

    #[test]
    fn growth_is_judged_after_the_warm_up() {
        // Warm-up growth is fine; a steady state is flat.
        let flat = [
            at(1000, 10),
            at(30_000, 500),
            at(30_100, 520),
            at(30_200, 480),
        ];
        let v = judge(&flat);
        assert!(v.rss_ok && v.growing_maps.is_empty(), "{v:?}");
        // A leak: +20 MiB and a map that keeps filling.
        let leak = [
            at(1000, 10),
            at(30_000, 500),
            at(40_000, 900),
            at(50_000, 2000),
        ];
        let v = judge(&leak);
        assert!(!v.rss_ok && v.growing_maps == ["DROPS"], "{v:?}");
    }

    #[test]
    fn sums_series_of_one_metric_only() {
        let text = "# TYPE a_total counter\na_total{x=\"1\"} 2\na_total{x=\"2\"} 3\na_total_other 7\na_total 1\n";
        assert_eq!(metric_sum(text, "a_total"), 6.0);
        assert_eq!(metric_sum(text, "missing"), 0.0);
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("10").is_err() && parse_duration("5x").is_err());
    }
}
