"""Deployment artefacts, validated offline with real tools: kustomize (kubectl's),
kubernetes-validate (ships the Kubernetes JSON schemas), promtool, hadolint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.catalog import SERVICES, dead_letter_topics
from shared.topics import LOOP_TOPICS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
# Custom resources have no schema in kubernetes-validate; they are checked by hand below
# (KafkaUser's structure and ACLs: test_deploy_kafka_auth.py).
CRDS = {"PodMonitor", "KafkaTopic", "KafkaUser"}
# The demo (replayed traffic, simulated annotators) belongs to the laptop, not a cluster.
LAPTOP_ONLY = {"demo"}


def tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} is not installed (make test installs it)"
    return str(path)


def build(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=["dev", "prod"])
def manifests(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, build(request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_manifest_validates_against_the_kubernetes_schema(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = manifests
    for doc in docs:
        if doc["kind"] in CRDS:
            assert {"apiVersion", "kind", "metadata", "spec"} <= doc.keys(), doc
            continue
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_a_deployment_per_service_hardened_and_probed(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = manifests
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == set(SERVICES) - LAPTOP_ONLY
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["args"] == ["run", name]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}}
        assert pod["automountServiceAccountToken"] if "automountServiceAccountToken" in pod else True
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        env = {e["name"]: e for e in container.get("env", [])}
        for secret in ("RLHF_CAPTURE__TOKEN", "RLHF_ANNOTATION__API_KEY"):
            if secret in env:
                assert "secretKeyRef" in env[secret]["valueFrom"], "secrets come from a Secret"


def test_trainer_on_gpu_nodes_in_prod_and_cpu_in_dev(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = manifests
    pod = by_kind(docs, "Deployment")["trainer"]["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    if overlay == "prod":
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert limits["nvidia.com/gpu"] == "1"
        assert pod["containers"][0]["image"].endswith("-cuda")
    else:
        assert "nodeSelector" not in pod and "nvidia.com/gpu" not in limits


def test_capture_has_hpa_pdb_and_service(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = manifests
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["capture"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "capture"
    assert by_kind(docs, "PodDisruptionBudget")["capture"]["spec"]["minAvailable"] >= 1
    assert "capture" in by_kind(docs, "Service")


def test_topics_policies_and_monitoring(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = manifests
    topics = {t["spec"]["topicName"]: t for t in by_kind(docs, "KafkaTopic").values()}
    # from the services' own settings: a new consumer, or a renamed group, fails here
    expected = {t.name for t in LOOP_TOPICS} | set(dead_letter_topics().values())
    assert set(topics) == expected
    for loop_topic in LOOP_TOPICS:
        assert topics[loop_topic.name]["spec"]["partitions"] == loop_topic.partitions
    assert all(t["metadata"]["namespace"] == "kafka" for t in topics.values())
    assert "default-deny-ingress" in by_kind(docs, "NetworkPolicy")
    monitor = by_kind(docs, "PodMonitor")["rlhf-loop"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    claims = by_kind(docs, "PersistentVolumeClaim")
    assert claims["rlhf-registry"]["spec"]["accessModes"] == ["ReadWriteMany"]


def ingress_sources(docs: list[dict[str, Any]], app: str) -> list[dict[str, Any]]:
    """The `from` entries of every NetworkPolicy that selects the pods of `app`."""
    sources = []
    for policy in by_kind(docs, "NetworkPolicy").values():
        wanted = policy["spec"]["podSelector"].get("matchLabels", {})
        if all({"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "rlhf-loop"}.get(k) == v
               for k, v in wanted.items()):
            for rule in policy["spec"].get("ingress", []):
                sources += rule.get("from", [])
    return sources


def test_under_default_deny_the_policy_server_is_reachable_by_chatbots_and_the_sampler(
        manifests: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = manifests
    sources = ingress_sources(docs, "policy-server")
    assert {"namespaceSelector": {"matchLabels": {"rlhf-loop/capture-client": "true"}}} in sources
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "sampler"}}} in sources


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_prometheus_reaches_only_the_metrics_port(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    """RLHF_HTTP__METRICS_PORT: every pod serves /metrics on a port of its own, the
    PodMonitor scrapes that one, and the monitoring namespace's opening is that port
    alone, so scraping does not open any service's API."""
    _, docs = manifests
    config = by_kind(docs, "ConfigMap")["rlhf-loop-config"]["data"]
    metrics_port = int(config["RLHF_HTTP__METRICS_PORT"])
    assert metrics_port != int(config["RLHF_HTTP__PORT"])
    for name, deployment in by_kind(docs, "Deployment").items():
        ports = {p["name"]: p["containerPort"] for p in container_of(deployment)["ports"]}
        assert ports.get("metrics") == metrics_port, name
    [endpoint] = by_kind(docs, "PodMonitor")["rlhf-loop"]["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    for policy in by_kind(docs, "NetworkPolicy").values():
        for rule in policy["spec"].get("ingress", []):
            namespaces = {s.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                          for s in rule.get("from", [])}
            if "monitoring" in namespaces:
                assert rule["ports"] == [{"port": "metrics"}], policy["metadata"]["name"]


def test_the_policy_servers_api_key_comes_from_the_secret(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = manifests
    env = {e["name"]: e for e in container_of(by_kind(docs, "Deployment")["policy-server"]).get("env", [])}
    ref = env["RLHF_POLICY_SERVER__API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "rlhf-loop-secrets", "key": "policy-server-api-key"}
    assert "RLHF_POLICY_SERVER__AUTH_DISABLED" not in by_kind(docs, "ConfigMap")["rlhf-loop-config"]["data"]


def test_every_empty_dir_is_size_limited(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = manifests
    for name, deployment in by_kind(docs, "Deployment").items():
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{name}: emptyDir {volume['name']} has no sizeLimit"


# What the trainer's Kubernetes Job executor calls (tests/unit/test_trainer_kubernetes_executor.py
# checks that it calls no more): a Role over jobs and pods, in its own namespace.
TRAINER_RULES = [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "list", "watch", "delete"]},
                 {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]


def test_the_trainer_may_run_jobs_in_its_namespace_and_nothing_more(
        manifests: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = manifests
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    [role] = by_kind(docs, "Role").values()
    assert role["rules"] == TRAINER_RULES and role["metadata"]["namespace"] == "rlhf-loop"
    [binding] = by_kind(docs, "RoleBinding").values()
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rlhf-loop-trainer", "namespace": "rlhf-loop"}]
    accounts = by_kind(docs, "ServiceAccount")
    # no token unless a pod asks for it; the services' own account has no binding at all
    assert accounts["rlhf-loop-trainer"]["automountServiceAccountToken"] is False
    assert accounts["rlhf-loop"]["automountServiceAccountToken"] is False


def test_alert_rules_check_and_unit_tests_pass() -> None:
    promtool = tool("promtool")
    rules = DEPLOY / "prometheus"
    subprocess.run([promtool, "check", "rules", str(rules / "rules.yml")], check=True, capture_output=True)
    done = subprocess.run([promtool, "test", "rules", str(rules / "rules_test.yml")],
                          capture_output=True, text=True, cwd=rules)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run([tool("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_committed_dashboard_is_what_the_generator_builds() -> None:
    sys.path.insert(0, str(DEPLOY / "grafana"))
    try:
        import build_dashboard
    finally:
        sys.path.pop(0)
    assert (DEPLOY / "grafana" / "rlhf-loop.json").read_text() == build_dashboard.render()


def test_local_scrape_config_is_valid_and_covers_every_up_service() -> None:
    from services.catalog import EMBEDDED_LOOP

    config = DEPLOY / "prometheus" / "prometheus-local.yml"
    done = subprocess.run([tool("promtool"), "check", "config", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    targets = yaml.safe_load(config.read_text())["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"127.0.0.1:{9100 + i}" for i in range(len(EMBEDDED_LOOP))]
