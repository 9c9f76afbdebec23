//! Command line: global options, then one module per subcommand.

mod advise;
mod check;
mod fleet;
mod serve;
mod snapshot;
mod top;
mod trace;
mod tuning;
mod verify;
mod verify_ab;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, error::ErrorKind};

use crate::kernel::loader::LoadOptions;

/// Per-pod TCP retransmits, packet drops with kernel drop reasons, DNS, block IO and
/// CPU throttling, measured in the kernel with eBPF.
#[derive(Debug, Parser)]
#[command(name = "tuneprobe", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Kernel BTF to resolve struct layouts from, for kernels that do not publish
    /// /sys/kernel/btf/vmlinux.
    #[arg(long, global = true, value_name = "PATH")]
    btf: Option<PathBuf>,

    /// Have the kernel account each program's run time while tuneprobe runs (reported
    /// in `program_stats` and `tuneprobe_program_run_seconds_total`; costs a little on
    /// every program run, node-wide, until tuneprobe exits).
    #[arg(long, global = true)]
    bpf_stats: bool,

    /// Where the node's filesystem is mounted, when tuneprobe runs in a container that
    /// has its own: `kubectl debug node/NAME --profile=sysadmin` mounts it at `/host`.
    /// The cgroup hierarchies, kernel BTF, pod log directory and runtime socket are then
    /// taken from below it (`--pod-logs-dir` and `--cri-socket` still name paths as
    /// they are on the node).
    #[arg(long, global = true, value_name = "DIR")]
    host_root: Option<PathBuf>,

    /// More log output on stderr (-v: info, -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

/// How workloads are observed and named: shared by `snapshot` and `serve`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CollectorArgs {
    /// A DNS query without a response after this long counts as a timeout.
    #[arg(long, value_name = "DURATION", value_parser = snapshot::parse_duration, default_value = "5s")]
    dns_timeout: std::time::Duration,

    /// How long a deleted pod (cgroup, network namespace) stays in reports and metrics;
    /// after it, its kernel map entries are deleted too.
    #[arg(long, value_name = "DURATION", value_parser = snapshot::parse_duration, default_value = "5m")]
    pod_grace: std::time::Duration,

    /// The kubelet's pod log directory, for pod and container names when the API is not
    /// reachable (its sibling `containers` directory names containers).
    #[arg(long, value_name = "DIR", default_value = crate::workloads::pods::DEFAULT_POD_LOGS_DIR)]
    pod_logs_dir: PathBuf,

    /// The Kubernetes API for pod names and labels: `auto` (in-cluster when running in a
    /// pod, else `--kubeconfig` if given), `none`, or a URL such as
    /// `http://127.0.0.1:8001` (kubectl proxy).
    #[arg(long, value_name = "auto|none|URL", default_value = "auto", value_parser = parse_kube_api)]
    kube_api: String,

    /// A kubeconfig whose current context names the API (with `--kube-api auto`).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// Bearer token file for `--kube-api URL`.
    #[arg(long, value_name = "FILE")]
    kube_token_file: Option<PathBuf>,

    /// CA certificate (PEM) for an https `--kube-api URL`.
    #[arg(long, value_name = "FILE")]
    kube_ca_file: Option<PathBuf>,

    /// The container runtime's CRI socket, for pod and container names and labels where
    /// the Kubernetes API is not used: `auto` (the first of containerd's and CRI-O's
    /// usual sockets that exists), `none`, or a path on the node.
    #[arg(long, value_name = "auto|none|PATH", default_value = "auto")]
    cri_socket: String,

    /// This node's name, to watch only its pods (default: $NODE_NAME, else the hostname).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
}

/// `auto`, `none`, or an http(s) URL with a host: anything else is a usage error (exit 2)
/// now rather than a watcher that fails forever later.
fn parse_kube_api(text: &str) -> Result<String, String> {
    let host = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .map(|rest| rest.split(['/', '?']).next().unwrap_or_default());
    match (text, host) {
        ("auto" | "none", _) => Ok(text.to_string()),
        (_, Some(host)) if !host.is_empty() && !host.contains(char::is_whitespace) => {
            Ok(text.trim_end_matches('/').to_string())
        }
        _ => Err("expected auto, none or an http(s) URL such as http://127.0.0.1:8001".into()),
    }
}

