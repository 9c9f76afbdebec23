//! `cargo xtask test`: setup, the release binary and the container image, then every
//! unit and integration test.
//!
//! The integration tests load the real programs into the running kernel and build their
//! own network namespaces and cgroups, so they need root.

use std::{
    ffi::{OsStr, OsString},
    fmt,
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context as _;

use crate::{image, is_root, run_checked, setup, workspace_root};

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
    // Every program any test will start, checked before the first one runs: a missing
    // tool is named here, all of them at once, not as a panic twenty minutes in.
    preflight(&required_tools(), setup::python_modules())?;
    let root = workspace_root();
    gates(&root)?;
    // The integration tests run the release binary end to end as well.
    run_checked(Command::new(env!("CARGO")).current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "probe-user",
    ]))?;
    // And the shipped image (tests/tests/image.rs runs it as the DaemonSet), built as
    // `cargo xtask image` builds it by default: a second release build of probe-user,
    // static with musl (2 min 40 s on 2 cores with its dependencies, about 40 s when only
    // the eBPF crate changed, seconds when current).
    image::run(&default_image_args()?)?;
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

/// The hygiene the workspace declares, before anything slow: formatting, clippy with
/// warnings denied (the host crates, then the kernel programs on their own target with
/// their pinned nightly), and the API docs with warnings denied.
fn gates(root: &Path) -> anyhow::Result<()> {
    let cargo = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(root).args(args);
        cmd
    };
    run_checked(&mut cargo(&["fmt", "--all", "--check"]))
        .context("the tree is not formatted: run `cargo fmt --all`")?;
    let host = ["--workspace", "--all-targets", "--exclude", "probe-ebpf"];
    run_checked(cargo(&["clippy"]).args(host).args(["--", "-D", "warnings"]))
        .context("clippy found warnings (denied)")?;
    run_checked(&mut ebpf_clippy(root)).context("clippy found warnings in probe-ebpf (denied)")?;
    let docs = ["doc", "--no-deps", "--workspace", "--exclude", "probe-ebpf"];
    run_checked(cargo(&docs).env("RUSTDOCFLAGS", "-D warnings"))
        .context("`cargo doc` found warnings (denied)")
}

/// Clippy over the kernel programs as they are built: the bpf target, `core` built
/// from source, the pinned nightly (`probe-ebpf/rust-toolchain.toml`), in a target
/// directory of its own so the host builds keep theirs.
fn ebpf_clippy(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("probe-ebpf"))
        .arg(format!("+{}", *setup::NIGHTLY))
        .args([
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .args(["--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", root.join("target/ebpf-clippy"))
        // Set by the cargo running xtask, they would pick its toolchain instead.
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC_WRAPPER");
    cmd
}

/// `cargo xtask image` without options: its own defaults, parsed as its command line
/// would be, so the name and path stay those of `cargo xtask image`.
fn default_image_args() -> anyhow::Result<image::Args> {
    use clap::{Args as _, FromArgMatches as _};
    let command = image::Args::augment_args(clap::Command::new("image"));
    let matches = command.try_get_matches_from(["image"])?;
    Ok(image::Args::from_arg_matches(&matches)?)
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

/// A program the tests start, and what provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// A name looked up in PATH, or an absolute path.
    pub program: String,
    /// Where it comes from, for the message: "Debian package iperf3".
    pub source: String,
}

/// Tools that are not there, all of them, in one error.
#[derive(Debug, thiserror::Error)]
pub struct MissingTools(pub Vec<Tool>);

impl fmt::Display for MissingTools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} program(s) the tests run are missing; `cargo xtask setup` installs them \
             (if it just ran, its package lists or PATH are wrong):",
            self.0.len()
        )?;
        for tool in &self.0 {
            write!(f, "\n  {} (from {})", tool.program, tool.source)?;
        }
        Ok(())
    }
}

/// What the tests, the benchmark and vm-test start (all of which `cargo xtask test`
/// runs): the programs of setup's Debian packages, plus what setup adds besides them.
pub fn required_tools() -> Vec<Tool> {
    let mut tools: Vec<Tool> = setup::DEBIAN_PACKAGES
        .iter()
        .flat_map(|package| {
            package.programs.iter().map(|program| Tool {
                program: (*program).to_string(),
                source: format!("Debian package {}", package.name),
            })
        })
        .collect();
    tools.push(Tool {
        program: "bpf-linker".to_string(),
        source: "cargo install bpf-linker (cargo xtask setup)".to_string(),
    });
    tools
}

