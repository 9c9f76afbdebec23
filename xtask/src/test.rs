//! `cargo xtask test`: setup, then every unit and integration test.
//!
//! The integration tests load the real programs into the running kernel and build their
//! own network namespaces and cgroups, so they need root.

use std::process::Command;

use crate::{is_root, run_checked, setup, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test` (a test name filter, `--nocapture`, ...).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cargo_test_args: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        is_root(),
        "the tests load eBPF programs and create network namespaces and cgroups: run as root"
    );
    setup::run()?;
    let root = workspace_root();
    // The integration tests run the release binary end to end as well.
    run_checked(Command::new(env!("CARGO")).current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "probe-user",
    ]))?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .arg("test")
        .arg("--workspace")
        .args(["--exclude", "probe-ebpf"]);
    if !args.cargo_test_args.is_empty() {
        cmd.arg("--").args(&args.cargo_test_args);
    }
    run_checked(&mut cmd)
}
