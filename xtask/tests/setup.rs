//! `xtask setup` run for real, with every program it starts replaced by a stand-in in
//! PATH (this machine must not really lose or gain packages): `rustup`, `rustc`,
//! `cargo` (which would build bpf-linker), `apt-get`, `dpkg-query`, `dpkg-deb`, `python3`
//! (pip).
//! Each stand-in writes progress to its stdout, as apt-get, dpkg and rustup do. Setup's
//! own stdout stays empty, because it belongs to the command the user ran: a first
//! `cargo xtask run -- snapshot --json | jq` gets JSON alone.
//!
//! The apt-get stand-in answers as the real one did on these machines (`Remv qemu-utils
//! [1:10.0.2+ds-2+deb13u1~bpo12+1]` for Debian 12's qemu-system-x86). What the real apt
//! does with the commands setup builds is tested in `xtask/src/apt.rs`, in a private apt
//! root.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Command, Output},
};

/// A temporary directory of stand-in programs (and the HOME setup writes to), removed
/// on drop.
struct Stubs(PathBuf);

impl Drop for Stubs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What the stand-ins say is already on the machine.
#[derive(Clone, Copy, PartialEq)]
enum Machine {
    /// Nothing: every step has work to do.
    New,
    /// Everything setup installs.
    Done,
}

/// How the apt-get stand-in plans `qemu-system-x86` from backports.
#[derive(Clone, Copy, PartialEq)]
enum Backports {
    Fits,
    RemovesToo,
}

const NIGHTLY_COMPONENTS: &str = "rust-src-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrustfmt-x86_64-unknown-linux-gnu";
const TARGETS: &str =
    "x86_64-unknown-linux-gnu\nx86_64-unknown-linux-musl\naarch64-unknown-linux-gnu";
const REMV: &str = "Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]";

fn stubs(test: &str, machine: Machine, backports: Backports) -> Stubs {
    let dir = std::env::temp_dir().join(format!(
        "tuneprobe-setup-stubs-{}-{test}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("bin")).unwrap();
    // The nightly's sysroot, where setup finds the libLLVM bpf-linker links to.
    fs::create_dir_all(dir.join("sysroot/lib")).unwrap();
    fs::write(dir.join("sysroot/lib/libLLVM.so.20.1"), "").unwrap();
    let log = dir.join("calls.log");
    let stub = |name: &str, body: &str| {
        let path = dir.join("bin").join(name);
        let script = format!("#!/bin/sh\necho \"{name} $*\" >> {}\n{body}", log.display());
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    };
    let done = machine == Machine::Done;
    let (components, targets) = if done {
        (NIGHTLY_COMPONENTS, TARGETS)
    } else {
        ("", "")
    };
    stub(
        "rustup",
        &format!(
            "case \"$*\" in\n\
             *list*--installed*|*list*) case \"$*\" in *target*) echo '{targets}' ;; \
             *) echo '{components}' ;; esac ;;\n\
             *) echo \"rustup progress on stdout: $*\"; echo 'rustup on stderr' >&2 ;;\n\
             esac\n"
        ),
    );
    let sysroot = dir.join("sysroot");
    stub(
        "rustc",
        &format!(
            "case \"$*\" in *-vV*) echo 'LLVM version: 20.1.8' ;; \
             *sysroot*) echo '{}' ;; esac\n",
            sysroot.display()
        ),
    );
    stub("cargo", "echo \"cargo progress on stdout: $*\"\n");
    // `dpkg-deb -x DEB DIR`: the OTLP receiver's package unpacked.
    stub("dpkg-deb", "mkdir -p \"$3\"\n");
    if done {
        let receiver = dir.join(".local/share/tuneprobe/victoria-metrics-trixie");
        fs::create_dir_all(&receiver).unwrap();
        fs::write(receiver.join(".extracted"), "").unwrap();
        stub("bpf-linker", "echo 'bpf-linker 0.13.0'\n");
        stub("dpkg-query", "printf 'install ok installed'\n");
        stub("python3", "exit 0\n");
    } else {
        stub("dpkg-query", "exit 0\n");
        stub(
            "python3",
            "case \"$*\" in *import*) exit 1 ;; *'pip install'*) echo 'pip progress on stdout' ;; esac\n",
        );
    }
    let from_backports = if backports == Backports::Fits {
        ":"
    } else {
        &format!("echo '{REMV}'")
    };
    stub(
        "apt-get",
        &format!(
            "echo 'Reading package lists... Done'\n\
             case \"$*\" in\n\
             *--simulate*) case \"$*\" in *qemu-system-x86/*) {from_backports} ;; \
             *qemu-system-x86*) echo '{REMV}' ;; esac ;;\n\
             *install*) echo \"Unpacking and setting up $*\" ;;\n\
             *' download '*) touch victoria-metrics_1.112.0+ds1-2_amd64.deb ;;\n\
             esac\n"
        ),
    );
    // Not root: apt-get runs through sudo -E.
    stub("sudo", "shift\nexec \"$@\"\n");
    Stubs(dir)
}

/// `xtask setup` with only the stand-ins and the system's directories in PATH.
fn setup(stubs: &Stubs) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("setup")
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", stubs.0.join("bin").display()),
        )
        .env("HOME", &stubs.0)
        .output()
        .expect("run xtask setup")
}

