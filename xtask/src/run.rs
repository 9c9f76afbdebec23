//! `cargo xtask run -- ARGS`: setup, build, run tuneprobe as root.

use std::process::Command;

use crate::{build, is_root, run_checked, setup, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Arguments for tuneprobe, e.g. `snapshot --for 10s --json`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    setup::run()?;
    build::release()?;
    let binary = workspace_root().join("target/release/tuneprobe");
    // Loading eBPF programs needs root (or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN).
    let mut cmd = if is_root() {
        Command::new(&binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(&binary);
        sudo
    };
    run_checked(cmd.args(&args.args))
}
