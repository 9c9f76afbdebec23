//! `cargo xtask setup`: everything a build and the tests need, installed idempotently.
//!
//! - the pinned nightly with `rust-src` (the bpf target is built with `-Z build-std`);
//! - bpf-linker, built against the nightly's own libLLVM (same LLVM major, no distro
//!   LLVM needed);
//! - the rustup targets `x86_64-unknown-linux-musl` (the container image's static binary)
//!   and `aarch64-unknown-linux-gnu` (arm64 nodes, and vm-test's arm64 guest);
//! - the Debian package of every program a test, the benchmark, vm-test or a command
//!   of the README or `docs/` starts ([`DEBIAN_PACKAGES`]; `cargo xtask test` checks
//!   for each program before it runs a test), and one PyPI package (the Kubernetes
//!   schemas for the offline manifest check);
//! - Debian 13's VictoriaMetrics, unpacked, not installed: the OTLP test's receiver
//!   ([`crate::receiver`]).
//!
//! Each step checks first and does nothing when its result is already in place. Setup
//! installs what is missing and never removes or downgrades what the machine has (see
//! [`crate::apt`]). Everything it and the tools it runs print goes to stderr: stdout
//! belongs to the command the user ran (`cargo xtask run -- snapshot --json | jq`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{LazyLock, Mutex},
    time::Instant,
};

use anyhow::Context as _;

use crate::{
    apt::{self, Apt},
    run_to_stderr as run_checked,
};

/// What this run installed, for the closing line.
static INSTALLED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record_installed(what: impl Into<String>) {
    INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(what.into());
}

/// Runs a step that has work to do, saying what it does and, when done, how long it took
/// (`setup: apt-get install jq ... (38 s)`).
pub(crate) fn timed<T>(what: &str, step: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    eprintln!("setup: {what} ...");
    let started = Instant::now();
    let out = step()?;
    eprintln!("setup: {what} ... ({})", duration(started.elapsed()));
    Ok(out)
}

/// `38 s`, `2 min 10 s`.
fn duration(elapsed: std::time::Duration) -> String {
    let seconds = (elapsed.as_millis() + 500) / 1000;
    match (seconds / 60, seconds % 60) {
        (0, s) => format!("{s} s"),
        (m, 0) => format!("{m} min"),
        (m, s) => format!("{m} min {s} s"),
    }
}

/// The kernel programs' toolchain file, the one declaration of the pinned nightly.
const EBPF_TOOLCHAIN: &str = include_str!("../../probe-ebpf/rust-toolchain.toml");

/// The pinned nightly, as `probe-ebpf/rust-toolchain.toml` names it.
pub static NIGHTLY: LazyLock<&'static str> =
    LazyLock::new(|| toml_value(EBPF_TOOLCHAIN, "channel"));
/// The components the toolchain file asks for (`rust-src`, `clippy`).
static NIGHTLY_COMPONENTS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    toml_value(EBPF_TOOLCHAIN, "components")
        .trim_matches(['[', ']'])
        .split(',')
        .map(|c| c.trim().trim_matches('"'))
        .filter(|c| !c.is_empty())
        .collect()
});

/// The value of `key = ...` in a flat TOML file, quotes removed (strings and one-line
/// arrays are all the toolchain file has).
fn toml_value(toml: &'static str, key: &str) -> &'static str {
    toml.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map_or_else(
            || panic!("probe-ebpf/rust-toolchain.toml has no {key}"),
            |(_, v)| v.trim().trim_matches('"'),
        )
}
const BPF_LINKER_VERSION: &str = "0.13.0";
/// A Debian package setup installs, and the programs of it that something run from
/// this repository (a test, the benchmark, vm-test, a command of the README or docs/)
/// starts.
/// `cargo xtask test` checks for every program before it runs a test.
#[derive(Debug, Clone, Copy)]
pub struct DebianPackage {
    pub name: &'static str,
    /// Program names looked up in PATH, or absolute paths for programs outside it.
    pub programs: &'static [&'static str],
}