/// What the stand-ins were asked, in order, `PROGRAM ARGS`.
fn calls(stubs: &Stubs) -> Vec<String> {
    fs::read_to_string(stubs.0.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The apt-get installs (not simulations), as logged.
fn installs(stubs: &Stubs) -> Vec<String> {
    calls(stubs)
        .into_iter()
        .filter(|c| {
            c.starts_with("apt-get ") && c.contains(" install ") && !c.contains("--simulate")
        })
        .collect()
}

/// The package arguments of an apt-get install.
fn packages(install: &str) -> Vec<String> {
    install
        .split_whitespace()
        .skip(1)
        .filter(|a| !a.starts_with('-') && !a.contains('=') && *a != "install")
        .map(str::to_string)
        .collect()
}

/// This machine's backports suite (`bookworm-backports`).
fn backports() -> String {
    let release = fs::read_to_string("/etc/os-release").unwrap();
    let codename = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .expect("VERSION_CODENAME")
        .trim_matches('"');
    format!("{codename}-backports")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_new_machine_s_setup_writes_nothing_on_stdout_and_says_what_it_did() {
    let stubs = stubs("new", Machine::New, Backports::Fits);
    let out = setup(&stubs);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    eprintln!("=== stderr:\n{stderr}===");
    assert_eq!(stdout, "", "stdout belongs to the command the user ran");
    // Every tool's stdout went through, to stderr.
    for said in [
        "rustup progress on stdout: toolchain install",
        "rustup progress on stdout: target add x86_64-unknown-linux-musl",
        "rustup progress on stdout: component add rustfmt",
        "cargo progress on stdout: install bpf-linker@0.13.0",
        "Unpacking and setting up",
        "pip progress on stdout",
    ] {
        assert!(stderr.contains(said), "{said} missing from:\n{stderr}");
    }
    // Each step says what it does, then again with how long it took.
    let steps: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("setup: ") && l.ends_with(" s)"))
        .collect();
    let names: Vec<&str> = steps
        .iter()
        .map(|l| l.split(" ... (").next().unwrap_or_default())
        .collect();
    let nightly = calls(&stubs)
        .iter()
        .find_map(|c| c.strip_prefix("rustup toolchain install "))
        .and_then(|c| c.split_whitespace().next().map(str::to_string))
        .expect("rustup toolchain install");
    let apt = &installs(&stubs);
    assert_eq!(apt.len(), 2, "{apt:#?}");
    // The apt-get step names every missing package, in the table's order: those from
    // the machine's sources and qemu-system-x86 (from backports) among them.
    let apt_step = names
        .iter()
        .find(|n| n.starts_with("setup: apt-get install "))
        .expect("an apt-get step");
    let mut named: Vec<&str> = apt_step.split(' ').skip(3).collect();
    assert!(
        apt_step.starts_with("setup: apt-get install nftables iproute2 "),
        "{apt_step}"
    );
    named.sort_unstable();
    let mut debian = packages(&apt[0]);
    debian.push("qemu-system-x86".to_string());
    debian.sort_unstable();
    assert_eq!(named, debian);
    assert_eq!(
        names,
        [
            format!("setup: rustup toolchain install {nightly} with rust-src, clippy"),
            "setup: building bpf-linker 0.13.0 against LLVM 20".to_string(),
            "setup: rustup target add x86_64-unknown-linux-musl".to_string(),
            "setup: rustup target add aarch64-unknown-linux-gnu".to_string(),
            "setup: rustup component add rustfmt".to_string(),
            "setup: rustup component add clippy".to_string(),
            apt_step.to_string(),
            "setup: pip install kubernetes-validate==1.37.0".to_string(),
            format!(
                "setup: fetching victoria-metrics (trixie) unpacked into {}",
                stubs
                    .0
                    .join(".local/share/tuneprobe/victoria-metrics-trixie")
                    .display()
            ),
        ]
    );
    // And one closing line of everything installed.
    let mut everything = vec![
        format!("{nightly} with rust-src, clippy"),
        "bpf-linker 0.13.0".to_string(),
        "rustup target x86_64-unknown-linux-musl".to_string(),
        "rustup target aarch64-unknown-linux-gnu".to_string(),
        "rustup component rustfmt".to_string(),
        "rustup component clippy".to_string(),
    ];
    everything.extend(packages(&apt[0]));
    everything.push(format!("qemu-system-x86/{}", backports()));
    everything.push("kubernetes-validate==1.37.0 (PyPI)".to_string());
    everything.push("victoria-metrics (trixie, unpacked)".to_string());
    assert_eq!(
        stderr.lines().last().unwrap_or_default(),
        format!("setup: installed: {}", everything.join(", "))
    );
}

#[test]
fn setup_on_a_machine_that_has_everything_does_nothing_and_says_so() {
    let stubs = stubs("done", Machine::Done, Backports::Fits);
    let out = setup(&stubs);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "setup: nothing to install\n");
    // Only questions: no install of any kind.
    let calls = calls(&stubs);
    assert!(
        calls.iter().all(|c| !c.starts_with("apt-get")
            && !c.starts_with("cargo")
            && !c.contains(" add ")
            && !c.contains("toolchain install")
            && !c.contains("pip install")),
        "{calls:#?}"
    );
}

#[test]
fn a_conflicting_package_comes_from_backports_without_removing_anything() {
    let stubs = stubs("backports", Machine::New, Backports::Fits);
    let out = setup(&stubs);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("qemu-system-x86 would remove qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1"),
        "{stderr}"
    );
    let installs = installs(&stubs);
    assert_eq!(installs.len(), 2, "{installs:#?}");
    for install in &installs {
        assert!(install.contains("--no-remove"), "{install}");
        assert!(!install.contains("--allow-downgrades"), "{install}");
    }
    // The rest from the machine's sources, qemu-system-x86 from backports through the
    // private configuration (the machine's sources stay as they were).
    assert!(!installs[0].contains("qemu-system-x86") && installs[0].contains("jq"));
    assert_eq!(
        packages(&installs[1]),
        [format!("qemu-system-x86/{}", backports())]
    );
    assert!(
        installs[1].contains("Dir::Etc::sourcelist=")
            && installs[1].contains("Dir::Etc::sourceparts="),
        "{}",
        installs[1]
    );
    let calls = calls(&stubs);
    assert!(
        !calls
            .iter()
            .any(|c| c.contains(" remove ") || c.contains("purge") || c.contains("autoremove")),
        "{calls:#?}"
    );
}

#[test]
fn setup_stops_and_names_a_conflict_it_cannot_avoid() {
    let stubs = stubs("conflict", Machine::New, Backports::RemovesToo);
    let out = setup(&stubs);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(text(&out.stdout), "");
    assert!(
        stderr.contains("setup removes nothing this machine has")
            && stderr
                .contains("qemu-system-x86 would remove qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1")
            && stderr.contains(&format!(
                "from {} too: remove qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1",
                backports()
            )),
        "{stderr}"
    );
    // It installed what fitted, said so before the error, and nothing from backports.
    let installs = installs(&stubs);
    assert_eq!(installs.len(), 1, "{installs:#?}");
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("setup: installed: "))
        .unwrap_or_default();
    assert!(
        summary.ends_with(&format!(", {}", packages(&installs[0]).join(", "))),
        "{summary}"
    );
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("xtask: error: "),
        "{stderr}"
    );
}
