//! The manifests in deploy/ render and validate offline against the Kubernetes schemas:
//! the base needs no CRD, each optional component adds exactly what it should, and a
//! DaemonSet that asks for more privilege than the probes need is refused.

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

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()));
        } else {
            fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// A copy of deploy/ with the file at `file` (relative to deploy/, created if missing)
/// edited by `edit`; removed on drop, also when the test fails.
struct EditedCopy(PathBuf);

impl EditedCopy {
    fn new(file: &str, edit: impl Fn(&str) -> String) -> Self {
        let copy = Self(std::env::temp_dir().join(unique("tuneprobe-deploy-")));
        copy_tree(&repo().join("deploy"), &copy.0);
        let path = copy.0.join(file);
        let text = fs::read_to_string(&path).unwrap_or_default();
        let edited = edit(&text);
        assert_ne!(edited, text, "the edit of {file} changed nothing");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, edited).unwrap();
        copy
    }
}

impl Drop for EditedCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `deploy_check.py` refuses the copy with `file` edited, naming `expected`.
fn refused(file: &str, edit: impl Fn(&str) -> String, expected: &str) {
    let copy = EditedCopy::new(file, edit);
    let (ok, out) = check(&copy.0);
    assert!(!ok, "accepted with {file} edited: {out}");
    assert!(out.contains(expected), "expected {expected:?} in {out}");
}

#[test]
fn the_base_needs_no_crd_and_each_component_renders() {
    let (ok, out) = check(&repo().join("deploy"));
    assert!(ok, "{out}");
    for line in [
        "base: DaemonSet/tuneprobe",
        "base: ServiceAccount/tuneprobe",
        "base: ClusterRole/tuneprobe",
        "base: ConfigMap/tuneprobe-dashboard",
        "base: DaemonSet/tuneprobe capabilities BPF,NET_ADMIN,PERFMON,SYS_PTRACE\n",
        "components/servicemonitor: ServiceMonitor/tuneprobe",
        "components/pod-sysctls: DaemonSet/tuneprobe capabilities BPF,NET_ADMIN,PERFMON,SYS_ADMIN,SYS_PTRACE\n",
        "components/all: ServiceMonitor/tuneprobe",
        "components/all: DaemonSet/tuneprobe capabilities BPF,NET_ADMIN,PERFMON,SYS_ADMIN,SYS_PTRACE\n",
    ] {
        assert!(out.contains(line), "{line:?} not rendered: {out}");
    }
    // `kubectl apply -k deploy/` on a cluster without the Prometheus Operator: nothing
    // of a kind its API server does not know.
    assert!(!out.contains("base: ServiceMonitor"), "{out}");
    // Whether a real kustomize rendered the same is said, either way.
    assert!(out.contains("kustomize cross-check: "), "{out}");
}

#[test]
fn a_base_with_a_crd_or_a_component_doing_more_or_less_is_refused() {
    // The ServiceMonitor back in the base's resources.
    refused(
        "kustomization.yaml",
        |s| {
            s.replace(
                "  - service.yaml\n",
                "  - service.yaml\n  - components/servicemonitor/servicemonitor.yaml\n",
            )
        },
        "base renders a ServiceMonitor",
    );
    // pod-sysctls adding another capability than SYS_ADMIN.
    refused(
        "components/pod-sysctls/kustomization.yaml",
        |s| s.replace("value: SYS_ADMIN", "value: SYS_TIME"),
        "capabilities beyond what the probes need: ['SYS_TIME']",
    );
    // pod-sysctls patching nothing (kustomize itself would skip such a patch silently).
    refused(
        "components/pod-sysctls/kustomization.yaml",
        |s| s.replace("name: tuneprobe\n", "name: tuneprobe-agent\n"),
        "matches no resource",
    );
    // A component whose effect the check has no expectations for.
    refused(
        "components/extra/kustomization.yaml",
        |_| "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n".to_string(),
        "components/extra: no expectations",
    );
    // A ServiceMonitor that lets the Operator's target labels replace the workloads'.
    refused(
        "components/servicemonitor/servicemonitor.yaml",
        |s| s.replace("      honorLabels: true\n", ""),
        "without honorLabels",
    );
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
        // SYS_ADMIN belongs to the pod-sysctls component, not the base.
        (
            Box::new(|s: &str| s.replace("\"SYS_PTRACE\"]", "\"SYS_PTRACE\", \"SYS_ADMIN\"]")),
            "base: tuneprobe: capabilities beyond what the probes need: ['SYS_ADMIN']",
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
        refused("daemonset.yaml", edit, expected);
    }
}