const fn package(name: &'static str, programs: &'static [&'static str]) -> DebianPackage {
    DebianPackage { name, programs }
}

/// Every Debian package anything here runs a program of. Keep one entry per package:
/// the preflight of `cargo xtask test` reads the same table, so a program added to a
/// test without its package here fails there with the package named.
pub const DEBIAN_PACKAGES: &[DebianPackage] = &[
    // The integration tests' namespaces, traffic control, drop rules and loop devices.
    package("nftables", &["nft"]),
    package("iproute2", &["ip", "tc", "ss"]),
    package("util-linux", &["unshare", "nsenter", "setpriv", "findmnt"]),
    package("mount", &["losetup", "mount", "umount"]),
    // verify's noatime test makes a filesystem on a loop device.
    package("e2fsprogs", &["mkfs.ext4"]),
    package("fio", &["fio"]),
    package("dnsmasq-base", &["dnsmasq"]),
    package("bind9-dnsutils", &["dig"]),
    package("prometheus", &["prometheus", "promtool"]),
    // fleet verify's tests against a store beyond Prometheus (its own scraping, imports).
    package("victoria-metrics", &["victoria-metrics"]),
    // The BTF cross-check, and the benchmark's program names and SKB_CONSUMED.
    package("bpftool", &["bpftool"]),
    // `top`'s terminal test drives the view through tmux.
    package("tmux", &["tmux"]),
    // `serve`'s TLS test makes its certificates and talks HTTPS with these.
    package("openssl", &["openssl"]),
    package("curl", &["curl"]),
    // The benchmark (and its smoke test): the bpftrace baseline and the TCP load.
    package("bpftrace", &["bpftrace"]),
    package("iperf3", &["iperf3"]),
    // Containers without a registry: a private containerd runs locally built images
    // (`cargo xtask image`), runc puts them at kubelet-style cgroup paths, the CNI
    // plugins give them a network namespace, and busybox is their static shell.
    package(
        "containerd",
        &["containerd", "ctr", "containerd-shim-runc-v2"],
    ),
    package("runc", &["runc"]),
    package(
        "containernetworking-plugins",
        &["/usr/lib/cni/bridge", "/usr/lib/cni/loopback"],
    ),
    package("busybox-static", &["busybox"]),
    // The CRI client crate (k8s-cri) compiles its protobuf definitions with protoc.
    package("protobuf-compiler", &["protoc"]),
    // A container's capability list, reproduced with `capsh --drop=...`.
    package("libcap2-bin", &["capsh"]),
    // vm-test builds an initramfs (busybox, cpio) and boots it under QEMU; it installs
    // these itself too, but `cargo xtask test` runs it, so they belong here.
    package("qemu-system-x86", &["qemu-system-x86_64"]),
    package("cpio", &["cpio"]),
    // Debian 13's kernel modules are `.ko.xz`, decompressed on the host (priority
    // standard: not on every minimal install).
    package("xz-utils", &["xz"]),
    // The arm64 build (`--target aarch64-unknown-linux-gnu`, linked by the cross gcc,
    // which also compiles ring's C, against the cross glibc) and vm-test's arm64 guest:
    // `-machine virt` boots the kernel directly (no firmware), and readelf names the
    // shared libraries of aarch64 binaries.
    package("gcc-aarch64-linux-gnu", &["aarch64-linux-gnu-gcc"]),
    package("libc6-dev-arm64-cross", &[]),
    package("binutils-aarch64-linux-gnu", &["aarch64-linux-gnu-readelf"]),
    package("qemu-system-arm", &["qemu-system-aarch64"]),
    // `cargo xtask image` builds the static musl binary; ring's C and assembly are
    // compiled for musl with musl-gcc.
    package("musl-tools", &["musl-gcc"]),
    // The deploy/ test's offline schema check (pip comes below, if it is missing).
    package("python3", &["python3"]),
    // The README and docs/snapshot.md filter `snapshot --json` with jq.
    package("jq", &["jq"]),
];

/// The static binary in the container image (`cargo xtask image`) is built for this.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// arm64 nodes (and vm-test's arm64 guest), linked with Debian's cross gcc
/// (`.cargo/config.toml`).
pub const AARCH64_TARGET: &str = "aarch64-unknown-linux-gnu";

/// The Kubernetes schemas the deploy/ test validates against, offline.
const PYTHON_PACKAGES: &[(&str, &str)] = &[("kubernetes_validate", "kubernetes-validate==1.37.0")];

/// Everything: what a build needs and what the tests drive.
pub fn run() -> anyhow::Result<()> {
    summarized(|| {
        toolchain_steps()?;
        musl_target()?;
        aarch64_target()?;
        // The gates `cargo xtask test` runs first: formatting and lints.
        rustup_component("rustfmt")?;
        rustup_component("clippy")?;
        debian_packages()?;
        python_packages()?;
        otlp_receiver()
    })
}

/// The OTLP test's receiver, from another Debian release, kept apart from the machine.
fn otlp_receiver() -> anyhow::Result<()> {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    if crate::receiver::ensure(&home)? {
        record_installed(format!(
            "{} ({}, unpacked)",
            crate::receiver::PACKAGE,
            crate::receiver::SUITE
        ));
    }
    Ok(())
}

/// Runs `steps`, then says in one line what they installed, failing or not (an error
/// comes after the line: what was installed stays installed).
fn summarized(steps: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let result = steps();
    let done = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if done.is_empty() {
        eprintln!("setup: nothing to install");
    } else {
        eprintln!("setup: installed: {}", done.join(", "));
    }
    result
}

/// Only what building tuneprobe needs (the image recipe uses this).
pub fn toolchain() -> anyhow::Result<()> {
    summarized(toolchain_steps)
}

fn toolchain_steps() -> anyhow::Result<()> {
    nightly()?;
    bpf_linker()
}

/// The rustup target of the static image binary, for the toolchain cargo uses here.
pub fn musl_target() -> anyhow::Result<()> {
    rustup_target(MUSL_TARGET)
}

/// The rustup target of the arm64 binary, for the toolchain cargo uses here.
pub fn aarch64_target() -> anyhow::Result<()> {
    rustup_target(AARCH64_TARGET)
}

/// A component of the toolchain cargo uses here (`rustfmt`, `clippy`).
fn rustup_component(component: &str) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|line| line.trim().starts_with(&format!("{component}-")))
        });
    if installed {
        return Ok(());
    }
    timed(&format!("rustup component add {component}"), || {
        run_checked(Command::new("rustup").args(["component", "add", component]))
    })?;
    record_installed(format!("rustup component {component}"));
    Ok(())
}