impl CollectorArgs {
    pub(crate) fn options(&self) -> anyhow::Result<crate::window::CollectorOptions> {
        use crate::{window::CriSocket, workloads::kube::ApiConfig};
        let kube_api = match self.kube_api.as_str() {
            "none" => None,
            "auto" => match (ApiConfig::in_cluster(), &self.kubeconfig) {
                (Some(in_cluster), _) => Some(in_cluster),
                (None, Some(file)) => Some(ApiConfig::from_kubeconfig(file)?),
                (None, None) => None,
            },
            url => Some(ApiConfig {
                base_url: url.to_string(),
                token_file: self.kube_token_file.clone(),
                ca_file: self.kube_ca_file.clone(),
                ..ApiConfig::default()
            }),
        };
        Ok(crate::window::CollectorOptions {
            dns_timeout: self.dns_timeout,
            pod_grace: self.pod_grace,
            pod_logs_dir: crate::workloads::host::path(&self.pod_logs_dir),
            kube_api,
            cri_socket: match self.cri_socket.as_str() {
                "auto" => CriSocket::Auto,
                "none" => CriSocket::None,
                path => CriSocket::Path(crate::workloads::host::path(path)),
            },
            node_name: self
                .node_name
                .clone()
                .unwrap_or_else(crate::window::node_name),
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    Snapshot(snapshot::Args),
    Advise(advise::Args),
    Serve(serve::Args),
    Tuning(tuning::Args),
    // Boxed: the largest by far (the A/B and prediction options).
    Verify(Box<verify::Args>),
    Trace(trace::Args),
    Top(top::Args),
    Check(check::Args),
    /// Verdicts across nodes, through Prometheus.
    Fleet(fleet::Args),
}

impl Cli {
    pub(crate) fn log_level(&self) -> log::LevelFilter {
        match self.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            _ => log::LevelFilter::Debug,
        }
    }

    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            btf_path: self.btf.clone(),
            bpf_stats: self.bpf_stats,
            ..LoadOptions::default()
        }
    }

    /// Runs the subcommand: success, or the exit code a subcommand chose (`fleet verify
    /// --fail-on`'s gate); errors are the caller's to print.
    pub(crate) fn run(&self) -> anyhow::Result<ExitCode> {
        if let Some(root) = &self.host_root {
            crate::workloads::host::set_root(root)?;
        }
        match &self.command {
            Command::Snapshot(args) => snapshot::run(args, &self.load_options()),
            Command::Advise(args) => advise::run(args, &self.load_options()),
            Command::Serve(args) => serve::run(args, &self.load_options()),
            Command::Tuning(args) => tuning::run(args),
            Command::Verify(args) => verify::run(args, &self.load_options()),
            Command::Trace(args) => trace::run(args, &self.load_options()),
            Command::Top(args) => top::run(args, &self.load_options()),
            Command::Check(args) => check::run(args, &self.load_options()),
            Command::Fleet(args) => return fleet::run(args),
        }?;
        Ok(ExitCode::SUCCESS)
    }
}

/// The `tuneprobe` binary: parse the command line, log at its level, run the
/// subcommand; errors are one line on stderr and exit code 1 (`fleet verify --fail-on`
/// has codes of its own, `cli/fleet.rs`).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    env_logger::Builder::new()
        .filter_level(cli.log_level())
        .format_timestamp(None)
        .init();
    match cli.run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tuneprobe: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout with success; a bad argument is one line on stderr and
/// exit code 2, so scripts can tell misuse from failure.
fn usage_error(err: &clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        _ => {
            let rendered = err.render().to_string();
            // The first line, with the indented lines that finish it (the arguments of
            // "the following required arguments were not provided:").
            let mut lines = rendered.lines();
            let mut line = lines
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ")
                .to_string();
            for more in lines.take_while(|l| l.starts_with("  ")) {
                line.push(' ');
                line.push_str(more.trim());
            }
            eprintln!("tuneprobe: {line}");
            ExitCode::from(2)
        }
    }
}
