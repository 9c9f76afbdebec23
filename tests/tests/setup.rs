//! `cargo xtask setup` on a machine where it has work to do, with `apt-get` and
//! `dpkg-query` replaced by stand-ins that answer as Debian 12's do (this machine must
//! not really lose or gain packages): everything setup and the tools it runs print goes
//! to stderr, so a first `cargo xtask run -- snapshot --json | jq` gets JSON alone; every
//! install runs with `--no-remove`; a package whose install would remove one the machine
//! has is taken from the release's backports, through a private apt configuration, when
//! that removes nothing, and otherwise setup stops and names the conflict.
//!
//! The stand-in answers as the real apt-get did on these machines (`Remv qemu-utils
//! [1:10.0.2+ds-2+deb13u1~bpo12+1]` for Debian 12's qemu-system-x86); xtask's unit
//! tests parse that recorded output.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

/// A temporary directory of stand-in programs, removed on drop.
struct Stubs(PathBuf);

impl Drop for Stubs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `dpkg-query` says nothing is installed; `apt-get` logs its arguments, prints apt's
/// progress to stdout, and simulates: installing `qemu-system-x86` from the machine's
/// sources removes `qemu-utils`, from backports (`REMOVES_FROM_BACKPORTS` unset) it
/// removes nothing.
fn stubs(test: &str, removes_from_backports: bool) -> Stubs {
    let dir = std::env::temp_dir().join(format!(
        "tuneprobe-setup-stubs-{}-{test}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let log = dir.join("apt.log");
    let write = |name: &str, body: String| {
        let path = dir.join(name);
        fs::write(&path, body).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    };
    write("dpkg-query", "#!/bin/sh\nexit 0\n".to_string());
    let backports_removes = if removes_from_backports {
        "echo 'Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]'"
    } else {
        ":"
    };
    write(
        "apt-get",
        format!(
            r#"#!/bin/sh
echo "$*" >> {log}
echo "Reading package lists... Done"
case "$*" in
  *--simulate*)
    case "$*" in
      *qemu-system-x86/*) {backports_removes} ;;
      *qemu-system-x86*) echo 'Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]' ;;
    esac
    echo 'Inst jq (1.6-2.1 Debian:12.12/stable [amd64])' ;;
  *install*) echo "Unpacking and setting up $*" ;;
esac
exit 0
"#,
            log = log.display()
        ),
    );
    Stubs(dir)
}

fn xtask() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xtask");
    assert!(
        xtask.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        xtask.display()
    );
    xtask
}

/// `xtask setup` with the stand-ins first in PATH.
fn setup(stubs: &Stubs) -> std::process::Output {
    let path = format!(
        "{}:{}",
        stubs.0.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(xtask())
        .arg("setup")
        .env("PATH", path)
        .output()
        .expect("run xtask setup")
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

fn apt_calls(stubs: &Stubs) -> Vec<String> {
    fs::read_to_string(stubs.0.join("apt.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn setup_prints_nothing_on_stdout_and_takes_a_conflicting_package_from_backports() {
    let stubs = stubs("backports", false);
    let out = setup(&stubs);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    // apt's progress went through, to stderr.
    assert_eq!(stdout, "", "stdout belongs to the command the user ran");
    assert!(stderr.contains("Reading package lists... Done"), "{stderr}");
    assert!(stderr.contains("Unpacking and setting up"), "{stderr}");
    assert!(
        stderr.contains("qemu-system-x86 would remove qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1"),
        "{stderr}"
    );
    // Progress per step, and one closing line of what was installed.
    assert!(
        stderr.contains("xtask setup: installing Debian packages"),
        "{stderr}"
    );
    assert!(stderr.contains(": done in "), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("xtask setup: installed Debian packages nftables iproute2"),
        "{last}"
    );

    let calls = apt_calls(&stubs);
    let installs: Vec<&String> = calls
        .iter()
        .filter(|c| c.contains("install") && !c.contains("--simulate"))
        .collect();
    assert_eq!(installs.len(), 2, "{calls:#?}");
    for install in &installs {
        assert!(install.contains("--no-remove"), "{install}");
    }
    // The rest from the machine's sources, qemu-system-x86 from backports through the
    // private configuration (the machine's sources stay as they were).
    assert!(!installs[0].contains("qemu-system-x86") && installs[0].contains("jq"));
    assert!(
        installs[1].contains(&format!("qemu-system-x86/{}", backports()))
            && installs[1].contains("Dir::Etc::sourcelist=")
            && installs[1].contains("Dir::Etc::sourceparts="),
        "{}",
        installs[1]
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("remove") || c.contains("purge") || c.contains("autoremove")),
        "{calls:#?}"
    );
}

#[test]
fn setup_stops_and_names_a_conflict_it_cannot_avoid() {
    let stubs = stubs("conflict", true);
    let out = setup(&stubs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("setup removes nothing this machine has")
            && stderr.contains("qemu-system-x86 would remove qemu-utils")
            && stderr.contains(&format!("from {} too: qemu-utils", backports())),
        "{stderr}"
    );
    // It installed what fitted, and nothing from backports.
    let calls = apt_calls(&stubs);
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("qemu-system-x86/") && !c.contains("--simulate")),
        "{calls:#?}"
    );
}
