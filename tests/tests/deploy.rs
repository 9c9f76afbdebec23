//! The manifests in deploy/ render and validate offline against the Kubernetes schemas:
//! the base needs no CRD, each optional component adds exactly what it should, and a
//! DaemonSet that asks for more privilege than the probes need is refused. The examples
//! of deploy/examples/ validate too, and the `tuneprobe` command line the Argo Rollouts
//! analysis runs is accepted by the binary.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use tuneprobe_tests::{free_port, tuneprobe_binary, unique};

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
        "components/alerts: PrometheusRule/tuneprobe-alerts\n",
        "components/alerts: PrometheusRule/tuneprobe-alerts holds 18 alerts of prometheus/alerts.yaml\n",
        "components/alerts: DaemonSet/tuneprobe capabilities BPF,NET_ADMIN,PERFMON,SYS_PTRACE\n",
        "components/all: PrometheusRule/tuneprobe-alerts\n",
        "components/pod-sysctls: DaemonSet/tuneprobe capabilities BPF,NET_ADMIN,PERFMON,SYS_ADMIN,SYS_PTRACE\n",
        "components/all: ServiceMonitor/tuneprobe",
        "components/all: DaemonSet/tuneprobe capabilities BPF,NET_ADMIN,PERFMON,SYS_ADMIN,SYS_PTRACE\n",
        "examples/analysis-template.yaml: AnalysisTemplate/tuneprobe-fleet-gate\n",
        "examples/analysis-template.yaml: metric fleet-verify runs tuneprobe fleet verify ",
        "examples/canary-sysctl-daemonset.yaml: DaemonSet/sysctl-canary\n",
        "examples/canary-sysctl-daemonset.yaml: set-sysctl sets net.core.netdev_max_backlog=5000 on nodes {'example.com/tuning-pool': 'canary'}\n",
    ] {
        assert!(out.contains(line), "{line:?} not rendered: {out}");
    }
    // `kubectl apply -k deploy/` on a cluster without the Prometheus Operator: nothing
    // of a kind its API server does not know.
    assert!(!out.contains("base: ServiceMonitor"), "{out}");
    assert!(!out.contains("base: PrometheusRule"), "{out}");
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
    // The PrometheusRule in the base's resources: it needs the Operator's CRD.
    refused(
        "kustomization.yaml",
        |s| {
            s.replace(
                "  - service.yaml\n",
                "  - service.yaml\n  - components/alerts/prometheusrule.yaml\n",
            )
        },
        "base renders a PrometheusRule",
    );
    // The PrometheusRule drifting from prometheus/alerts.yaml: another threshold.
    refused(
        "components/alerts/prometheusrule.yaml",
        |s| s.replacen("              >= 0.25\n", "              >= 0.5\n", 1),
        "PrometheusRule/tuneprobe-alerts differs from prometheus/alerts.yaml",
    );
    // An alert without its hold, its severity or its command.
    refused(
        "components/alerts/prometheusrule.yaml",
        |s| s.replace("          for: 1m\n", ""),
        "alert TuneprobeTuningRegressed has no ['for']",
    );
    refused(
        "components/alerts/prometheusrule.yaml",
        |s| s.replacen("          labels:\n            severity: warning\n", "", 1),
        "alert TuneprobeListenOverflows has no severity label",
    );
    refused(
        "components/alerts/prometheusrule.yaml",
        |s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("command: "))
                .map(|l| format!("{l}\n"))
                .collect()
        },
        "has no annotations ['command']",
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

#[test]
fn examples_of_another_kind_with_unknown_fields_or_undeclared_arguments_are_refused() {
    let template = "examples/analysis-template.yaml";
    // An Argo field misspelt: Argo would drop it silently (no delay before judging).
    refused(
        template,
        |s| s.replace("initialDelay: 13m", "initalDelay: 13m"),
        "fields an AnalysisTemplate does not have: ['metrics[].initalDelay']",
    );
    // The Job is a batch/v1 Job, validated strictly.
    refused(
        template,
        |s| s.replace("backoffLimit: 0", "backofLimit: 0"),
        "Job/fleet-verify: Additional properties are not allowed ('backofLimit' was unexpected)",
    );
    refused(
        template,
        |s| s.replace("{{args.signal}}", "{{args.measure}}"),
        "{{args.measure}} is used but not declared in spec.args",
    );
    // Another image than the agent's, or its entrypoint replaced.
    refused(
        template,
        |s| s.replace("image: tuneprobe\n", "image: busybox\n"),
        "runs 'busybox', not the agent's image 'tuneprobe'",
    );
    refused(
        template,
        |s| {
            s.replace(
                "image: tuneprobe\n",
                "image: tuneprobe\n                    command: [\"/usr/local/bin/tuneprobe\"]\n",
            )
        },
        "replaces the image's entrypoint",
    );
    refused(
        template,
        |s| s.replace("kind: AnalysisTemplate", "kind: ClusterAnalysisTemplate"),
        "holds [('argoproj.io/v1alpha1', 'ClusterAnalysisTemplate')], expected",
    );
    let daemonset = "examples/canary-sysctl-daemonset.yaml";
    // Every node, not a canary pool.
    refused(
        daemonset,
        |s| {
            s.replace(
                "      nodeSelector:\n        example.com/tuning-pool: canary\n",
                "",
            )
        },
        "no nodeSelector",
    );
    refused(
        daemonset,
        |s| s.replace("hostNetwork: true", "hostNetwork: yes-please"),
        "DaemonSet/sysctl-canary: 'yes-please' is not of type 'boolean'",
    );
    // A new example nobody said what it should hold.
    refused(
        "examples/flagger.yaml",
        |_| "apiVersion: flagger.app/v1beta1\nkind: Canary\n".to_string(),
        "examples/flagger.yaml: no expectations",
    );
}