/// Fails naming every tool of `tools` that PATH (or its absolute path) lacks, and every
/// one of `python_modules` (module, pip requirement) that python3 cannot import.
pub fn preflight(
    tools: &[Tool],
    python_modules: impl IntoIterator<Item = (&'static str, &'static str)>,
) -> Result<(), MissingTools> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut missing = missing_tools(tools, &path);
    if find_program("python3", &path) {
        for (module, requirement) in python_modules {
            let importable = Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|out| out.status.success());
            if !importable {
                missing.push(Tool {
                    program: format!("python3 module {module}"),
                    source: format!("pip {requirement}"),
                });
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingTools(missing))
    }
}

/// Those of `tools` that are not executable files in `path` (a PATH value).
pub fn missing_tools(tools: &[Tool], path: &OsStr) -> Vec<Tool> {
    tools
        .iter()
        .filter(|tool| !find_program(&tool.program, path))
        .cloned()
        .collect()
}

fn find_program(program: &str, path: &OsStr) -> bool {
    let executable = |file: &Path| {
        file.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::split_paths(&OsString::from(path))
        .filter(|dir| !dir.as_os_str().is_empty())
        .any(|dir| executable(&dir.join(program)))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn tool(program: &str, package: &str) -> Tool {
        Tool {
            program: program.to_string(),
            source: format!("Debian package {package}"),
        }
    }

    /// A PATH with only some of the tools: the others are named, every one of them,
    /// with their packages, in one message.
    #[test]
    fn preflight_names_every_missing_tool() {
        let dir = std::env::temp_dir().join(format!("xtask-preflight-{}", std::process::id()));
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let write = |name: &str, mode: u32| {
            let file = bin.join(name);
            fs::write(&file, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        };
        write("nft", 0o755);
        // Present but not executable: as good as missing.
        write("fio", 0o644);
        let present_absolute = bin.join("nft").display().to_string();
        let tools = [
            tool("nft", "nftables"),
            tool("iperf3", "iperf3"),
            tool("fio", "fio"),
            tool("bpftrace", "bpftrace"),
            tool(&present_absolute, "nftables"),
            tool("/nonexistent/cni/bridge", "containernetworking-plugins"),
        ];
        let path = std::env::join_paths([bin.as_path(), Path::new("/nonexistent")]).unwrap();
        let missing = missing_tools(&tools, &path);
        let _ = fs::remove_dir_all(&dir);
        let names: Vec<&str> = missing.iter().map(|t| t.program.as_str()).collect();
        assert_eq!(
            names,
            ["iperf3", "fio", "bpftrace", "/nonexistent/cni/bridge"]
        );
        let message = MissingTools(missing).to_string();
        assert!(message.starts_with("4 program(s)"), "{message}");
        for line in [
            "iperf3 (from Debian package iperf3)",
            "fio (from Debian package fio)",
            "bpftrace (from Debian package bpftrace)",
            "/nonexistent/cni/bridge (from Debian package containernetworking-plugins)",
        ] {
            assert!(message.contains(line), "{line:?} not in {message}");
        }
        assert!(!message.contains("nft "), "{message}");
    }

    /// Setup's table is what the preflight checks: the programs this change was made
    /// for are in it, each with its package.
    #[test]
    fn required_tools_cover_the_benchmark_and_container_tests() {
        let tools = required_tools();
        for (program, package) in [
            ("bpftrace", "bpftrace"),
            ("iperf3", "iperf3"),
            ("ctr", "containerd"),
            ("runc", "runc"),
            ("protoc", "protobuf-compiler"),
            ("capsh", "libcap2-bin"),
            ("nsenter", "util-linux"),
            ("victoria-metrics", "victoria-metrics"),
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("qemu-system-aarch64", "qemu-system-arm"),
            ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
            ("aarch64-linux-gnu-readelf", "binutils-aarch64-linux-gnu"),
        ] {
            assert!(
                tools.contains(&tool(program, package)),
                "{program} from {package} is not required"
            );
        }
    }

    /// `cargo xtask test` builds the image where `cargo xtask image` puts it by default,
    /// which is where tests/tests/image.rs reads it.
    #[test]
    fn the_image_is_built_with_the_image_commands_defaults() {
        let args = format!("{:?}", default_image_args().unwrap());
        assert!(args.contains("name: None"), "{args}");
        assert!(
            args.contains("out: \"target/image/tuneprobe-oci.tar\""),
            "{args}"
        );
    }

    /// The preflight with nothing in PATH: an error naming each tool, not a panic.
    #[test]
    fn empty_path_misses_everything() {
        let tools = required_tools();
        let missing = missing_tools(&tools, OsStr::new(""));
        let absolute = tools.iter().filter(|t| t.program.starts_with('/')).count();
        // Absolute paths do not depend on PATH; everything else must be missing.
        assert!(missing.len() >= tools.len() - absolute);
        assert!(missing.iter().any(|t| t.program == "bpftrace"));
    }
}
