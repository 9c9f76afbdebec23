//! The manifests in deploy/ render and validate offline against the Kubernetes schemas,
//! and a DaemonSet that asks for more privilege than the probes need is refused.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use tuneprobe_tests::unique;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs tests/deploy_check.py on a deploy directory: (passed, output).
fn check(deploy: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .arg(repo().join("tests/deploy_check.py"))
        .arg(deploy)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A copy of deploy/ with the DaemonSet edited by `edit`.
fn with_daemonset(edit: impl Fn(&str) -> String) -> PathBuf {
    let copy = std::env::temp_dir().join(unique("tuneprobe-deploy-"));
    fs::create_dir_all(copy.join("dashboards")).unwrap();
    for entry in fs::read_dir(repo().join("deploy")).unwrap().flatten() {
        let path = entry.path();
        if path.is_file() {
            fs::copy(&path, copy.join(entry.file_name())).unwrap();
        }
    }
    for entry in fs::read_dir(repo().join("deploy/dashboards"))
        .unwrap()
        .flatten()
    {
        fs::copy(
            entry.path(),
            copy.join("dashboards").join(entry.file_name()),
        )
        .unwrap();
    }
    let daemonset = fs::read_to_string(copy.join("daemonset.yaml")).unwrap();
    let edited = edit(&daemonset);
    assert_ne!(edited, daemonset, "the edit changed nothing");
    fs::write(copy.join("daemonset.yaml"), edited).unwrap();
    copy
}

#[test]
fn the_manifests_render_and_validate() {
    let (ok, out) = check(&repo().join("deploy"));
    assert!(ok, "{out}");
    for kind in [
        "DaemonSet/tuneprobe",
        "ClusterRole/tuneprobe",
        "ServiceMonitor/tuneprobe",
        "ConfigMap/tuneprobe-dashboard",
    ] {
        assert!(out.contains(kind), "{kind} not rendered: {out}");
    }
}

#[test]
fn a_privileged_or_writable_daemonset_is_refused() {
    for (edit, expected) in [
        (
            Box::new(|s: &str| s.replace("privileged: false", "privileged: true"))
                as Box<dyn Fn(&str) -> String>,
            "privileged: true",
        ),
        (
            Box::new(|s: &str| {
                s.replace(
                    "readOnlyRootFilesystem: true",
                    "readOnlyRootFilesystem: false",
                )
            }),
            "root filesystem is writable",
        ),
        (
            Box::new(|s: &str| s.replace("\"SYS_PTRACE\"]", "\"SYS_PTRACE\", \"SYS_ADMIN\"]")),
            "SYS_ADMIN",
        ),
        (
            Box::new(|s: &str| {
                s.replacen(
                    "              readOnly: true",
                    "              readOnly: false",
                    1,
                )
            }),
            "mounted writable",
        ),
        // Strict schema validation: an unknown field is an error.
        (
            Box::new(|s: &str| {
                s.replace(
                    "      hostPID: true",
                    "      hostPID: true\n      hostPIDs: true",
                )
            }),
            "hostPIDs",
        ),
    ] {
        let copy = with_daemonset(edit);
        let (ok, out) = check(&copy);
        let _ = fs::remove_dir_all(&copy);
        assert!(!ok, "accepted: {out}");
        assert!(out.contains(expected), "expected {expected:?} in {out}");
    }
}
