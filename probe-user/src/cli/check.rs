//! `tuneprobe check`: load and attach every program, then say per signal what works on
//! this kernel and what does not, and why.

use std::{fmt::Write as _, io::Write as _, path::PathBuf};

use crate::{
    kernel::btf::VMLINUX_BTF, kernel::loader::LoadOptions, kernel::loader::Probe,
    kernel::loader::ProbeStatus, signals::Signal,
};
use anyhow::Context as _;
use serde::Serialize;

#[derive(Debug, clap::Args)]
#[command(
    about = "Load and attach every program, say per signal what works on this kernel",
    long_about = "Load and attach every program as `snapshot` and `serve` would, then \
                  detach and print per signal whether it works on this kernel: `ok` (all \
                  its programs attached), `partial` (some did) or `off` (none did), with \
                  the reason for every program that did not attach. Also names the \
                  kernel release and where the BTF came from.\n\n\
                  Exits 0 when at least one signal works, even partially; 1 when nothing \
                  can load (no BTF, no permission, no program attaches).",
    after_help = "Examples:\n  \
                  tuneprobe check\n  \
                  tuneprobe check --json | jq '.signals[] | select(.status != \"ok\")'\n  \
                  tuneprobe check --btf /boot/vmlinux-btf"
)]
pub(super) struct Args {
    /// Print JSON (documented in docs/check.md) instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `check --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    /// The running kernel's release (`uname -r`).
    kernel: String,
    btf: BtfSource,
    signals: Vec<SignalCheck>,
}

/// Where the BTF the programs were adapted with came from.
#[derive(Debug, Serialize)]
struct BtfSource {
    /// `vmlinux` (the kernel's own, `/sys/kernel/btf/vmlinux`) or `--btf`.
    source: &'static str,
    path: PathBuf,
}

#[derive(Debug, Serialize)]
struct SignalCheck {
    signal: Signal,
    status: Status,
    programs: Vec<ProgramCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Ok,
    Partial,
    Off,
}

impl Status {
    const fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Off => "off",
        }
    }
}

#[derive(Debug, Serialize)]
struct ProgramCheck {
    name: String,
    attached: bool,
    /// Why it is off; `null` when attached.
    error: Option<String>,
}

pub(super) fn run(args: &Args, options: &LoadOptions) -> anyhow::Result<()> {
    let btf = btf_source(options);
    // Nothing attached, no BTF, no permission: the loader's own errors, exit 1.
    let probe = Probe::load(options)?;
    let report = Report {
        kernel: kernel_release(),
        btf,
        signals: signals(probe.statuses()),
    };
    drop(probe);
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        write!(stdout, "{}", table(&report))?;
    }
    stdout.flush().context("writing the check")
}

fn btf_source(options: &LoadOptions) -> BtfSource {
    match &options.btf_path {
        Some(path) => BtfSource {
            source: "--btf",
            path: path.clone(),
        },
        // As the loader picks it: the node's own under --host-root if there.
        None => BtfSource {
            source: "vmlinux",
            path: Some(crate::workloads::host::path(VMLINUX_BTF))
                .filter(|path| path.exists())
                .unwrap_or_else(|| PathBuf::from(VMLINUX_BTF)),
        },
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string())
}

/// The programs' statuses grouped by signal, in the signals' order.
fn signals(statuses: &[ProbeStatus]) -> Vec<SignalCheck> {
    Signal::ALL
        .iter()
        .filter_map(|&signal| {
            let programs: Vec<ProgramCheck> = statuses
                .iter()
                .filter(|s| s.signal == signal.name())
                .map(|s| ProgramCheck {
                    name: s.name.clone(),
                    attached: s.attached,
                    error: s.error.clone(),
                })
                .collect();
            let attached = programs.iter().filter(|p| p.attached).count();
            let status = match attached {
                0 => Status::Off,
                n if n == programs.len() => Status::Ok,
                _ => Status::Partial,
            };
            (!programs.is_empty()).then_some(SignalCheck {
                signal,
                status,
                programs,
            })
        })
        .collect()
}

fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "kernel  {}", report.kernel);
    let _ = writeln!(
        out,
        "btf     {} ({})",
        report.btf.path.display(),
        match report.btf.source {
            "--btf" => "--btf",
            _ => "the kernel's own",
        }
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<16}{:<9}PROGRAMS", "SIGNAL", "STATUS");
    for check in &report.signals {
        let attached = check.programs.iter().filter(|p| p.attached).count();
        let _ = writeln!(
            out,
            "{:<16}{:<9}{attached} of {} attached",
            check.signal.name(),
            check.status.name(),
            check.programs.len()
        );
        for program in check.programs.iter().filter(|p| !p.attached) {
            let _ = writeln!(
                out,
                "  off: {}: {}",
                program.name,
                program.error.as_deref().unwrap_or("unknown")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, signal: Signal, error: Option<&str>) -> ProbeStatus {
        let signal = signal.name();
        ProbeStatus {
            name: name.to_string(),
            signal,
            attached: error.is_none(),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn ok_partial_off_per_signal() {
        let checks = signals(&[
            status("tcp_retransmit_skb", Signal::TcpRetransmit, None),
            status("block_rq_issue", Signal::BlockIo, None),
            status("block_rq_complete", Signal::BlockIo, Some("no tracepoint")),
            status("kfree_skb", Signal::Drops, Some("too few arguments")),
        ]);
        let by_name: Vec<(&str, Status)> =
            checks.iter().map(|c| (c.signal.name(), c.status)).collect();
        assert_eq!(
            by_name,
            [
                ("tcp_retransmit", Status::Ok),
                ("drops", Status::Off),
                ("block_io", Status::Partial),
            ]
        );
        let report = Report {
            kernel: "5.10.0-test".to_string(),
            btf: BtfSource {
                source: "vmlinux",
                path: PathBuf::from(VMLINUX_BTF),
            },
            signals: checks,
        };
        let text = table(&report);
        assert!(text.contains("kernel  5.10.0-test"), "{text}");
        assert!(
            text.contains("  off: block_rq_complete: no tracepoint"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["signals"][2]["status"], "partial");
        assert_eq!(json["signals"][2]["programs"][1]["error"], "no tracepoint");
        assert_eq!(json["btf"]["source"], "vmlinux");
    }
}
