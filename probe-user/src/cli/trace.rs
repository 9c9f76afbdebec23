//! `tuneprobe trace SIGNAL`: one line per event as it happens, with the pod.

use std::{
    io::Write,
    os::fd::AsRawFd as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    kernel::loader::LoadOptions,
    kernel::loader::Probe,
    kernel::symbols::Symbols,
    signals::Signal,
    views::trace::{Decoder, Record, TraceEvent},
    window::Collector,
};
use anyhow::Context as _;
use probe_common::trace::{TRACE_RING_BYTES, TraceConfig};

/// `trace`'s first argument: a signal's trace name, or `all`.
fn signal_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Signal::ALL.iter().map(|s| s.trace_name()).collect();
    names.push("all");
    names
}

/// The signals `name` selects.
fn selected(name: &str) -> Vec<Signal> {
    Signal::of_trace_name(name).map_or_else(|| Signal::ALL.to_vec(), |s| vec![s])
}

#[derive(Debug, clap::Args)]
#[command(
    about = "Print events as they happen, one per line, with the pod",
    long_about = "Print one line per event as it happens, attributed to its pod and \
                  container: TCP retransmits (addresses, ports, TCP state, failed attempts), \
                  packet drops (reason, the kernel function that dropped, protocol, \
                  addresses), answered DNS queries (name, type, response code, latency, \
                  resolver), slow block IO (device, op, bytes, service and queue time) and \
                  CPU throttle stalls.\n\n\
                  Events travel through a ring buffer only while trace runs. Events that do \
                  not fit are counted, and the count is printed on stderr when trace ends \
                  (and as it grows). A line containing `ready` goes to stderr once the \
                  programs are attached.",
    after_help = "Examples:\n  \
                  tuneprobe trace drops --namespace shop\n  \
                  tuneprobe trace dns --min-latency 50ms --json | jq .qname\n  \
                  tuneprobe trace block --min-latency 20ms --for 1m\n  \
                  tuneprobe trace all --pod api-7f9c4"
)]
pub(super) struct Args {
    /// What to trace.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(signal_names()))]
    signal: String,

    /// Only events of pods in this Kubernetes namespace.
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,

    /// Only events of this pod (name or UID).
    #[arg(long, value_name = "POD")]
    pod: Option<String>,

    /// Only events of this cgroup: an id, or a path (relative to the cgroup mount) that
    /// the event's cgroup is at or below.
    #[arg(long, value_name = "ID|PATH")]
    cgroup: Option<String>,

    /// Only DNS answers, block requests (service + queue) and throttle stalls at least
    /// this slow. Block requests are filtered in the kernel.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    min_latency: Option<Duration>,

    /// One JSON object per line (fields in docs/trace.md) instead of text.
    #[arg(long)]
    json: bool,

    /// Stop after this long (default: until Ctrl-C).
    #[arg(long = "for", value_name = "DURATION", value_parser = super::snapshot::parse_duration)]
    duration: Option<Duration>,

    /// Ring buffer size in bytes (a power of two, at least 4096). Raise it if events
    /// are reported lost.
    #[arg(long, value_name = "BYTES", default_value_t = TRACE_RING_BYTES, value_parser = parse_ring_bytes)]
    buffer_size: u32,

    #[command(flatten)]
    collector: super::CollectorArgs,
}

fn parse_ring_bytes(text: &str) -> Result<u32, String> {
    let bytes: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes"))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err("must be a power of two, at least 4096".to_string());
    }
    Ok(bytes)
}

/// The filters, applied to named events.
struct Filter {
    namespace: Option<String>,
    pod: Option<String>,
    cgroup: Option<String>,
    min_latency_ms: Option<f64>,
}

impl Filter {
    fn matches(&self, event: &TraceEvent) -> bool {
        if let Some(ns) = &self.namespace
            && event.workload.namespace.as_deref() != Some(ns.as_str())
        {
            return false;
        }
        if let Some(pod) = &self.pod
            && event.workload.pod.as_deref() != Some(pod.as_str())
            && event.workload.pod_uid.as_deref() != Some(pod.as_str())
        {
            return false;
        }
        if let Some(cgroup) = &self.cgroup
            && !cgroup_matches(cgroup, event)
        {
            return false;
        }
        if let Some(min) = self.min_latency_ms
            && event.latency_ms().is_some_and(|ms| ms < min)
        {
            return false;
        }
        true
    }
}

