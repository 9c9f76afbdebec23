//! `cargo xtask test`: setup, then every unit and integration test.
//!
//! The integration tests load the real programs into the running kernel and build their
//! own network namespaces and cgroups, so they need root.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::Context as _;

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
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    // Echo everything, and add up the per-binary results into one closing line.
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait()?;
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    anyhow::ensure!(status.success(), "cargo test failed: {status}");
    anyhow::ensure!(totals.passed > 0, "cargo test ran no test");
    Ok(())
}

#[derive(Debug, Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    /// Adds `test result: ok. 24 passed; 0 failed; ...`.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                _ => {}
            }
        }
    }
}
