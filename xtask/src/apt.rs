//! Installing Debian packages without ever removing or downgrading one the machine has.
//!
//! apt resolves a conflict by removing the other side: Debian 12's `qemu-system-x86`
//! (7.2) takes `qemu-utils` 10.0 (from bookworm-backports, on the machine image) with
//! it. Setup asks apt what an install would do first (`--simulate`); where it would
//! remove something, it tries the same package from the release's backports through a
//! private apt configuration (the machine's sources stay as they are), and where that
//! still removes something it stops and names the conflict. Every install runs with
//! `--no-remove` as well, so apt refuses rather than removes if the plan was wrong.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::run_to_stderr;

/// Where apt reads its sources: the machine's own, or a private configuration.
pub struct Apt {
    /// `-o KEY=VALUE` settings of a private configuration; empty for the machine's.
    options: Vec<String>,
}

impl Apt {
    /// The machine's own configuration.
    pub fn machine() -> Self {
        Self {
            options: Vec::new(),
        }
    }

    /// The machine's release plus its backports, from the Debian archive, in `dir`:
    /// sources, lists and downloads of its own; the machine's installed packages (dpkg
    /// status) are what it resolves against.
    pub fn with_backports(dir: &Path, codename: &str) -> anyhow::Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let sources: String = [
            ("http://deb.debian.org/debian", codename.to_string()),
            (
                "http://deb.debian.org/debian",
                format!("{codename}-updates"),
            ),
            (
                "http://deb.debian.org/debian-security",
                format!("{codename}-security"),
            ),
            ("http://deb.debian.org/debian", backports(codename)),
        ]
        .iter()
        .map(|(mirror, suite)| format!("deb {mirror} {suite} main\n"))
        .collect();
        fs::write(dir.join("sources.list"), sources)?;
        let option = |key: &str, value: PathBuf| format!("{key}={}", value.display());
        let mut options = vec![
            option("Dir::Etc::sourcelist", dir.join("sources.list")),
            // An empty directory: none of the machine's sources.list.d.
            option("Dir::Etc::sourceparts", dir.join("sources.list.d")),
            option("Dir::State::Lists", dir.join("lists")),
            option("Dir::Cache", dir.join("cache")),
            "Acquire::Languages=none".to_string(),
        ];
        if crate::is_root() {
            // apt's download user cannot enter root's home directory.
            options.push("APT::Sandbox::User=root".to_string());
        }
        Ok(Self { options })
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = if crate::is_root() {
            Command::new(program)
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("-E").arg(program);
            sudo
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        for option in &self.options {
            cmd.arg("-o").arg(option);
        }
        cmd.args(args);
        cmd
    }

    pub fn update(&self) -> anyhow::Result<()> {
        run_to_stderr(&mut self.command("apt-get", &["update", "-qq"]))
    }

    /// The packages the machine has that installing `packages` would remove (a
    /// downgrade shows as a removal of the installed version too: `Remv` or `Inst
    /// NAME [NEW] (OLD ...)` where NEW sorts before OLD is left to apt; setup only
    /// installs what is missing).
    pub fn removals(&self, packages: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut args = vec!["install", "--simulate", "--no-install-recommends"];
        args.extend(packages);
        let out = self
            .command("apt-get", &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .context("running apt-get --simulate")?;
        if !out.status.success() {
            bail!(
                "apt-get cannot install {}: {}",
                packages.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(removed(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Installs `packages`; apt refuses where it would have to remove anything.
    pub fn install(&self, packages: &[&str]) -> anyhow::Result<()> {
        let mut args = vec![
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "--no-remove",
        ];
        args.extend(packages);
        run_to_stderr(&mut self.command("apt-get", &args))
    }
}

/// `bookworm-backports`.
pub fn backports(codename: &str) -> String {
    format!("{codename}-backports")
}

/// The packages `apt-get --simulate` would remove (`Remv NAME [VERSION]`).
pub fn removed(simulation: &str) -> Vec<String> {
    simulation
        .lines()
        .filter_map(|line| line.strip_prefix("Remv "))
        .map(|rest| {
            let name = rest.split_whitespace().next().unwrap_or(rest);
            let version = rest
                .split_once('[')
                .and_then(|(_, v)| v.split_once(']'))
                .map(|(v, _)| format!(" {v}"))
                .unwrap_or_default();
            format!("{name}{version}")
        })
        .collect()
}

/// The machine's Debian release (`VERSION_CODENAME` of `/etc/os-release`).
pub fn codename() -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_removals_are_named_with_their_versions() {
        // What Debian 12's apt printed for qemu-system-x86 beside backports' qemu-utils.
        let simulation = "\
NOTE: This is only a simulation!
Reading package lists...
Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
Inst qemu-block-extra (1:7.2+dfsg-7+deb12u18+b3 Debian:12.12/stable [amd64])
Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.12/stable [amd64])
Conf qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.12/stable [amd64])
";
        assert_eq!(
            removed(simulation),
            ["qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1"]
        );
        assert!(removed("Inst jq (1.6-2.1 Debian:12.12/stable [amd64])\n").is_empty());
    }

    #[test]
    fn backports_is_the_release_s_own() {
        assert_eq!(backports("bookworm"), "bookworm-backports");
    }
}