fn rustup_target(target: &str) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|line| line.trim() == target)
        });
    if installed {
        return Ok(());
    }
    timed(&format!("rustup target add {target}"), || {
        run_checked(Command::new("rustup").args(["target", "add", target]))
    })?;
    record_installed(format!("rustup target {target}"));
    Ok(())
}

/// The Python modules the tests import, with the pip requirement that provides each.
pub fn python_modules() -> impl Iterator<Item = (&'static str, &'static str)> {
    PYTHON_PACKAGES.iter().copied()
}

fn python_packages() -> anyhow::Result<()> {
    let has_pip = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_pip {
        install_debian(&["python3-pip"])?;
    }
    for (module, requirement) in PYTHON_PACKAGES {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|out| out.status.success());
        if present {
            continue;
        }
        let pip = |extra: &[&str]| {
            let mut cmd = Command::new("python3");
            cmd.args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(extra)
            .arg(requirement);
            cmd
        };
        // Debian's own Python refuses installs into it (PEP 668) unless told.
        timed(&format!("pip install {requirement}"), || {
            run_checked(&mut pip(&[]))
                .or_else(|_| run_checked(&mut pip(&["--break-system-packages"])))
        })?;
        record_installed(format!("{requirement} (PyPI)"));
    }
    Ok(())
}

