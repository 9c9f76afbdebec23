#!/usr/bin/env python3
"""Renders deploy/ the way `kubectl apply -k` would and checks it offline.

Renderings checked:
- `base`: deploy/ itself, what `kubectl apply -k deploy/` applies. It must need nothing
  but Kubernetes: every object of a built-in kind (no ServiceMonitor: a cluster without
  the Prometheus Operator's CRD refuses the whole apply);
- `components/NAME`: an overlay of the base with that one Component, as a user's
  overlay would list it under `components:`;
- `components/all`: an overlay with every Component (the example overlay of docs/deployment.md).

The renderer implements the part of kustomize that these kustomizations use:
resources (files and directories), components, namespace, images, configMapGenerator
from files, and patches (strategic merge and JSON 6902, with a target). Any other
kustomization field, patch directive or target selector is an error rather than
ignored, so the check cannot pass on a rendering that kustomize would do differently.
When a kustomize that knows Components is installed (`kustomize`, or `kubectl` 1.21+
with its built-in one), each rendering is also done by it and must be identical; the
output says whether that cross-check ran.

Each rendering is checked:
- every built-in kind validated strictly against the Kubernetes JSON schemas shipped in
  the kubernetes-validate package (no cluster needed);
- the DaemonSet's least privilege: not privileged, read-only root filesystem, no
  privilege escalation, capabilities dropped and only the allowed ones added (the base's
  set, plus exactly what the rendering's components are expected to add), host paths
  mounted read-only, resources set;
- the ServiceMonitor (a CRD: no built-in schema) has its required fields;
- the PrometheusRule (a CRD too) holds exactly the groups of prometheus/alerts.yaml, each
  alert with its `for:`, severity and annotations;
and the dashboard has a panel per signal.

The examples in deploy/examples/ are not rendered (nothing includes them): each file
must hold the apiVersion and kind listed in EXAMPLES, built-in kinds validate strictly,
an Argo Rollouts AnalysisTemplate's Job validates as a batch/v1 Job, runs the agent's
own image with its entrypoint and declares every `{{args.NAME}}` it uses (and uses
every one it declares), and the canary sysctl DaemonSet selects a node pool and sets a
sysctl. Whether the `tuneprobe` command line the template runs is accepted is checked
with the binary itself, by tests/tests/deploy.rs.

Usage: deploy_check.py DEPLOY_DIR [KUBERNETES_VERSION]. Prints each rendering's
documents as `RENDERING: Kind/name` (and the DaemonSet's capabilities) and exits 1 with
the reasons when something is wrong.
"""
import copy
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

ALLOWED_CAPABILITIES = {"BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"}
# What each component under deploy/components/ must add to the base, and nothing more.
# A component without an entry here is a problem: its effect would go unchecked.
COMPONENTS = {
    "servicemonitor": {"kinds": {"ServiceMonitor"}, "capabilities": set()},
    # The alerts of prometheus/alerts.yaml, for the Prometheus Operator.
    "alerts": {"kinds": {"PrometheusRule"}, "capabilities": set()},
    # setns() into pods' network namespaces, to read their own sysctls and listeners.
    "pod-sysctls": {"kinds": set(), "capabilities": {"SYS_ADMIN"}},
}
# Kinds that are not built into Kubernetes: they need a CRD, so never in the base.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The plain-Prometheus file a PrometheusRule must hold the groups of, and what each of
# its alerting rules must have.
ALERTS_FILE = "prometheus/alerts.yaml"
ALERT_FIELDS = {"alert", "expr", "for", "labels", "annotations"}
ALERT_ANNOTATIONS = {"summary", "description", "command"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
BASE_KINDS = ["DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "ConfigMap"]
SIGNAL_METRICS = [
    "tuneprobe_tcp_retransmitted_segments_total",
    "tuneprobe_packet_drops_total",
    "tuneprobe_dns_latency_seconds",
    "tuneprobe_block_service_seconds",
    "tuneprobe_cpu_throttled_periods_total",
    "tuneprobe_tuning_changes_total",
    "tuneprobe_tuning_verdict",
    "tuneprobe_tuning_deviation",
]
# What each file of deploy/examples/ holds, document by document: (apiVersion, kind). A
# file without an entry is a problem: it would go unchecked.
EXAMPLES = {
    "analysis-template.yaml": [("argoproj.io/v1alpha1", "AnalysisTemplate")],
    "canary-sysctl-daemonset.yaml": [("apps/v1", "DaemonSet")],
}
# The fields of Argo Rollouts' AnalysisTemplate (argoproj.io/v1alpha1, a CRD without a
# schema here) that the examples may use: a field outside them is a typo Argo would
# refuse or, worse, ignore.
ANALYSIS_SPEC_FIELDS = {"metrics", "args", "dryRun", "measurementRetention"}
ANALYSIS_ARG_FIELDS = {"name", "value", "valueFrom"}
ANALYSIS_METRIC_FIELDS = {
    "name", "interval", "initialDelay", "count", "successCondition", "failureCondition",
    "failureLimit", "inconclusiveLimit", "consecutiveErrorLimit", "consecutiveSuccessLimit",
    "provider",
}
ANALYSIS_JOB_FIELDS = {"metadata", "spec"}
ARGO_ARG = re.compile(r"\{\{\s*args\.([A-Za-z0-9_-]+)\s*\}\}")
KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "resources", "components", "namespace", "images",
    "configMapGenerator", "patches",
}
# Strategic merge: the merge key of each list the patches may touch; other lists are
# replaced whole, as kustomize does for lists without a patch strategy.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
    "tolerations": None,
}


