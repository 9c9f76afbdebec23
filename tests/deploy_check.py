#!/usr/bin/env python3
"""Renders deploy/ the way `kubectl apply -k` would and checks it offline.

- kustomize-style rendering of what deploy/kustomization.yaml uses: resources, namespace,
  images, and a configMapGenerator from files;
- every built-in kind validated strictly against the Kubernetes JSON schemas shipped in
  the kubernetes-validate package (no cluster needed);
- the DaemonSet's least privilege: not privileged, read-only root filesystem, no
  privilege escalation, capabilities dropped and only the allowed ones added, host paths
  mounted read-only, resources set;
- the ServiceMonitor (a CRD: no built-in schema) has its required fields, and the
  dashboard has a panel per signal.

Usage: deploy_check.py DEPLOY_DIR [KUBERNETES_VERSION]. Prints the rendered documents'
kinds and exits 1 with the reasons when something is wrong.
"""
import json
import pathlib
import sys

import kubernetes_validate
import yaml

ALLOWED_CAPABILITIES = {"BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
SIGNAL_METRICS = [
    "tuneprobe_tcp_retransmitted_segments_total",
    "tuneprobe_packet_drops_total",
    "tuneprobe_dns_latency_seconds",
    "tuneprobe_block_service_seconds",
    "tuneprobe_cpu_throttled_periods_total",
]


def render(deploy: pathlib.Path) -> list:
    kustomization = yaml.safe_load((deploy / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization.get("resources", []):
        docs.extend(d for d in yaml.safe_load_all((deploy / resource).read_text()) if d)
    for generator in kustomization.get("configMapGenerator", []):
        options = generator.get("options", {})
        data = {pathlib.Path(f).name: (deploy / f).read_text() for f in generator.get("files", [])}
        docs.append({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"], "labels": options.get("labels", {})},
            "data": data,
        })
    namespace = kustomization.get("namespace")
    images = {i["name"]: i for i in kustomization.get("images", [])}
    for doc in docs:
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
        for container in pod_containers(doc):
            name, _, tag = container["image"].partition(":")
            if name in images:
                image = images[name]
                container["image"] = f'{image.get("newName", name)}:{image.get("newTag", tag or "latest")}'
    return docs


def pod_containers(doc):
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def check_daemonset(doc, problems):
    pod = doc["spec"]["template"]["spec"]
    if pod.get("hostNetwork"):
        problems.append("DaemonSet uses hostNetwork")
    mounts_by_volume = {}
    for container in pod_containers(doc):
        name = container["name"]
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
        extra = set(caps.get("add", [])) - ALLOWED_CAPABILITIES
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
                    problems.append(f"host path {volume['hostPath']['path']} is mounted writable")


def check_service_monitor(doc, problems):
    spec = doc.get("spec", {})
    if not spec.get("selector", {}).get("matchLabels"):
        problems.append("ServiceMonitor has no selector")
    if not any(e.get("port") for e in spec.get("endpoints", [])):
        problems.append("ServiceMonitor has no endpoint port")


def check_dashboard(deploy, problems):
    for path in (deploy / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        exprs = " ".join(t.get("expr", "") for p in dashboard.get("panels", []) for t in p.get("targets", []))
        for metric in SIGNAL_METRICS:
            if metric not in exprs:
                problems.append(f"{path.name}: no panel uses {metric}")


def main():
    deploy = pathlib.Path(sys.argv[1])
    version = sys.argv[2] if len(sys.argv) > 2 else "1.30.0"
    problems = []
    docs = render(deploy)
    for doc in docs:
        kind = doc["kind"]
        print(f'{kind}/{doc["metadata"]["name"]}')
        if kind == "ServiceMonitor":
            check_service_monitor(doc, problems)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{kind}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")
        if kind == "DaemonSet":
            check_daemonset(doc, problems)
    check_dashboard(deploy, problems)
    kinds = {d["kind"] for d in docs}
    for required in ["DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "ServiceMonitor", "ConfigMap"]:
        if required not in kinds:
            problems.append(f"missing {required}")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
