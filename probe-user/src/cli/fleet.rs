//! `tuneprobe fleet verify`: a tuning rollout judged across nodes, canary against
//! control, through Prometheus's query API.

use std::{fmt::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use crate::{
    fleet::{
        self, By, Options,
        gate::{self, FailOn, Outcome},
        prom::Matchers,
    },
    signals::measure::Measure,
};
use anyhow::Context as _;

/// Every exit code of `fleet verify`: the code, the gate's outcome it stands for (none:
/// a code of every subcommand), and what it means. `--help` and the table of
/// docs/fleet.md are written from it.
const EXIT_CODES: [(u8, Option<Outcome>, &str); 6] = [
    (
        0,
        Some(Outcome::Pass),
        "the gate passes: each measure's overall verdict is one that --fail-on lets \
         through (without --fail-on: the report was made, whatever its verdicts)",
    ),
    (
        1,
        None,
        "an error that is not about the data: an unreadable --ca-file or \
         --bearer-token-file, a knob no signal judges, an unwritable --plot (without --fail-on, the errors of code 5 too)",
    ),
    (
        2,
        None,
        "a usage error: an unknown option, a missing one, or a value the command line \
         refuses",
    ),
    (
        3,
        Some(Outcome::Regressed),
        "the gate fails on a regression: a measure's overall verdict is `regressed` \
         (with either --fail-on)",
    ),
    (
        4,
        Some(Outcome::NotImproved),
        "the gate fails, with --fail-on not-improved: a measure's overall verdict is \
         `no significant change`",
    ),
    (
        5,
        Some(Outcome::Unjudged),
        "the gate could not judge (with either --fail-on): a measure's overall verdict \
         is `insufficient data`, no canary or no control node reported, Prometheus \
         was unreachable or answered with an error, or its answer was partial (warnings, \
         or not caught up with the after window) and no measure regressed",
    ),
];

/// The exit code of the gate's outcome.
fn exit_code(outcome: Outcome) -> u8 {
    EXIT_CODES
        .iter()
        .find(|(_, o, _)| *o == Some(outcome))
        .map(|(code, _, _)| *code)
        .expect("every outcome has an exit code")
}

/// The examples and the exit codes, after the options in `--help`.
fn after_help() -> String {
    let mut out = String::from(
        "Examples:\n  \
         tuneprobe fleet verify --prometheus http://prometheus:9090 --knob cpu.max\n  \
         tuneprobe fleet verify --prometheus https://prom.example --bearer-token-file /var/run/secrets/token \\\n    \
         --at 2026-12-01T10:00:00Z --canary 'node=~\"pool-b-.*\"' --control 'node=~\"pool-a-.*\"' --signal dns_latency_ms\n  \
         tuneprobe fleet verify --prometheus http://prometheus:9090 --knob net.core.somaxconn --fail-on regressed\n  \
         tuneprobe fleet verify --prometheus http://mimir:8080/prometheus --header X-Scope-OrgID:team-a --knob cpu.max\n\n\
         Exit codes:\n",
    );
    for (code, _, meaning) in EXIT_CODES {
        let _ = writeln!(out, "  {code}  {meaning}");
    }
    out
}

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Verify(VerifyArgs),
    Ab(AbArgs),
}

/// Where the series are: Prometheus or a store that speaks its query API.
#[derive(Debug, clap::Args)]
struct StoreArgs {
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

    /// Send this header with every request (repeatable): a Mimir or Cortex tenant's
    /// `X-Scope-OrgID:TENANT`, a proxy's own.
    #[arg(long = "header", value_name = "NAME:VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

impl StoreArgs {
    fn connect(&self) -> anyhow::Result<fleet::prom::Prometheus> {
        Ok(fleet::prom::Prometheus::new(&fleet::prom::PromConfig {
            base_url: self.prometheus.clone(),
            bearer_token_file: self.bearer_token_file.clone(),
            ca_file: self.ca_file.clone(),
            insecure: self.insecure_skip_tls_verify,
            headers: self.headers.clone(),
        })?)
    }
}

/// `fleet ab`: two groups of pods side by side across nodes.
#[derive(Debug, clap::Args)]
#[command(
    about = "Compare two groups of pods across nodes, side by side, through Prometheus",
    long_about = "Compare two groups of pods of one workload that run side by side with \
                  different values of a knob (a namespaced sysctl in the pod spec, a CPU \
                  limit), over the same intervals: per interval the treated group's value \
                  (the median over its containers) minus the control's, tested against zero \
                  (Wilcoxon signed-rank test, Hodges-Lehmann shift with its 95% interval). \
                  No before and after: load that changes for both cancels.",
    after_help = "Example:\n  \
                  tuneprobe fleet ab --prometheus http://prometheus:9090 \\\n    \
                  --treated 'namespace=\"shop\",pod=~\"api-wide-.*\"' --control 'namespace=\"shop\",pod=~\"api-narrow-.*\"' \\\n    \
                  --signal connect_failure_ratio --window 30m"
)]
struct AbArgs {
    #[command(flatten)]
    store: StoreArgs,