class RenderError(Exception):
    pass


def load_kustomization(root: pathlib.Path, kind: str) -> dict:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (root / name).is_file():
            k = yaml.safe_load((root / name).read_text()) or {}
            break
    else:
        raise RenderError(f"{root}: no kustomization.yaml")
    if k.get("kind", "Kustomization") != kind:
        raise RenderError(f"{root}: kind {k.get('kind', 'Kustomization')}, expected {kind}")
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        raise RenderError(f"{root}: fields the offline renderer does not implement: {sorted(unknown)}")
    return k


def accumulate(root: pathlib.Path, docs: list, kind: str) -> list:
    """kustomize's order: resources, then components (each applied to everything so
    far), then this kustomization's own generators, then its transformers."""
    k = load_kustomization(root, kind)
    for resource in k.get("resources", []):
        path = root / resource
        if path.is_dir():
            docs.extend(accumulate(path, [], "Kustomization"))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for component in k.get("components", []):
        docs = accumulate(root / component, docs, "Component")
    for generator in k.get("configMapGenerator", []):
        options = generator.get("options", {})
        if set(generator) - {"name", "files", "options"} or set(options) - {"disableNameSuffixHash", "labels"}:
            raise RenderError(f"{root}: configMapGenerator fields not implemented: {generator}")
        if not options.get("disableNameSuffixHash"):
            raise RenderError(f"{root}: the name suffix hash is not implemented")
        data = {pathlib.Path(f).name: (root / f).read_text() for f in generator.get("files", [])}
        docs.append({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"], "labels": options.get("labels", {})},
            "data": data,
        })
    namespace = k.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    images = {i["name"]: i for i in k.get("images", [])}
    for doc in docs:
        for container in pod_containers(doc):
            name, _, tag = container["image"].partition(":")
            if name in images:
                image = images[name]
                container["image"] = f'{image.get("newName", name)}:{image.get("newTag", tag or "latest")}'
    for patch in k.get("patches", []):
        apply_patch(root, patch, docs)
    return docs


def apply_patch(root: pathlib.Path, entry: dict, docs: list):
    if set(entry) - {"path", "patch", "target"}:
        raise RenderError(f"{root}: patch fields not implemented: {sorted(entry)}")
    text = (root / entry["path"]).read_text() if "path" in entry else entry["patch"]
    patch = yaml.safe_load(text)
    target = entry.get("target")
    if isinstance(patch, list):
        if not target:
            raise RenderError(f"{root}: a JSON 6902 patch needs a target")
        apply = lambda doc: json6902(doc, patch)
    else:
        target = target or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
        apply = lambda doc: strategic_merge(doc, patch)
    if set(target) - {"group", "version", "kind", "name", "namespace"}:
        raise RenderError(f"{root}: target selectors not implemented: {sorted(target)}")
    matched = [d for d in docs if matches(d, target)]
    if not matched:
        # kustomize ignores a patch that matches nothing; a component whose patch does
        # nothing is a mistake here.
        raise RenderError(f"{root}: the patch's target {target} matches no resource")
    for doc in matched:
        apply(doc)