fn nightly() -> anyhow::Result<()> {
    let nightly = *NIGHTLY;
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", nightly])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let missing: Vec<&str> = NIGHTLY_COMPONENTS
        .iter()
        .copied()
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l.starts_with(&format!("{c}-")) || l == *c)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let what = format!("{nightly} with {}", missing.join(", "));
    timed(&format!("rustup toolchain install {what}"), || {
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", nightly, "--profile", "minimal"]);
        for component in &missing {
            cmd.args(["--component", component]);
        }
        run_checked(&mut cmd)
    })?;
    record_installed(what);
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
        });
    if installed {
        return Ok(());
    }
    let llvm_major = nightly_llvm_major()?;
    let prefix = llvm_prefix(llvm_major)?;
    let what = format!("building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm_major}");
    timed(&what, || {
        run_checked(Command::new("cargo").env("LLVM_PREFIX", &prefix).args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ]))
    })?;
    record_installed(format!("bpf-linker {BPF_LINKER_VERSION}"));
    Ok(())
}

/// The LLVM major version the nightly was built with: bpf-linker must match it.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let out = Command::new("rustc")
        .args([&format!("+{}", *NIGHTLY), "-vV"])
        .output()
        .context("running rustc of the pinned nightly")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("no LLVM version in `rustc +{} -vV`: {text}", *NIGHTLY))
}

/// A directory shaped like an LLVM install (`lib/libLLVM.so`) whose library is the
/// nightly's own `libLLVM.so.*`; bpf-linker links to it and records it as its rpath.
fn llvm_prefix(llvm_major: u32) -> anyhow::Result<PathBuf> {
    let sysroot = Command::new("rustc")
        .args([&format!("+{}", *NIGHTLY), "--print", "sysroot"])
        .output()
        .context("asking the nightly for its sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let library = std::fs::read_dir(sysroot.join("lib"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{llvm_major}")))
        })
        .with_context(|| format!("no libLLVM.so.{llvm_major}* in {}", sysroot.display()))?;
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let prefix = home.join(format!(".local/share/tuneprobe/llvm-{}", *NIGHTLY));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    let soname = library.file_name().map(PathBuf::from).unwrap_or_default();
    for link in [Path::new("libLLVM.so"), soname.as_path()] {
        let path = lib.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&library, &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    Ok(prefix)
}

fn debian_packages() -> anyhow::Result<()> {
    let names: Vec<&str> = DEBIAN_PACKAGES.iter().map(|p| p.name).collect();
    ensure_debian(&names)
}

/// Installs those of `packages` that are not installed yet. vm-test calls this for its
/// own packages; they are in [`DEBIAN_PACKAGES`] as well, so after setup it does nothing.
pub fn ensure_debian(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !debian_package_installed(package))
        .collect();
    install_debian(&missing)
}

fn install_debian(missing: &[&str]) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let mut installed = Vec::new();
    let result = timed(&format!("apt-get install {}", missing.join(" ")), || {
        apt::install_harmless(&Apt::machine(), backports, missing, &mut installed)
    });
    for package in installed {
        record_installed(package);
    }
    result
}

/// Where a package comes from whose install from the machine's sources would remove or
/// downgrade one it has: the release's backports, where the present one often comes
/// from (the machine image's `qemu-utils`), read through a private apt configuration
/// (the machine's sources stay as they are).
fn backports() -> anyhow::Result<apt::Alternative> {
    let codename = apt::codename().context("no release in /etc/os-release")?;
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let apt = Apt::with_backports(
        &home.join(".local/share/tuneprobe/apt-backports"),
        &codename,
    )?;
    Ok((apt::backports(&codename), apt))
}

fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_seconds_then_minutes() {
        let read = |ms| duration(std::time::Duration::from_millis(ms));
        assert_eq!(read(400), "0 s");
        assert_eq!(read(37_600), "38 s");
        assert_eq!(read(59_600), "1 min");
        assert_eq!(read(130_000), "2 min 10 s");
    }

    #[test]
    fn the_nightly_comes_from_the_kernel_programs_toolchain_file() {
        assert!(NIGHTLY.starts_with("nightly-20"), "{}", *NIGHTLY);
        assert!(NIGHTLY_COMPONENTS.contains(&"rust-src"));
        assert!(NIGHTLY_COMPONENTS.contains(&"clippy"));
        let build_script = include_str!("../../probe-user/build.rs");
        assert!(
            build_script.contains("rust-toolchain.toml") && !build_script.contains("\"nightly-"),
            "probe-user/build.rs must read the toolchain file, not name a nightly"
        );
    }
}
