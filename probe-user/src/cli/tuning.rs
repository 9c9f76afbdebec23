//! `tuneprobe tuning`: what every knob of the tuning guides is set to on this node, per
//! scope, next to the recommendation.

use std::fmt::Write as _;

use crate::tuning::{self, Inventory, Setting};
use anyhow::Context as _;

#[derive(Debug, clap::Args)]
#[command(
    about = "Show every tuning knob's value per scope, next to what the guides recommend",
    long_about = "Read every knob of the tuning guides that can be read here: global \
                  sysctls, each network namespace's own sysctls (attributed to the pod \
                  living in it), each block device's queue settings, each block \
                  filesystem's mount options, and each cpu cgroup's quota. Values that \
                  do not follow the guides' recommendation are marked. Needs no eBPF.",
    after_help = "Examples:\n  tuneprobe tuning\n  tuneprobe tuning --json | jq '.netns[] | select(.settings[].deviates)'"
)]
pub(super) struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: &Args) -> anyhow::Result<()> {
    let inventory = tuning::this_node().context("reading the tuning inventory")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inventory)?);
    } else {
        print!("{}", table(&inventory));
    }
    Ok(())
}

fn table(inventory: &Inventory) -> String {
    let mut out = String::new();
    let section = |out: &mut String, title: String, settings: &[Setting]| {
        let _ = writeln!(out, "{title}");
        for s in settings {
            let mark = match s.deviates {
                Some(true) => "  <- differs from the guides",
                _ => "",
            };
            let recommended = s.recommended.as_deref().unwrap_or("-");
            let _ = writeln!(
                out,
                "  {:<38} {:<24} recommended {:<22}{mark}",
                s.knob, s.value, recommended
            );
        }
        let _ = writeln!(out);
    };
    section(&mut out, "node".into(), &inventory.node);
    if !inventory.node_unreadable.is_empty() {
        let _ = writeln!(out, "node, unreadable here");
        for unreadable in &inventory.node_unreadable {
            let _ = writeln!(out, "  {:<38} {}", unreadable.knob, unreadable.reason);
        }
        let _ = writeln!(out);
    }
    for ns in &inventory.netns {
        let owner = ns.owner.as_deref().unwrap_or("unknown owner");
        let title = format!("netns {} ({owner})", ns.netns);
        match &ns.error {
            Some(error) => {
                let _ = writeln!(out, "{title}\n  unreadable: {error}\n");
            }
            None => section(&mut out, title, &ns.settings),
        }
    }
    for device in &inventory.devices {
        section(
            &mut out,
            format!("device {}", device.device),
            &device.settings,
        );
    }
    for mount in &inventory.mounts {
        section(
            &mut out,
            format!(
                "mount {} ({} {})",
                mount.mountpoint, mount.source, mount.fstype
            ),
            &mount.settings,
        );
    }
    for cgroup in &inventory.cgroups {
        section(
            &mut out,
            format!("cgroup {}", cgroup.cgroup_path),
            &cgroup.settings,
        );
    }
    out
}
