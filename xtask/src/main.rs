//! `cargo xtask`: the multi-step and privileged work around the plain cargo build.
//!
//! - `setup`: install what builds and tests need (idempotent; seconds when done).
//! - `build`: setup, then the release binary `target/release/tuneprobe`.
//! - `test`: setup, then every unit and integration test (as root).
//! - `run -- ARGS`: setup, build, run tuneprobe as root.
//! - `bench`: what tuneprobe costs next to bpftrace and nothing (see `bench/mod.rs`).
//! - `vm-test`: tuneprobe on Debian 12's 6.1 kernel under QEMU (see `vmtest.rs`).
//! - `soak --for DURATION`: every signal and cgroup churn for a long time; fails on growth.

mod bench;
mod build;
mod run;
mod setup;
mod test;
mod vmtest;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the pinned nightly, bpf-linker and the packages the tests use.
    Setup {
        /// Only what a build needs: the nightly and bpf-linker.
        #[arg(long)]
        toolchain_only: bool,
    },
    /// Setup, then build the release binary with the kernel programs embedded.
    Build,
    /// Setup, then run every unit and integration test (needs root).
    Test(test::Args),
    /// Setup, build, then run tuneprobe as root with ARGS.
    Run(run::Args),
    /// Measure tuneprobe's overhead against bpftrace and nothing attached (needs root).
    Bench(bench::Args),
    /// Boot Debian 12's 6.1 kernel under QEMU and check every signal it can produce.
    VmTest(vmtest::Args),
    /// Drive every signal and cgroup churn for a long time under `tuneprobe serve`;
    /// sample memory, CPU, map occupancy, lost updates and errors; fail on growth.
    Soak(bench::soak::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup {
            toolchain_only: true,
        } => setup::toolchain(),
        Command::Setup {
            toolchain_only: false,
        } => setup::run(),
        Command::Build => setup::run().and_then(|()| build::release()),
        Command::Test(args) => test::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::VmTest(args) => vmtest::run(&args),
        Command::Soak(args) => bench::soak::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Runs a command, failing with its command line if it fails.
fn run_checked(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot start {cmd:?}: {e}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
