//! `tuneprobe fleet verify`: a tuning rollout judged across nodes, canary against
//! control, through Prometheus's query API.

use std::{path::PathBuf, time::Duration};

use crate::{
    fleet::{self, By, Options, prom::Matchers},
    signals::measure::Measure,
};
use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
#[command(
    about = "Judge a tuning change across nodes: canary against control, through Prometheus",
    long_about = "Judge a tuning change across nodes. The canary nodes' shift from before \
                  the change to after it is compared with the control nodes' shift over the \
                  same intervals (difference in differences), per pod matched across nodes \
                  by namespace, workload and container, and overall, from the series every \
                  agent exports, read through Prometheus's query API (or Thanos, Mimir, \
                  VictoriaMetrics). With --knob, each node's change time comes from \
                  tuneprobe_tuning_changes_total and tuneprobe_tuning_value, and the canary \
                  is the nodes whose knob changed, the control those whose knob did not.",
    after_help = "Examples:\n  \
                  tuneprobe fleet verify --prometheus http://prometheus:9090 --knob cpu.max\n  \
                  tuneprobe fleet verify --prometheus https://prom.example --bearer-token-file /var/run/secrets/token \\\n    \
                  --at 2026-12-01T10:00:00Z --canary 'node=~\"pool-b-.*\"' --control 'node=~\"pool-a-.*\"' --signal dns_latency_ms"
)]
pub(super) struct VerifyArgs {
    /// The query API's base URL (`http://prometheus:9090`, with a path prefix if any).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    prometheus: String,

    /// Send `Authorization: Bearer <token>` with the token in FILE (re-read per request).
    #[arg(long, value_name = "FILE")]
    bearer_token_file: Option<PathBuf>,

    /// CA certificate (PEM) for an https URL.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,

    /// Do not verify the server's certificate.
    #[arg(long)]
    insecure_skip_tls_verify: bool,

    /// The knob whose change is judged (`cpu.max`, `net.core.somaxconn`, ...): each
    /// node's change time is found in its metrics.
    #[arg(
        long,
        value_name = "KNOB",
        required_unless_present = "at",
        conflicts_with = "at"
    )]
    knob: Option<String>,

    /// The change time of every canary node: RFC 3339 (`2026-12-01T10:00:00Z`) or unix
    /// seconds; needs --canary and --control.
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires_all = ["canary", "control"])]
    at: Option<f64>,

    /// Label matchers of the canary nodes (`node=~"pool-b-.*"`); with --knob, the
    /// canary is those of them whose knob changed (default: every node).
    #[arg(long, value_name = "SELECTOR", value_parser = parse_matchers)]
    canary: Option<Matchers>,

    /// Label matchers of the control nodes; with --knob, the control is those of them
    /// whose knob did not change (default: every node).
    #[arg(long, value_name = "SELECTOR", value_parser = parse_matchers)]
    control: Option<Matchers>,

    /// Length of the window before the change.
    #[arg(long, value_name = "DURATION", value_parser = super::snapshot::parse_duration, default_value = "10m")]
    before: Duration,

    /// Length of the window after the change.
    #[arg(long, value_name = "DURATION", value_parser = super::snapshot::parse_duration, default_value = "10m")]
    after: Duration,

    /// One sample per interval: at least two scrape intervals.
    #[arg(long, value_name = "DURATION", value_parser = super::snapshot::parse_duration, default_value = "1m")]
    interval: Duration,

    /// With --knob: how far back its changes are looked for.
    #[arg(long, value_name = "DURATION", value_parser = super::snapshot::parse_duration, default_value = "6h")]
    since: Duration,

    /// Judge this signal instead of the knob's own (repeatable): cpu_throttled_ratio,
    /// retransmit_ratio, listen_overflow_ratio, drops, block_service_ms,
    /// block_service_p99_ms, block_queue_ms, dns_latency_ms, dns_latency_p99_ms.
    #[arg(long = "signal", value_name = "SIGNAL", value_parser = parse_signal)]
    signals: Vec<Measure>,

    /// Verdicts per canary pod, per workload, or per canary node (and always overall).
    #[arg(long, value_enum, default_value = "pod")]
    by: By,

    /// JSON instead of the table.
    #[arg(long)]
    json: bool,

    /// Also draw each verdict's canary and control samples, before and after, into an
    /// SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

fn parse_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or("expected an http(s) URL such as http://prometheus:9090")?;
    if rest.split('/').next().unwrap_or_default().is_empty() {
        return Err("the URL has no host".into());
    }
    Ok(text.trim_end_matches('/').to_string())
}

fn parse_time(text: &str) -> Result<f64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Ok(seconds);
    }
    let at = humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("{e} (expected RFC 3339 such as 2026-12-01T10:00:00Z, or unix seconds)")
    })?;
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .map_err(|e| e.to_string())
}

fn parse_matchers(text: &str) -> Result<Matchers, String> {
    Matchers::parse(text).map_err(|e| e.to_string())
}

fn parse_signal(text: &str) -> Result<Measure, String> {
    Measure::parse(text).ok_or_else(|| {
        let names: Vec<String> = Measure::judged().map(Measure::name).collect();
        format!("unknown signal; one of {}", names.join(", "))
    })
}

pub(super) fn run(args: &Args) -> anyhow::Result<()> {
    match &args.command {
        Command::Verify(args) => verify(args),
    }
}

fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let prometheus = fleet::prom::Prometheus::new(&fleet::prom::PromConfig {
        base_url: args.prometheus.clone(),
        bearer_token_file: args.bearer_token_file.clone(),
        ca_file: args.ca_file.clone(),
        insecure: args.insecure_skip_tls_verify,
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs_f64();
    let options = Options {
        knob: args.knob.clone(),
        at: args.at,
        canary: args.canary.clone().unwrap_or_default(),
        control: args.control.clone().unwrap_or_default(),
        before: args.before.as_secs_f64(),
        after: args.after.as_secs_f64(),
        interval: args.interval.as_secs_f64(),
        since: args.since.as_secs_f64(),
        signals: args.signals.clone(),
        by: args.by,
        now,
    };
    let report = fleet::verify(&prometheus, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", fleet::view::table(&report));
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, fleet::view::svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