/// What `{{args.NAME}}` stands for in the Argo Rollouts analysis: the template's
/// defaults, and for the arguments without one (as an AnalysisRun would give them) a
/// change time and a Prometheus at `prometheus`.
fn substitute(text: &str, args: &[Value], prometheus: &str) -> String {
    let mut out = text.to_string();
    for arg in args {
        let name = arg["name"].as_str().unwrap();
        let value = match (name, arg["value"].as_str()) {
            (_, Some(default)) => default.to_string(),
            ("prometheus", None) => prometheus.to_string(),
            ("changed-at", None) => "2026-12-01T10:00:00Z".to_string(),
            (name, None) => panic!("no value for the required argument {name}"),
        };
        out = out.replace(&format!("{{{{args.{name}}}}}"), &value);
    }
    assert!(!out.contains("{{"), "an argument left: {out}");
    out
}

/// The command line the AnalysisTemplate's Job runs, through the real binary: with
/// nothing listening where Prometheus should be, a command line clap accepts ends as the
/// gate's "could not judge" (5), a refused one as a usage error (2). And its default
/// signal is the one `tuneprobe` judges the canary DaemonSet's sysctl by.
#[test]
fn the_analysis_runs_a_command_line_the_binary_accepts() {
    let text = fs::read_to_string(repo().join("deploy/examples/analysis-template.yaml")).unwrap();
    let template: Value = serde_norway::from_str(&text).unwrap();
    let args = template["spec"]["args"].as_array().unwrap();
    let prometheus = format!("http://127.0.0.1:{}", free_port());
    let substituted: Value = serde_norway::from_str(&substitute(&text, args, &prometheus)).unwrap();
    let container = &substituted["spec"]["metrics"][0]["provider"]["job"]["spec"]["template"]["spec"]
        ["containers"][0];
    let command: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(command[..2], ["fleet", "verify"]);
    assert!(command.contains(&"--fail-on=regressed"), "{command:?}");
    let out = Command::new(tuneprobe_binary())
        .args(&command)
        .output()
        .expect("run tuneprobe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{command:?}: {stderr}");
    assert!(
        stderr.starts_with(&format!(
            "tuneprobe: gate failed (--fail-on regressed): could not judge: {prometheus}/api/v1/query: "
        )),
        "{stderr}"
    );
    // A typo in the command line is a usage error, not a gate's verdict.
    let typo: Vec<&str> = command
        .iter()
        .map(|a| {
            if a.starts_with("--signal=") {
                "--signal=backlog_drops"
            } else {
                a
            }
        })
        .collect();
    let out = Command::new(tuneprobe_binary())
        .args(&typo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{typo:?}");

    // The sysctl the canary DaemonSet sets is judged by the template's default signal
    // (the generated knob table of docs/verify.md).
    let daemonset =
        fs::read_to_string(repo().join("deploy/examples/canary-sysctl-daemonset.yaml")).unwrap();
    let daemonset: Value = serde_norway::from_str(&daemonset).unwrap();
    let set = daemonset["spec"]["template"]["spec"]["initContainers"][0]["command"][2]
        .as_str()
        .unwrap();
    let knob = set.split('=').next().unwrap();
    let signal = args.iter().find(|a| a["name"] == "signal").unwrap()["value"]
        .as_str()
        .unwrap();
    let verify = fs::read_to_string(repo().join("docs/verify.md")).unwrap();
    let row = verify
        .lines()
        .find(|l| l.starts_with(&format!("| `{knob}`")))
        .unwrap_or_else(|| panic!("{knob} is not in the knob table of docs/verify.md"));
    assert!(row.contains(&format!("`{signal}`")), "{row}");
}