    /// Label matchers of the treated pods' series (`namespace="shop",pod=~"api-b-.*"`;
    /// any exported label: `node`, `namespace`, `pod`, `container`, `label_<name>`).
    #[arg(long, value_name = "SELECTOR", value_parser = parse_matchers)]
    treated: Matchers,

    /// Label matchers of the control pods' series.
    #[arg(long, value_name = "SELECTOR", value_parser = parse_matchers)]
    control: Matchers,

    /// The signals to compare (repeatable), as `verify --signal` names them.
    #[arg(long = "signal", value_name = "SIGNAL", value_parser = parse_signal, required = true)]
    signals: Vec<Measure>,

    /// The window, ending now (or at --end).
    #[arg(long, value_name = "DURATION", value_parser = super::snapshot::parse_duration, default_value = "30m")]
    window: Duration,

    /// The window's end: RFC 3339 or unix seconds (default: now).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    end: Option<f64>,

    /// One sample per interval: at least two scrape intervals.
    #[arg(long, value_name = "DURATION", value_parser = super::snapshot::parse_duration, default_value = "1m")]
    interval: Duration,

    /// JSON instead of the table.
    #[arg(long)]
    json: bool,
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
    after_help = after_help()
)]
pub(super) struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,

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

    /// Judge this signal instead of the knob's own (repeatable): any measure of "What is
    /// judged" in docs/verify.md (cpu_throttled_ratio, retransmit_ratio,
    /// connect_failure_ratio, rcvbuf_drop_ratio, dns_latency_p99_ms, ...).
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

    /// Be a gate that stops a rollout: after the report, one line on stderr says whether
    /// the gate passed and why, and the exit code says how it failed (below). The gate
    /// holds each measure's overall verdict against `regressed` (fail when one
    /// regressed) or `not-improved` (fail unless each improved); a measure with
    /// insufficient data, or no data at all, fails either.
    #[arg(long, value_enum, value_name = "WHEN")]
    fail_on: Option<FailOn>,
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

/// `NAME:VALUE`: a header name (an HTTP token) and its value, blanks around it trimmed.
fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or("expected NAME:VALUE such as X-Scope-OrgID:tenant-a")?;
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("`{name}` is not a header name"));
    }
    let value = value.trim();
    if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return Err("a header value cannot hold control characters".into());
    }
    Ok((name.to_string(), value.to_string()))
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

pub(super) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        Command::Verify(args) => verify(args),
        Command::Ab(args) => ab(args),
    }
}