def matches(doc: dict, target: dict) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    checks = {
        "group": group,
        "version": version,
        "kind": doc["kind"],
        "name": doc["metadata"]["name"],
        "namespace": doc["metadata"].get("namespace", ""),
    }
    # kustomize's target fields are anchored regular expressions.
    return all(re.fullmatch(str(v), checks[k]) for k, v in target.items())


def json6902(doc: dict, ops: list):
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        kind = op["op"]
        if kind == "test":
            actual = node[int(last)] if isinstance(node, list) else node.get(last)
            if actual != op["value"]:
                raise RenderError(f"JSON patch test failed at {op['path']}: {actual!r} != {op['value']!r}")
        elif kind == "add":
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
            else:
                node[last] = copy.deepcopy(op["value"])
        elif kind == "replace":
            if isinstance(node, list):
                node[int(last)] = copy.deepcopy(op["value"])
            else:
                if last not in node:
                    raise RenderError(f"JSON patch replace of a missing {op['path']}")
                node[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise RenderError(f"JSON patch op {kind} not implemented")


def strategic_merge(target: dict, patch: dict):
    for key, value in patch.items():
        if key.startswith("$"):
            raise RenderError(f"strategic merge directive {key} not implemented")
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            strategic_merge(target[key], value)
        elif isinstance(value, list) and MERGE_KEYS.get(key) and isinstance(target.get(key), list):
            merge_key = MERGE_KEYS[key]
            for item in value:
                existing = next((t for t in target[key] if t.get(merge_key) == item.get(merge_key)), None)
                if existing is None:
                    target[key].append(copy.deepcopy(item))
                else:
                    strategic_merge(existing, item)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = copy.deepcopy(value)


def overlay(deploy: pathlib.Path, components: list) -> pathlib.Path:
    """A user's overlay of the base with these components, in a directory of its own
    outside deploy/ (kustomize refuses an overlay inside the base it loads: a cycle)
    and naming them by relative paths (kustomize refuses absolute ones)."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="tuneprobe-overlay-"))
    base = os.path.relpath(deploy.resolve(), directory)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "components": [f"{base}/components/{c}" for c in components],
    }))
    return directory


def real_kustomize():
    """The command of an installed kustomize that knows Components (kustomize 3.7+),
    and its version; (None, reason) without one."""
    if shutil.which("kustomize"):
        out = subprocess.run(["kustomize", "version"], capture_output=True, text=True)
        return ["kustomize", "build"], out.stdout.strip()
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "version", "--client", "-o", "json"], capture_output=True, text=True)
        try:
            version = json.loads(out.stdout).get("kustomizeVersion", "")
        except json.JSONDecodeError:
            version = ""
        major = re.match(r"v?(\d+)", version)
        # kubectl before 1.21 bundles kustomize 2.0.3, which predates Components.
        if major and int(major.group(1)) >= 4:
            return ["kubectl", "kustomize"], f"kubectl's kustomize {version}"
        return None, f"kubectl's built-in kustomize {version or '(unknown)'} predates Components"
    return None, "no kustomize or kubectl on PATH"


def by_identity(docs: list) -> dict:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs}


def pod_containers(doc):
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def check_daemonset(doc, allowed, problems, where):
    pod = doc["spec"]["template"]["spec"]
    if pod.get("hostNetwork"):
        problems.append(f"{where}: DaemonSet uses hostNetwork")
    mounts_by_volume = {}
    for container in pod_containers(doc):
        name = f'{where}: {container["name"]}'
        sc = container.get("securityContext", {})
        if sc.get("privileged", False):
            problems.append(f"{name}: privileged: true")
        if not sc.get("readOnlyRootFilesystem", False):
            problems.append(f"{name}: root filesystem is writable")
        if sc.get("allowPrivilegeEscalation", True):
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities are not dropped first")
        extra = set(caps.get("add", [])) - allowed
        if extra:
            problems.append(f"{name}: capabilities beyond what the probes need: {sorted(extra)}")
        resources = container.get("resources", {})
        if not resources.get("requests") or not resources.get("limits"):
            problems.append(f"{name}: resource requests and limits must be set")
        for mount in container.get("volumeMounts", []):
            mounts_by_volume.setdefault(mount["name"], []).append(mount)
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            for mount in mounts_by_volume.get(volume["name"], []):
                if not mount.get("readOnly", False):
                    problems.append(f"{where}: host path {volume['hostPath']['path']} is mounted writable")


def check_service_monitor(doc, problems, where):
    spec = doc.get("spec", {})
    if not spec.get("selector", {}).get("matchLabels"):
        problems.append(f"{where}: ServiceMonitor has no selector")
    endpoints = spec.get("endpoints", [])
    if not any(e.get("port") for e in endpoints):
        problems.append(f"{where}: ServiceMonitor has no endpoint port")
    for endpoint in endpoints:
        # The series' namespace/pod/container labels are the workloads'; without
        # honorLabels the Operator's target labels (the agent's) replace them.
        if not endpoint.get("honorLabels"):
            problems.append(f"{where}: ServiceMonitor endpoint without honorLabels: true")
        # The dashboard's $node variable is this label.
        if not any(r.get("targetLabel") == "node" for r in endpoint.get("relabelings", [])):
            problems.append(f"{where}: ServiceMonitor endpoint does not relabel the node name to node")


def check_prometheus_rule(doc, deploy, problems, where):
    """A PrometheusRule (a CRD: no built-in schema): only `groups` in its spec, each
    alert with an expression, a `for:`, a severity and the annotations the alerts carry,
    and the groups exactly those of prometheus/alerts.yaml, so that the two cannot drift."""
    spec = doc.get("spec", {})
    if set(spec) != {"groups"}:
        problems.append(f"{where}: PrometheusRule spec has {sorted(spec)}, expected only groups")
    for group in spec.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert", rule.get("record"))
            missing = ALERT_FIELDS - set(rule)
            if missing:
                problems.append(f"{where}: alert {name} has no {sorted(missing)}")
            if not rule.get("labels", {}).get("severity"):
                problems.append(f"{where}: alert {name} has no severity label")
            missing = ALERT_ANNOTATIONS - set(rule.get("annotations", {}))
            if missing:
                problems.append(f"{where}: alert {name} has no annotations {sorted(missing)}")
    plain = yaml.safe_load((deploy / ALERTS_FILE).read_text())
    if spec.get("groups") != plain.get("groups"):
        problems.append(f"{where}: PrometheusRule/{doc['metadata']['name']} differs from {ALERTS_FILE}")
    alerts = [r["alert"] for g in spec.get("groups", []) for r in g.get("rules", []) if "alert" in r]
    print(f"{where}: PrometheusRule/{doc['metadata']['name']} holds {len(alerts)} alerts of {ALERTS_FILE}")


def check_dashboard(deploy, problems):
    for path in (deploy / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        exprs = " ".join(t.get("expr", "") for p in dashboard.get("panels", []) for t in p.get("targets", []))
        for metric in SIGNAL_METRICS:
            if metric not in exprs:
                problems.append(f"{path.name}: no panel uses {metric}")
        variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
        for variable in ("node", "namespace", "pod"):
            if variable not in variables:
                problems.append(f"{path.name}: no ${variable} template variable")


def validate(doc, version, problems, where):
    """Strict validation of a built-in kind against the Kubernetes schemas."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        problems.append(f"{where}: {doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")
    except kubernetes_validate.utils.SchemaNotFoundError:
        problems.append(f"{where}: {doc['kind']}/{doc['metadata']['name']} is not a built-in kind: it needs a CRD")


def agent_image(deploy):
    """The image the agent's DaemonSet runs (deploy/daemonset.yaml)."""
    daemonset = yaml.safe_load((deploy / "daemonset.yaml").read_text())
    return daemonset["spec"]["template"]["spec"]["containers"][0]["image"]


def check_analysis_template(doc, deploy, version, problems, where):
    """An Argo Rollouts AnalysisTemplate (a CRD: no built-in schema): its arguments
    declared and used, each metric with one provider, a Job provider's spec a valid Job
    running tuneprobe from the agent's image."""
    spec = doc.get("spec", {})
    unknown = set(spec) - ANALYSIS_SPEC_FIELDS
    for arg in spec.get("args", []):
        unknown |= {f"args[].{f}" for f in set(arg) - ANALYSIS_ARG_FIELDS}
    for metric in spec.get("metrics", []):
        unknown |= {f"metrics[].{f}" for f in set(metric) - ANALYSIS_METRIC_FIELDS}
        job = metric.get("provider", {}).get("job", {})
        unknown |= {f"metrics[].provider.job.{f}" for f in set(job) - ANALYSIS_JOB_FIELDS}
    if unknown:
        problems.append(f"{where}: fields an AnalysisTemplate does not have: {sorted(unknown)}")
    declared = [a.get("name") for a in spec.get("args", [])]
    used = set(ARGO_ARG.findall(yaml.safe_dump(spec.get("metrics", []))))
    for name in sorted(used - set(declared)):
        problems.append(f"{where}: {{{{args.{name}}}}} is used but not declared in spec.args")
    for name in sorted(set(declared) - used):
        problems.append(f"{where}: argument {name} is declared but not used")
    metrics = spec.get("metrics", [])
    if not metrics:
        problems.append(f"{where}: no metrics")
    for metric in metrics:
        name = metric.get("name")
        providers = list(metric.get("provider", {}))
        if not name or len(providers) != 1:
            problems.append(f"{where}: metric {name!r} needs a name and exactly one provider, has {providers}")
            continue
        if providers != ["job"]:
            continue
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
               "spec": metric["provider"]["job"].get("spec", {})}
        validate(job, version, problems, f"{where}: metric {name}")
        containers = job["spec"].get("template", {}).get("spec", {}).get("containers", [])
        for container in containers:
            if container.get("image") != agent_image(deploy):
                problems.append(f"{where}: metric {name}: container {container.get('name')} runs "
                                f"{container.get('image')!r}, not the agent's image {agent_image(deploy)!r}")
            if "command" in container:
                problems.append(f"{where}: metric {name}: container {container.get('name')} replaces "
                                f"the image's entrypoint (tuneprobe): give its arguments as args")
            print(f"{where}: metric {name} runs tuneprobe {' '.join(container.get('args', []))}")


def check_canary_daemonset(doc, problems, where):
    """The canary sysctl DaemonSet: on a selected node pool only, setting a sysctl."""
    pod = doc["spec"]["template"]["spec"]
    if not pod.get("nodeSelector"):
        problems.append(f"{where}: no nodeSelector: the sysctl would reach every node, not a canary pool")
    sets = [c for c in pod.get("initContainers", []) if c.get("command", [])[:2] == ["sysctl", "-w"]]
    if not sets:
        problems.append(f"{where}: no init container runs `sysctl -w`")
    for container in sets:
        print(f"{where}: {container['name']} sets {' '.join(container['command'][2:])} on nodes {pod.get('nodeSelector')}")


def check_examples(deploy, version, problems):
    examples = deploy / "examples"
    present = sorted(p.name for p in examples.glob("*.y*ml")) if examples.is_dir() else []
    for name in present:
        if name not in EXAMPLES:
            problems.append(f"examples/{name}: no expectations in deploy_check.py; it would go unchecked")
    for name, expected in EXAMPLES.items():
        where = f"examples/{name}"
        if name not in present:
            problems.append(f"{where} is missing")
            continue
        try:
            docs = [d for d in yaml.safe_load_all((examples / name).read_text()) if d]
        except yaml.YAMLError as err:
            problems.append(f"{where}: not YAML: {err}")
            continue
        kinds = [(d.get("apiVersion"), d.get("kind")) for d in docs]
        if kinds != expected:
            problems.append(f"{where}: holds {kinds}, expected {expected}")
            continue
        for doc in docs:
            print(f"{where}: {doc['kind']}/{doc['metadata']['name']}")
            if doc["kind"] == "AnalysisTemplate":
                check_analysis_template(doc, deploy, version, problems, where)
                continue
            validate(doc, version, problems, where)
            if doc["kind"] == "DaemonSet":
                check_canary_daemonset(doc, problems, where)


def check_rendering(where, docs, deploy, version, expected_kinds, allowed, problems):
    """Validates one rendering; returns the DaemonSet's added capabilities."""
    capabilities = set()
    for doc in docs:
        kind = doc["kind"]
        print(f'{where}: {kind}/{doc["metadata"]["name"]}')
        if kind == "ServiceMonitor":
            check_service_monitor(doc, problems, where)
            continue
        if kind == "PrometheusRule":
            check_prometheus_rule(doc, deploy, problems, where)
            continue
        validate(doc, version, problems, where)
        if kind == "DaemonSet":
            check_daemonset(doc, allowed, problems, where)
            for container in pod_containers(doc):
                capabilities |= set(container.get("securityContext", {}).get("capabilities", {}).get("add", []))
            print(f"{where}: DaemonSet/{doc['metadata']['name']} capabilities {','.join(sorted(capabilities))}")
    kinds = {d["kind"] for d in docs}
    for required in BASE_KINDS + sorted(expected_kinds):
        if required not in kinds:
            problems.append(f"{where}: missing {required}")
    return capabilities


def main():
    deploy = pathlib.Path(sys.argv[1])
    version = sys.argv[2] if len(sys.argv) > 2 else "1.30.0"
    problems = []
    components = sorted(p.name for p in (deploy / "components").iterdir() if p.is_dir()) if (deploy / "components").is_dir() else []
    for name in components:
        if name not in COMPONENTS:
            problems.append(f"components/{name}: no expectations in deploy_check.py; its effect would go unchecked")
    for name in COMPONENTS:
        if name not in components:
            problems.append(f"components/{name} is missing")
    known = [c for c in components if c in COMPONENTS]
    renderings = [("base", [])] + [(f"components/{c}", [c]) for c in known]
    if len(known) > 1:
        renderings.append(("components/all", known))
    kustomize, kustomize_about = real_kustomize()
    print(f"kustomize cross-check: {'against ' + kustomize_about if kustomize else 'not run, ' + kustomize_about}")

    base_capabilities = None
    for where, used in renderings:
        directory = deploy if not used else overlay(deploy, used)
        try:
            try:
                docs = accumulate(directory, [], "Kustomization")
            except (RenderError, KeyError, IndexError, ValueError, OSError) as err:
                problems.append(f"{where}: does not render: {err}")
                continue
            if kustomize:
                out = subprocess.run(kustomize + [str(directory)], capture_output=True, text=True)
                if out.returncode != 0:
                    problems.append(f"{where}: kustomize refuses it: {out.stderr.strip()}")
                else:
                    theirs = by_identity([d for d in yaml.safe_load_all(out.stdout) if d])
                    ours = by_identity(docs)
                    for identity in sorted(set(theirs) | set(ours)):
                        if theirs.get(identity) != ours.get(identity):
                            problems.append(f"{where}: {'/'.join(identity)} differs from kustomize's rendering")
        finally:
            if used:
                shutil.rmtree(directory, ignore_errors=True)
        kinds = set().union(*(COMPONENTS[c]["kinds"] for c in used))
        added = set().union(*(COMPONENTS[c]["capabilities"] for c in used))
        if not used:
            for doc in docs:
                if doc["kind"] in CRD_KINDS:
                    problems.append(f"base renders a {doc['kind']}: `kubectl apply -k` fails on a cluster without its CRD")
        capabilities = check_rendering(where, docs, deploy, version, kinds, ALLOWED_CAPABILITIES | added, problems)
        if base_capabilities is None:
            base_capabilities = capabilities
        elif capabilities != base_capabilities | added:
            problems.append(
                f"{where}: the DaemonSet adds {sorted(capabilities)}, expected the base's "
                f"{sorted(base_capabilities)} plus {sorted(added)}"
            )
    check_dashboard(deploy, problems)
    check_examples(deploy, version, problems)
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
