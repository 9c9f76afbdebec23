//! `tuneprobe snapshot`: attach, watch for a while, print per-workload results, exit.

use std::{
    io::Write as _,
    thread,
    time::{Duration, Instant},
};

use crate::{kernel::loader::LoadOptions, kernel::loader::Probe, window::Collector};
use anyhow::Context as _;

#[derive(Debug, clap::Args)]
#[command(
    about = "Attach, watch for a while, print what each workload saw, exit",
    long_about = "Attach the probes, watch for DURATION, then print per workload: TCP \
                  retransmits, packet drops by reason, DNS latency by resolver and response \
                  code, block IO latency per device, and CPU throttling; then exit.\n\n\
                  A line containing `ready` goes to stderr once the programs are attached, \
                  so scripts know when to start their load.",
    after_help = "Examples:\n  \
                  tuneprobe snapshot --for 10s\n  \
                  tuneprobe snapshot --for 1m --json | jq '.workloads[] | select(.drops.total > 0)'"
)]
pub(super) struct Args {
    /// How long to watch: 500ms, 10s, 2m, ...
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    duration: Duration,

    /// Print JSON (documented in docs/json.md) instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    collector: super::CollectorArgs,
}

pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|err| format!("{err} (examples: 500ms, 10s, 2m)"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_string());
    }
    Ok(duration)
}

/// How often the window rescans processes and names new cgroups.
const TICK: Duration = Duration::from_secs(1);

pub(super) fn run(args: &Args, options: &LoadOptions) -> anyhow::Result<()> {
    let probe = Probe::load(options)?;
    crate::privileges::after_attach(crate::privileges::needs::OBSERVE);
    let mut collector = Collector::start_with(probe, args.collector.options()?)?;
    let statuses = collector.probe().statuses();
    let attached = statuses.iter().filter(|s| s.attached).count();
    eprintln!("ready: {attached} of {} programs attached", statuses.len());

    let deadline = Instant::now() + args.duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        thread::sleep(left.min(TICK));
        collector.tick()?;
    }

    let snapshot = collector.finish()?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &snapshot)?;
        writeln!(stdout)?;
    } else {
        write!(stdout, "{}", crate::views::table::render(&snapshot))?;
    }
    stdout.flush().context("writing the report")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").unwrap_err().contains("examples"));
    }
}