fn ab(args: &AbArgs) -> anyhow::Result<ExitCode> {
    let prometheus = args.store.connect()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs_f64();
    let options = fleet::ab::AbOptions {
        treated: args.treated.clone(),
        control: args.control.clone(),
        window: args.window.as_secs_f64(),
        end: args.end.unwrap_or(now),
        interval: args.interval.as_secs_f64(),
        signals: args.signals.clone(),
    };
    let report = fleet::ab::verify_ab(&prometheus, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", ab_table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// `fleet ab`'s report for a person.
fn ab_table(report: &fleet::ab::AbReport) -> String {
    let mut out = format!(
        "treated {{{}}} against control {{{}}}, {:.0}s in {:.0}s intervals\n",
        report.treated, report.control, report.window_s, report.interval_s
    );
    for note in &report.notes {
        let _ = writeln!(out, "  {note}");
    }
    for warning in &report.partial {
        let _ = writeln!(out, "  note: partial data: {warning}");
    }
    let _ = writeln!(
        out,
        "{:<24} {:>9} {:>9} {:>9} {:>21} {:>8} {:>9}  VERDICT",
        "SIGNAL", "TREATED", "CONTROL", "EFFECT", "95% CI", "P", "INTERVALS"
    );
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
    for v in &report.verdicts {
        let c = &v.comparison;
        let _ = writeln!(
            out,
            "{:<24} {:>9} {:>9} {:>9} {:>21} {:>8.4} {:>9}  {}",
            v.signal.name(),
            num(v.treated),
            num(v.control),
            num(Some(c.effect)),
            format!("[{}, {}]", num(Some(c.ci95[0])), num(Some(c.ci95[1]))),
            c.p_value,
            v.intervals,
            crate::output::serde_name(&c.verdict)
        );
    }
    out
}

/// What to judge, from the command line.
fn options(args: &VerifyArgs) -> anyhow::Result<Options> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs_f64();
    Ok(Options {
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
    })
}

fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let prometheus = args.store.connect()?;
    let report = match fleet::verify(&prometheus, &options(args)?) {
        Ok(report) => report,
        // A gate that cannot get at the data fails with a code of its own: missing data
        // must not pass a rollout, nor look like a mistaken command line.
        Err(err) => match args.fail_on {
            Some(fail_on) if gate::unjudged(&err) => {
                eprintln!(
                    "tuneprobe: gate failed (--fail-on {}): could not judge: {err}",
                    fail_on.name()
                );
                return Ok(ExitCode::from(exit_code(Outcome::Unjudged)));
            }
            _ => return Err(err.into()),
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", fleet::view::table(&report));
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, fleet::view::svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let Some(fail_on) = args.fail_on else {
        return Ok(ExitCode::SUCCESS);
    };
    let gate = gate::judge(&report, fail_on);
    eprintln!(
        "tuneprobe: gate {} (--fail-on {}): {}",
        if gate.outcome == Outcome::Pass {
            "passed"
        } else {
            "failed"
        },
        fail_on.name(),
        gate.why
    );
    Ok(ExitCode::from(exit_code(gate.outcome)))
}

/// Where the table of exit codes in docs/fleet.md starts and ends.
#[cfg(test)]
const DOC_BEGIN: &str = "<!-- exit-codes:begin (generated from EXIT_CODES in probe-user/src/cli/fleet.rs; TUNEPROBE_BLESS=1 cargo test -p probe-user fleet_exit_codes rewrites it) -->";
#[cfg(test)]
const DOC_END: &str = "<!-- exit-codes:end -->";

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn fleet_exit_codes_of_each_outcome() {
        let codes: Vec<(Outcome, u8)> = Outcome::ALL.iter().map(|o| (*o, exit_code(*o))).collect();
        assert_eq!(
            codes,
            [
                (Outcome::Pass, 0),
                (Outcome::NotImproved, 4),
                (Outcome::Unjudged, 5),
                (Outcome::Regressed, 3),
            ]
        );
        // Each code once, and the gate's failures apart from the codes every subcommand
        // has: 1 (an error, `cli::main`) and 2 (a usage error, `cli::usage_error`).
        let mut all: Vec<u8> = EXIT_CODES.iter().map(|(code, _, _)| *code).collect();
        all.dedup();
        assert_eq!(all, [0, 1, 2, 3, 4, 5]);
        for (code, outcome, _) in EXIT_CODES {
            assert_eq!(outcome.is_none(), matches!(code, 1 | 2), "{code}");
        }
    }

    /// One verdict and gate of each kind, as a report's overall verdicts give them
    /// (`fleet::gate`'s tests), through to the exit code.
    #[test]
    fn fleet_exit_codes_of_verdicts() {
        use crate::verify::stats::Verdict;
        for (verdict, regressed, not_improved) in [
            (Verdict::Improved, 0, 0),
            (Verdict::NoSignificantChange, 0, 4),
            (Verdict::Regressed, 3, 3),
            (Verdict::InsufficientData, 5, 5),
        ] {
            assert_eq!(
                exit_code(Outcome::of(verdict, FailOn::Regressed)),
                regressed,
                "{verdict:?}"
            );
            assert_eq!(
                exit_code(Outcome::of(verdict, FailOn::NotImproved)),
                not_improved,
                "{verdict:?}"
            );
        }
    }

    #[test]
    fn fleet_exit_codes_in_help_and_docs() {
        let help = Cli::try_parse_from(["tuneprobe", "fleet", "verify", "--help"])
            .unwrap_err()
            .to_string();
        let mut table = String::from("| code | meaning |\n|---|---|\n");
        for (code, _, meaning) in EXIT_CODES {
            assert!(help.contains(&format!("  {code}  {meaning}\n")), "{help}");
            let _ = writeln!(table, "| {code} | {meaning} |");
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/fleet.md");
        let page = std::fs::read_to_string(path).unwrap();
        let start = page
            .find(DOC_BEGIN)
            .expect("docs/fleet.md has the begin marker")
            + DOC_BEGIN.len();
        let end = page
            .find(DOC_END)
            .expect("docs/fleet.md has the end marker");
        let generated = format!("\n{table}");
        if std::env::var_os("TUNEPROBE_BLESS").is_some() {
            std::fs::write(
                path,
                format!("{}{generated}{}", &page[..start], &page[end..]),
            )
            .unwrap();
            return;
        }
        assert_eq!(
            page[start..end],
            generated,
            "the exit codes in docs/fleet.md differ from EXIT_CODES: run \
             TUNEPROBE_BLESS=1 cargo test -p probe-user fleet_exit_codes"
        );
    }

    #[test]
    fn headers_are_name_and_value() {
        assert_eq!(
            parse_header("X-Scope-OrgID: team-a"),
            Ok(("X-Scope-OrgID".into(), "team-a".into()))
        );
        // The first colon splits: values may hold more.
        assert_eq!(
            parse_header("X-Forwarded-For:a:b"),
            Ok(("X-Forwarded-For".into(), "a:b".into()))
        );
        for bad in ["X-Scope-OrgID", ":v", "X Scope:v", "X:a\nb"] {
            assert!(parse_header(bad).is_err(), "{bad}");
        }
        let cli = Cli::try_parse_from([
            "tuneprobe",
            "fleet",
            "verify",
            "--prometheus",
            "http://mimir:8080/prometheus",
            "--knob",
            "cpu.max",
            "--header",
            "X-Scope-OrgID:a",
            "--header",
            "X-Scope-OrgID:b",
        ])
        .unwrap();
        let crate::cli::Command::Fleet(Args {
            command: Command::Verify(v),
        }) = cli.command
        else {
            unreachable!()
        };
        assert_eq!(v.store.prometheus, "http://mimir:8080/prometheus");
        assert_eq!(
            v.store.headers,
            [
                ("X-Scope-OrgID".to_string(), "a".to_string()),
                ("X-Scope-OrgID".to_string(), "b".to_string())
            ]
        );
    }

    #[test]
    fn fail_on_takes_one_value() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                [
                    "tuneprobe",
                    "fleet",
                    "verify",
                    "--prometheus",
                    "http://p:9090",
                ]
                .iter()
                .chain(args),
            )
            .map(|cli| match cli.command {
                crate::cli::Command::Fleet(Args {
                    command: Command::Verify(v),
                }) => v.fail_on,
                _ => unreachable!(),
            })
            .map_err(|e| e.kind())
        };
        assert_eq!(parse(&["--knob", "cpu.max"]), Ok(None));
        assert_eq!(
            parse(&["--knob", "cpu.max", "--fail-on", "regressed"]),
            Ok(Some(FailOn::Regressed))
        );
        assert_eq!(
            parse(&["--knob", "cpu.max", "--fail-on", "not-improved"]),
            Ok(Some(FailOn::NotImproved))
        );
        assert_eq!(
            parse(&["--knob", "cpu.max", "--fail-on", "worse"]),
            Err(clap::error::ErrorKind::InvalidValue)
        );
        // One value: not-improved already fails on a regression.
        assert_eq!(
            parse(&[
                "--knob",
                "cpu.max",
                "--fail-on",
                "regressed",
                "--fail-on",
                "not-improved"
            ]),
            Err(clap::error::ErrorKind::ArgumentConflict)
        );
    }
}