fn cgroup_matches(wanted: &str, event: &TraceEvent) -> bool {
    if let Ok(id) = wanted.parse::<u64>() {
        return event.workload.cgroup_id == Some(id);
    }
    let wanted = format!("/{}", wanted.trim_matches('/'));
    event.workload.cgroup_path.as_deref().is_some_and(|path| {
        wanted == "/"
            || path == wanted
            || path
                .strip_prefix(&wanted)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// How often names are refreshed and the lost count is checked.
const TICK: Duration = Duration::from_secs(1);

pub(super) fn run(args: &Args, options: &LoadOptions) -> anyhow::Result<()> {
    let signals = selected(&args.signal);
    let options = LoadOptions {
        trace: Some((trace_config(args, &signals), args.buffer_size)),
        ..options.clone()
    };
    let mut probe = Probe::load(&options)?;
    let mut ring = probe.take_trace_events()?;
    // Kernel symbols need CAP_SYSLOG: read them before it goes.
    let mut decoder = Decoder::new(Symbols::load(Path::new("/proc/kallsyms")));
    crate::privileges::after_attach(crate::privileges::needs::OBSERVE);
    let mut collector = Collector::start_with(probe, args.collector.options()?)?;
    let filter = Filter {
        namespace: args.namespace.clone(),
        pod: args.pod.clone(),
        cgroup: args.cgroup.clone(),
        min_latency_ms: args.min_latency.map(|d| d.as_secs_f64() * 1e3),
    };

    let stop = stop_flag()?;
    announce(&signals, &collector);

    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut stdout = std::io::stdout().lock();
    let mut next_tick = Instant::now() + TICK;
    let mut reported_lost = 0;
    let mut bad_records = 0u64;
    loop {
        let now = Instant::now();
        let stopping = stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d);
        let wait = deadline
            .map_or(TICK, |d| d.saturating_duration_since(now))
            .min(next_tick.saturating_duration_since(now))
            .min(Duration::from_millis(200));
        if !stopping {
            wait_readable(ring.as_raw_fd(), wait);
        }
        let output = Output {
            json: args.json,
            filter: &filter,
        };
        if !output.drain(
            &mut ring,
            &mut decoder,
            &mut collector,
            &mut stdout,
            &mut bad_records,
        )? {
            // A closed pipe (`| head`) ends the trace, quietly.
            return Ok(());
        }
        stdout.flush().context("writing events")?;
        if stopping {
            break;
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + TICK;
            collector.tick()?;
            decoder.refresh();
            let lost = total_lost(&collector)?;
            if lost > reported_lost {
                eprintln!(
                    "lost: {lost} events did not fit in the ring buffer so far (raise --buffer-size)"
                );
                reported_lost = lost;
            }
        }
    }
    print_lost(&collector, bad_records)
}

/// What the kernel programs send to the ring: the events of `signals`, block requests
/// from `--min-latency` on.
fn trace_config(args: &Args, signals: &[Signal]) -> TraceConfig {
    TraceConfig {
        kinds: signals
            .iter()
            .fold(0, |bits, s| bits | s.trace_kind().bit()),
        _pad: 0,
        min_block_ns: args.min_latency.map_or(0, |d| d.as_nanos() as u64),
    }
}

/// Set by SIGINT or SIGTERM, which end the trace.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the Ctrl-C handler")?;
    }
    Ok(stop)
}

/// The `ready:` line: what is traced, and how many programs attached.
fn announce(signals: &[Signal], collector: &Collector) {
    let names: Vec<&str> = signals.iter().map(|s| s.trace_name()).collect();
    let attached: Vec<&str> = collector
        .probe()
        .statuses()
        .iter()
        .filter(|s| s.attached)
        .map(|s| s.name.as_str())
        .collect();
    eprintln!(
        "ready: tracing {} ({} programs attached)",
        names.join(", "),
        attached.len()
    );
}

/// Where events go: `--json` or lines, through the filter.
struct Output<'a> {
    json: bool,
    filter: &'a Filter,
}

impl Output<'_> {
    /// Writes every record the ring holds; `false` once stdout is a closed pipe.
    fn drain(
        &self,
        ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
        decoder: &mut Decoder,
        collector: &mut Collector,
        stdout: &mut impl Write,
        bad_records: &mut u64,
    ) -> anyhow::Result<bool> {
        while let Some(item) = ring.next() {
            let record = match Record::parse(&item) {
                Ok(record) => record,
                Err(err) => {
                    *bad_records += 1;
                    log::warn!("skipping a trace record: {err}");
                    continue;
                }
            };
            drop(item);
            let event = decoder.event(collector, &record);
            if !self.filter.matches(&event) {
                continue;
            }
            let written = if self.json {
                serde_json::to_writer(&mut *stdout, &event)
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(stdout))
            } else {
                writeln!(stdout, "{}", event.to_line())
            };
            match written {
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(false),
                other => other.context("writing events")?,
            }
        }
        Ok(true)
    }
}

/// What did not fit in the ring buffer, by signal, and the malformed records skipped.
fn print_lost(collector: &Collector, bad_records: u64) -> anyhow::Result<()> {
    let lost = collector.probe().trace_lost()?;
    let total: u64 = lost.iter().map(|(_, n)| n).sum();
    let by_kind: Vec<String> = lost
        .iter()
        .filter(|(_, n)| *n > 0)
        .filter_map(|(k, n)| Some(format!("{} {n}", Signal::of_trace_kind(*k)?.trace_name())))
        .collect();
    eprintln!(
        "lost {total} events{}{}",
        if by_kind.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_kind.join(", "))
        },
        if bad_records > 0 {
            format!("; {bad_records} malformed records skipped")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn total_lost(collector: &Collector) -> anyhow::Result<u64> {
    Ok(collector.probe().trace_lost()?.iter().map(|(_, n)| n).sum())
}

/// Sleeps until the ring buffer has data or `timeout` passes (signals cut it short).
fn wait_readable(fd: i32, timeout: Duration) {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_bytes("4096"), Ok(4096));
        assert!(parse_ring_bytes("5000").is_err());
        assert!(parse_ring_bytes("1024").is_err());
        assert!(parse_ring_bytes("x").is_err());
    }
}
