//! Command line: global options, then one module per subcommand.

mod serve;
mod snapshot;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, error::ErrorKind};
use tuneprobe::LoadOptions;

/// Per-pod TCP retransmits, packet drops with kernel drop reasons, DNS, block IO and
/// CPU throttling, measured in the kernel with eBPF.
#[derive(Debug, Parser)]
#[command(name = "tuneprobe", version, propagate_version = true)]
pub struct Cli {
    /// Kernel BTF to resolve struct layouts from, for kernels that do not publish
    /// /sys/kernel/btf/vmlinux.
    #[arg(long, global = true, value_name = "PATH")]
    btf: Option<PathBuf>,

    /// More log output on stderr (-v: info, -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Snapshot(snapshot::Args),
    Serve(serve::Args),
}

impl Cli {
    pub fn log_level(&self) -> log::LevelFilter {
        match self.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            _ => log::LevelFilter::Debug,
        }
    }

    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            btf_path: self.btf.clone(),
            ..LoadOptions::default()
        }
    }

    pub fn run(&self) -> anyhow::Result<()> {
        match &self.command {
            Command::Snapshot(args) => snapshot::run(args, &self.load_options()),
            Command::Serve(args) => serve::run(args, &self.load_options()),
        }
    }
}

/// Help and version go to stdout with success; a bad argument is one line on stderr and
/// exit code 2, so scripts can tell misuse from failure.
pub fn usage_error(err: &clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        _ => {
            let rendered = err.render().to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("tuneprobe: {}", line.trim_start_matches("error: "));
            ExitCode::from(2)
        }
    }
}
