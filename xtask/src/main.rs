//! `cargo xtask`: the multi-step and privileged work around the plain cargo build.
//!
//! - `setup`: install what builds and tests need (idempotent; seconds when done).
//! - `build`: setup, then the release binary `target/release/tuneprobe`.
//! - `test`: setup, then every unit and integration test (as root).
//! - `run -- ARGS`: setup, build, run tuneprobe as root.
//! - `bench`: what tuneprobe costs next to bpftrace and nothing (see `bench/mod.rs`).
//! - `vm-test`: tuneprobe on Debian's 5.10, 6.1 and 6.12 kernels, and 6.1 on arm64, under
//!   QEMU (see `vmtest.rs`).
//! - `soak --for DURATION`: every signal and cgroup churn for a long time; fails on growth.
//! - `image`: the static binary in a scratch container image, as an OCI archive (no
//!   registry, no container engine).

mod apt;
mod bench;
mod build;
mod image;
mod kernels;
#[cfg(test)]
mod layers;
mod receiver;
mod run;
mod setup;
#[cfg(test)]
mod source_rules;
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
    /// Boot Debian's 5.10, 6.1 and 6.12 kernels and arm64 6.1 under QEMU (`--kernel
    /// VERSION` for one) and check every signal each can produce.
    VmTest(vmtest::Args),
    /// Write the supported-kernels table of docs/kernels.md from vm-test's records
    /// (`tests/kernels/*.json`); `--check` only compares.
    KernelTable(kernels::Args),
    /// Drive every signal and cgroup churn for a long time under `tuneprobe serve`;
    /// sample memory, CPU, map occupancy, lost updates and errors; fail on growth.
    Soak(bench::soak::Args),
    /// Build the container image (static musl binary, scratch) as an OCI image archive,
    /// without a registry: `ctr image import`, `docker load` or `podman load` it.
    Image(image::Args),
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
        Command::KernelTable(args) => kernels::run(&args),
        Command::Soak(args) => bench::soak::run(&args),
        Command::Image(args) => image::run(&args),
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

/// A command that did not succeed, with the end of what it wrote to stderr: the
/// reason is there, and the error may be read far from where the output scrolled by.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error("cannot start {command}: {source}")]
    Start {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}){}", stderr_suffix(.stderr))]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        ", printing nothing on stderr".to_string()
    } else {
        format!(", its stderr:\n{stderr}")
    }
}

/// How much of a failed command's stderr its error quotes (the end, where the reason is).
const STDERR_TAIL: usize = 4096;

/// Runs a command; fails with its command line, exit status and stderr if it fails.
/// Its stderr is still shown as it comes (apt-get's and cargo's progress).
fn run_checked(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    Ok(run_capturing(cmd)?)
}

/// [`run_checked`] for the tools of setup and of the build (apt-get, rustup, pip,
/// cargo): their stdout goes to our stderr, because our stdout belongs to the command
/// the user ran (`cargo xtask run -- snapshot --json | jq` must get JSON alone, on a
/// new machine too).
fn run_to_stderr(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    run_checked(cmd.stdout(std::process::Stdio::from(std::io::stderr())))
}

fn run_capturing(cmd: &mut std::process::Command) -> Result<(), CommandError> {
    use std::io::{Read as _, Write as _};

    let command = format!("{cmd:?}");
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Start {
            command: command.clone(),
            source,
        })?;
    // Ctrl-C reaches the child too (same process group): it decides what to do, and we
    // stay to pass on its last words and report how it ended, as system(3) does. The
    // child is already running, so it does not inherit the ignored disposition.
    let _ignore_sigint = IgnoreSignal::new(libc::SIGINT);
    let mut tail = Vec::new();
    if let Some(mut stderr) = child.stderr.take() {
        let mut buf = [0u8; 8192];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let _ = std::io::stderr().write_all(&buf[..n]);
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > 2 * STDERR_TAIL {
                        tail.drain(..tail.len() - STDERR_TAIL);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let status = child.wait().map_err(|source| CommandError::Start {
        command: command.clone(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let start = tail.len().saturating_sub(STDERR_TAIL);
    Err(CommandError::Failed {
        command,
        status,
        stderr: String::from_utf8_lossy(&tail[start..]).into_owned(),
    })
}

/// Ignores a signal until dropped, then puts back whatever handled it before (the
/// benchmark's Ctrl-C flag, say).
struct IgnoreSignal {
    signal: i32,
    previous: Option<libc::sigaction>,
}

impl IgnoreSignal {
    fn new(signal: i32) -> Self {
        // SAFETY: a zeroed sigaction with SIG_IGN is valid; `previous` receives the old one.
        let previous = unsafe {
            let mut ignore: libc::sigaction = std::mem::zeroed();
            ignore.sa_sigaction = libc::SIG_IGN;
            let mut previous: libc::sigaction = std::mem::zeroed();
            (libc::sigaction(signal, &ignore, &mut previous) == 0).then_some(previous)
        };
        Self { signal, previous }
    }
}

impl Drop for IgnoreSignal {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            // SAFETY: restores the disposition sigaction returned.
            unsafe { libc::sigaction(self.signal, previous, std::ptr::null_mut()) };
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// The error of a failed tool quotes what the tool said on stderr, and its status.
    #[test]
    fn failed_command_error_carries_its_stderr() {
        let err = run_capturing(Command::new("sh").args([
            "-c",
            "echo progress >&2; echo 'E: Unable to locate package nope' >&2; exit 3",
        ]))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("E: Unable to locate package nope"), "{text}");
        assert!(text.contains("progress"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
    }

    /// A silent failure says so rather than ending in a bare colon.
    #[test]
    fn silent_failure_says_it_printed_nothing() {
        let err = run_capturing(Command::new("sh").args(["-c", "exit 1"])).unwrap_err();
        assert!(
            err.to_string().ends_with("printing nothing on stderr"),
            "{err}"
        );
    }

    /// Only the end of a long stderr is kept: the reason is last.
    #[test]
    fn long_stderr_keeps_its_end() {
        let err = run_capturing(Command::new("sh").args([
            "-c",
            "i=0; while [ $i -lt 2000 ]; do echo noise-line-$i >&2; i=$((i+1)); done; \
             echo the-reason >&2; exit 2",
        ]))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.trim_end().ends_with("the-reason"), "{text:.200}");
        assert!(!text.contains("noise-line-0\n"), "the start is dropped");
        assert!(text.len() < STDERR_TAIL + 500, "{} bytes", text.len());
    }
}
