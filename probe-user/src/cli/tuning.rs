//! `tuneprobe tuning`: what every knob of the tuning guides is set to on this node, per
//! scope, next to the recommendation.

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use tuneprobe::{
    attribution::Attributor,
    cgroup::{CgroupPaths, Hierarchies},
    procfs,
    tuning::{self, Inventory, Setting},
};

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
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let proc_root = Path::new("/proc");
    let hierarchies = Hierarchies::of_this_node();
    let unified = hierarchies
        .unified
        .clone()
        .context("cgroup v2 is not mounted")?;
    let mut attributor =
        Attributor::new(CgroupPaths::new(unified), Attributor::host_netns(proc_root));
    attributor.observe(&procfs::processes(proc_root));
    let netns: Vec<(u32, u32, Option<String>)> = attributor
        .live_netns()
        .map(|(netns, pid)| {
            (
                netns,
                pid,
                attributor.netns_owner(netns).map(str::to_string),
            )
        })
        .collect();
    let cpu = hierarchies.cpu.map(|root| {
        let paths = CgroupPaths::new(root.clone());
        let known: Vec<String> = paths.known().map(|(_, p)| p.to_string()).collect();
        (root, known)
    });
    let inventory = tuning::inventory(proc_root, Path::new("/sys"), cpu, &netns);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inventory)?);
    } else {
        print!("{}", table(&inventory));
    }
    Ok(())
}

fn table(inventory: &Inventory) -> String {
    let mut out = String::new();
    let mut section = |title: String, settings: &[Setting]| {
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
    section("node".into(), &inventory.node);
    for ns in &inventory.netns {
        let owner = ns.owner.as_deref().unwrap_or("unknown owner");
        section(format!("netns {} ({owner})", ns.netns), &ns.settings);
    }
    for device in &inventory.devices {
        section(format!("device {}", device.device), &device.settings);
    }
    for mount in &inventory.mounts {
        section(
            format!(
                "mount {} ({} {})",
                mount.mountpoint, mount.source, mount.fstype
            ),
            &mount.settings,
        );
    }
    for cgroup in &inventory.cgroups {
        section(format!("cgroup {}", cgroup.cgroup_path), &cgroup.settings);
    }
    out
}
