//! Installing Debian packages without ever removing or downgrading one the machine has.
//!
//! apt resolves a conflict by removing the other side: Debian 12's `qemu-system-x86`
//! (7.2) takes `qemu-utils` 10.0 (from bookworm-backports, on the machine image) with
//! it. [`install_harmless`] asks apt what an install would do first (`--simulate`);
//! where it would remove or downgrade something, or cannot resolve at all, it tries the
//! same package from another suite (setup: the release's backports, through a private
//! apt configuration: the machine's sources stay as they are), and where that still
//! harms something it stops and names the conflict. Every install runs with
//! `--no-remove` and without `--allow-downgrades` as well, so apt refuses rather than
//! removes or downgrades if the plan was wrong.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::run_to_stderr;

/// Where apt reads its sources: the machine's own, or a private configuration.
pub struct Apt {
    /// `-o KEY=VALUE` settings of a private configuration; empty for the machine's.
    options: Vec<String>,
    /// A configuration file apt reads instead of the machine's (`APT_CONFIG`): a whole
    /// private root, as the tests build one.
    config: Option<PathBuf>,
}

impl Apt {
    /// The machine's own configuration.
    pub fn machine() -> Self {
        Self {
            options: Vec::new(),
            config: None,
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
        Ok(Self {
            options,
            config: None,
        })
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        // A private root is the caller's own files: no sudo for it.
        let mut cmd = if crate::is_root() || self.config.is_some() {
            Command::new(program)
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("-E").arg(program);
            sudo
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        if let Some(config) = &self.config {
            cmd.env("APT_CONFIG", config);
        }
        for option in &self.options {
            cmd.arg("-o").arg(option);
        }
        cmd.args(args);
        cmd
    }

    /// The same apt, taking every package it installs, dependencies too, from `suite`
    /// where `suite` has it (`-t`): `NAME/SUITE` alone pins the named package, and its
    /// dependencies on versions only `suite` has (backports' `qemu-system-x86` on
    /// backports' `qemu-system-data`) would stay unresolvable.
    #[must_use]
    pub fn preferring(mut self, suite: &str) -> Self {
        self.options.push(format!("APT::Default-Release={suite}"));
        self
    }

    pub fn update(&self) -> anyhow::Result<()> {
        run_to_stderr(&mut self.command("apt-get", &["update", "-qq"]))
    }

    /// What installing `packages` would do to those the machine has: `remove NAME
    /// VERSION` and `downgrade NAME OLD to NEW`, none if nothing; an error with apt's
    /// reason where apt cannot install them at all.
    pub fn harms(&self, packages: &[&str]) -> Result<Vec<String>, String> {
        let mut args = vec!["install", "--simulate", "--no-install-recommends"];
        args.extend(packages);
        let out = self
            .command("apt-get", &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run apt-get --simulate: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("E: ")).collect();
            return Err(if errors.is_empty() {
                stderr.trim().to_string()
            } else {
                errors.join(" ")
            });
        }
        Ok(harms(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Installs `packages`; apt refuses where it would have to remove or downgrade
    /// anything (`--no-remove`, and `-y` without `--allow-downgrades`).
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

/// Another suite to take the packages from whose install from the machine's sources
/// would harm one it has: its name (`bookworm-backports`) and an apt that reads it.
pub type Alternative = (String, Apt);

/// Installs `packages` (none of them installed yet) without removing or downgrading
/// anything: those that fit from `machine`'s sources, the others from the suite
/// `alternative` makes (called only if needed) where they fit there; otherwise an error
/// naming each conflict. `installed` receives what was installed, failure or not.
pub fn install_harmless(
    machine: &Apt,
    alternative: impl FnOnce() -> anyhow::Result<Alternative>,
    packages: &[&str],
    installed: &mut Vec<String>,
) -> anyhow::Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    machine.update()?;
    if machine.harms(packages).is_ok_and(|h| h.is_empty()) {
        machine.install(packages)?;
        installed.extend(packages.iter().map(ToString::to_string));
        return Ok(());
    }
    // Something would go (or apt cannot resolve): find which package it is.
    let mut fits = Vec::new();
    let mut conflicts = Vec::new();
    for &package in packages {
        match machine.harms(&[package]) {
            Ok(harms) if harms.is_empty() => fits.push(package),
            Ok(harms) => conflicts.push(format!("{package} would {}", harms.join(", "))),
            Err(why) => conflicts.push(format!("{package} cannot be installed: {why}")),
        }
    }
    if !fits.is_empty() {
        machine.install(&fits)?;
        installed.extend(fits.iter().map(ToString::to_string));
    }
    let rest: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !fits.contains(p))
        .collect();
    install_from_alternative(alternative, &rest, &conflicts, installed)
}

/// [`install_harmless`] for the packages that do not fit from the machine's sources.
fn install_from_alternative(
    alternative: impl FnOnce() -> anyhow::Result<Alternative>,
    packages: &[&str],
    conflicts: &[String],
    installed: &mut Vec<String>,
) -> anyhow::Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let give_up = |why: String| {
        anyhow::anyhow!(
            "setup removes nothing this machine has, and installing from its sources: {}; \
             {why}. Install versions that fit what is installed (or remove those packages \
             yourself if you mean to), then run `cargo xtask setup` again",
            conflicts.join("; ")
        )
    };
    let (suite, apt) = alternative().map_err(|e| give_up(format!("{e:#}")))?;
    let apt = apt.preferring(&suite);
    eprintln!("setup: {}; trying {suite}", conflicts.join("; "));
    apt.update()?;
    let wanted: Vec<String> = packages.iter().map(|p| format!("{p}/{suite}")).collect();
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    match apt.harms(&wanted) {
        Ok(harms) if harms.is_empty() => {
            apt.install(&wanted)?;
            installed.extend(wanted.iter().map(ToString::to_string));
            Ok(())
        }
        Ok(harms) => Err(give_up(format!("from {suite} too: {}", harms.join(", ")))),
        Err(why) => Err(give_up(format!("{suite} has no fitting version: {why}"))),
    }
}

/// `bookworm-backports`.
pub fn backports(codename: &str) -> String {
    format!("{codename}-backports")
}

/// What `apt-get --simulate` would do to installed packages: `Remv NAME [VERSION]`
/// lines, and `Inst NAME [OLD] (NEW ...)` lines whose NEW sorts before OLD.
pub fn harms(simulation: &str) -> Vec<String> {
    simulation
        .lines()
        .filter_map(|line| {
            if let Some(rest) = line.strip_prefix("Remv ") {
                let (name, version) = name_and_bracket(rest);
                return Some(format!("remove {name}{}", prefixed(" ", version)));
            }
            let rest = line.strip_prefix("Inst ")?;
            let (name, old) = name_and_bracket(rest);
            let new = rest.split_once('(')?.1.split_whitespace().next()?;
            let old = old?;
            version_lt(new, old).then(|| format!("downgrade {name} {old} to {new}"))
        })
        .collect()
}

/// `NAME [VERSION] ...` as the name and the bracketed version, if there is one.
fn name_and_bracket(rest: &str) -> (&str, Option<&str>) {
    let name = rest.split_whitespace().next().unwrap_or(rest);
    let bracket = rest
        .strip_prefix(name)
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix('['))
        .and_then(|r| r.split_once(']'))
        .map(|(v, _)| v);
    (name, bracket)
}

fn prefixed(prefix: &str, value: Option<&str>) -> String {
    value.map(|v| format!("{prefix}{v}")).unwrap_or_default()
}

/// Debian's version order, as dpkg itself compares.
fn version_lt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "lt", b])
        .output()
        .is_ok_and(|out| out.status.success())
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
    use sha2::{Digest as _, Sha256};

    use super::*;

    #[test]
    fn simulated_removals_and_downgrades_are_named_with_their_versions() {
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
            harms(simulation),
            ["remove qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1"]
        );
        assert!(harms("Inst jq (1.6-2.1 Debian:12.12/stable [amd64])\n").is_empty());
        // An upgrade of an installed package is fine; a downgrade (epoch 1 > none) is not.
        let plan = "Inst libc6 [2.36-9] (2.36-9+deb12u13 Debian:12.12/stable [amd64])\n\
                    Inst qemu-utils [1:10.0.2] (7.2+dfsg-7 Debian:12.12/stable [amd64])\n";
        assert_eq!(harms(plan), ["downgrade qemu-utils 1:10.0.2 to 7.2+dfsg-7"]);
    }

    #[test]
    fn backports_is_the_release_s_own() {
        assert_eq!(backports("bookworm"), "bookworm-backports");
    }

    /// Installed in the private root, from "backports" (as the machine image's
    /// qemu-utils).
    const A: &str = "tuneprobe-test-a";
    /// Conflicts with A in "stable" (as Debian 12's qemu-system-x86 with qemu-utils 10).
    const B: &str = "tuneprobe-test-b";
    /// Fits anywhere.
    const C: &str = "tuneprobe-test-c";
    /// 1.0 in "stable", 2.0 in "backports": what backports' B may depend on (as
    /// backports' qemu-system-x86 on backports' qemu-system-common)...
    const D: &str = "tuneprobe-test-d";
    /// ...and, one level further, what D 2.0 depends on (as qemu-system-common on
    /// qemu-system-data): apt follows `NAME/SUITE` to direct dependencies only.
    const E: &str = "tuneprobe-test-e";

    /// A private apt root in a temporary directory: its own dpkg database (A installed),
    /// file repositories of tiny packages built with dpkg-deb, and apt configurations
    /// of its own (`APT_CONFIG`: none of the machine's sources, settings or hooks). apt
    /// and dpkg really install into it; the machine's dpkg database is neither read nor
    /// written. Removed on drop.
    struct PrivateRoot(PathBuf);

    impl Drop for PrivateRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn sha256(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    impl PrivateRoot {
        /// `backports_b`: the control line B has in "backports" (a conflict, or none).
        fn new(test: &str, backports_b: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("tuneprobe-apt-root-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            for sub in [
                "var/lib/dpkg/info",
                "var/lib/dpkg/updates",
                "var/cache/apt/archives/partial",
                "var/log/apt",
                "etc/apt/apt.conf.d",
                "etc/apt/preferences.d",
                "etc/apt/sources.list.d",
            ] {
                fs::create_dir_all(dir.join(sub)).unwrap();
            }
            write(&dir.join("var/lib/dpkg/available"), "");
            // A's files list: dpkg warns of an installed package without one.
            write(&dir.join(format!("var/lib/dpkg/info/{A}.list")), "");
            let root = Self(dir);
            root.repository(
                "stable",
                &[
                    (B, "1.0", &format!("Conflicts: {A}\n")),
                    (C, "1.0", ""),
                    (D, "1.0", ""),
                    (E, "1.0", ""),
                ],
            );
            root.repository(
                "backports",
                &[
                    (A, "2.0", ""),
                    (B, "2.0", backports_b),
                    (D, "2.0", &format!("Depends: {E} (>= 2.0)\n")),
                    (E, "2.0", ""),
                ],
            );
            write(
                &root.0.join("var/lib/dpkg/status"),
                &format!("{}Status: install ok installed\n\n", control(A, "2.0", "")),
            );
            root
        }

        /// A flat file repository of `packages` (name, version, more control lines),
        /// its `Packages` index and its `Release` naming the suite.
        fn repository(&self, suite: &str, packages: &[(&str, &str, &str)]) {
            let repo = self.0.join("repo").join(suite);
            let mut index = String::new();
            fs::create_dir_all(&repo).unwrap();
            for &(name, version, extra) in packages {
                let src = self.0.join("src").join(format!("{name}-{version}"));
                write(&src.join("DEBIAN/control"), &control(name, version, extra));
                let file = format!("{name}_{version}_all.deb");
                let built = Command::new("dpkg-deb")
                    .args(["--root-owner-group", "-Zgzip", "--build"])
                    .arg(&src)
                    .arg(repo.join(&file))
                    .output()
                    .unwrap();
                assert!(built.status.success(), "{built:?}");
                let deb = fs::read(repo.join(&file)).unwrap();
                index += &format!(
                    "{}Filename: ./{file}\nSize: {}\nSHA256: {}\n\n",
                    control(name, version, extra),
                    deb.len(),
                    sha256(&deb)
                );
            }
            write(&repo.join("Packages"), &index);
            // As Debian marks its backports: priority 100, taken only when asked for.
            let backports = if suite == "backports" {
                "NotAutomatic: yes\nButAutomaticUpgrades: yes\n"
            } else {
                ""
            };
            write(
                &repo.join("Release"),
                &format!(
                    "Suite: {suite}\nCodename: {suite}\n{backports}\
                     Date: Thu, 01 Jan 2026 00:00:00 UTC\n\
                     SHA256:\n {} {} Packages\n",
                    sha256(index.as_bytes()),
                    index.len()
                ),
            );
        }

        /// An apt reading `suites` of the root's repositories, resolving against and
        /// installing into the root's own dpkg database.
        fn apt(&self, suites: &[&str]) -> Apt {
            let root = self.0.display();
            let name = suites.join("+");
            let sources: String = suites
                .iter()
                .map(|s| format!("deb [trusted=yes] file:{root}/repo/{s} ./\n"))
                .collect();
            write(&self.0.join(format!("{name}.list")), &sources);
            let lists = self.0.join(format!("lists-{name}/partial"));
            fs::create_dir_all(lists).unwrap();
            let config = self.0.join(format!("{name}.conf"));
            write(
                &config,
                &format!(
                    "Dir \"{root}/\";\n\
                     Dir::State::status \"{root}/var/lib/dpkg/status\";\n\
                     Dir::State::Lists \"{root}/lists-{name}/\";\n\
                     Dir::Etc::sourcelist \"{root}/{name}.list\";\n\
                     DPkg::Options {{ \"--root={root}\"; \"--admindir={root}/var/lib/dpkg\"; \
                     \"--force-not-root\"; }};\n\
                     Acquire::Languages \"none\";\n\
                     APT::Sandbox::User \"root\";\n"
                ),
            );
            Apt {
                options: Vec::new(),
                config: Some(config),
            }
        }

        /// The version of `package` installed in the root, as its dpkg says.
        fn installed(&self, package: &str) -> Option<String> {
            let out = Command::new("dpkg-query")
                .arg(format!("--admindir={}/var/lib/dpkg", self.0.display()))
                .args(["-W", "-f=${Status} ${Version}", package])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .strip_prefix("install ok installed ")
                .map(str::to_string)
        }
    }

    fn control(name: &str, version: &str, extra: &str) -> String {
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\n\
             Maintainer: tuneprobe tests <tests@invalid>\nDescription: apt test package\n{extra}"
        )
    }

    /// The machine's dpkg knows none of the test packages: the tests touched only their
    /// private roots.
    fn assert_machine_untouched() {
        let out = Command::new("dpkg-query")
            .args(["-W", A, B, C, D, E])
            .output()
            .unwrap();
        assert!(out.stdout.is_empty(), "{out:?}");
    }

    /// The install command setup runs refuses an install that would remove a package
    /// present, and the present one stays installed.
    #[test]
    fn the_install_command_refuses_to_remove_a_package_present() {
        let root = PrivateRoot::new("refuses", "");
        let machine = root.apt(&["stable"]);
        machine.update().unwrap();
        assert_eq!(machine.harms(&[B]), Ok(vec![format!("remove {A} 2.0")]));
        let err = format!("{:#}", machine.install(&[B]).unwrap_err());
        assert!(
            err.contains("Packages need to be removed but remove is disabled")
                && err.contains("exit status: 100"),
            "{err}"
        );
        assert_eq!(root.installed(A).as_deref(), Some("2.0"));
        assert_eq!(root.installed(B), None);
        assert_machine_untouched();
    }

    /// What fits comes from the machine's sources, the conflicting package from the
    /// suite where it fits beside what is installed, with the dependency only that suite
    /// has a version of; nothing is removed.
    #[test]
    fn a_conflicting_package_comes_from_the_suite_where_it_fits() {
        let root = PrivateRoot::new("fits", &format!("Depends: {D} (>= 2.0)\n"));
        let mut installed = Vec::new();
        install_harmless(
            &root.apt(&["stable"]),
            || Ok(("backports".to_string(), root.apt(&["stable", "backports"]))),
            &[C, B],
            &mut installed,
        )
        .unwrap();
        assert_eq!(installed, [C.to_string(), format!("{B}/backports")]);
        assert_eq!(root.installed(A).as_deref(), Some("2.0"));
        assert_eq!(root.installed(B).as_deref(), Some("2.0"));
        assert_eq!(root.installed(C).as_deref(), Some("1.0"));
        assert_eq!(root.installed(D).as_deref(), Some("2.0"));
        assert_eq!(root.installed(E).as_deref(), Some("2.0"));
        assert_machine_untouched();
    }

    /// Where no suite has a version that fits, setup installs the rest, removes nothing
    /// and names the conflict.
    #[test]
    fn a_conflict_no_suite_avoids_stops_and_names_the_package_present() {
        let root = PrivateRoot::new("conflict", &format!("Conflicts: {A}\n"));
        let mut installed = Vec::new();
        let err = install_harmless(
            &root.apt(&["stable"]),
            || Ok(("backports".to_string(), root.apt(&["stable", "backports"]))),
            &[C, B],
            &mut installed,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!("{B} would remove {A} 2.0"))
                && err.contains(&format!("from backports too: remove {A} 2.0")),
            "{err}"
        );
        assert_eq!(installed, [C]);
        assert_eq!(root.installed(A).as_deref(), Some("2.0"));
        assert_eq!(root.installed(B), None);
        assert_machine_untouched();
    }
}
