"""Kafka authentication in the Kubernetes manifests: every service connects with
SASL_SSL + SCRAM-SHA-512 as its own Strimzi KafkaUser, trusts the cluster CA mounted
from Strimzi's `<cluster>-cluster-ca-cert` Secret, and its ACLs are exactly what the
code reads and writes.

What a service reads and writes is not listed here: each service's real `main` is run
once against the embedded broker, and what its App declares (the topics each consumer
reads, its group and dead-letter topic, every topic it writes) is recorded. A new
topic, a renamed group or a new consumer changes what the ACLs must be.
"""

from __future__ import annotations

import importlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from pydantic import ValidationError

from services.catalog import SERVICES
from shared.settings import KafkaSettings, ServiceSettings
from tests.unit.test_deploy import LAPTOP_ONLY, build, by_kind

DEPLOYED = sorted(set(SERVICES) - LAPTOP_ONLY)
KAFKA_ENV = "RLHF_KAFKA__"
# Strimzi's simple authorization (KafkaUser.spec.authorization.acls)
ACL_RESOURCE_TYPES = {"topic", "group", "cluster", "transactionalId"}
ACL_OPERATIONS = {"Read", "Write", "Create", "Delete", "Alter", "Describe", "ClusterAction", "AlterConfigs",
                  "DescribeConfigs", "IdempotentWrite", "All"}
IMPLY_DESCRIBE = {"Read", "Write", "Delete", "Alter"}  # Kafka grants Describe with any of these


# -- what the code needs ------------------------------------------------------------


@dataclass
class KafkaAccess:
    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    ensured: set[str] = field(default_factory=set)

    def needs(self) -> set[tuple[str, str, str]]:
        """(resource type, name, operation) the service's clients use."""
        return ({("topic", t, op) for t in self.reads for op in ("Read", "Describe")}
                | {("topic", t, op) for t in self.writes for op in ("Write", "Describe")}
                | {("group", g, "Read") for g in self.groups})


SERVICE_ENV = {"annotation": {"RLHF_ANNOTATION__ARGILLA_URL": "http://127.0.0.1:9", "RLHF_ANNOTATION__API_KEY": "k",
                              "RLHF_ANNOTATION__WEBHOOKS": "false"},
               "vllm-deployer": {"RLHF_VLLM_DEPLOYER__BASE_URLS": '["http://127.0.0.1:9"]'}}


def observe(service: str, data_dir: Path, broker: Any, base_model: Path) -> KafkaAccess:
    """Run `service`'s real `main` (stop already set) against the embedded broker and
    record what its App declares as it starts: the topics each consumer reads, its
    group and dead-letter topic, and every topic it writes."""
    from shared.app import App

    seen = KafkaAccess()
    module = importlib.import_module(SERVICES[service])
    real_run = App.run

    def run_and_record(app: App, stop: threading.Event) -> None:
        for decl in app._consumers:  # the declaration is what the ACLs are checked against
            seen.reads |= {t.name for t in decl.topics}
            seen.groups.add(decl.group_id)
            seen.writes.add(decl.dead_letter_topic)
            seen.writes |= {t.name for t in decl.produces}
        seen.writes |= {t.name for t in app._produces}
        seen.ensured |= {name for name, _ in app.topology()}
        real_run(app, stop)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(App, "run", run_and_record)
        for name, value in {"RLHF_DATA_DIR": str(data_dir), "RLHF_HTTP__PORT": "0",
                            "RLHF_KAFKA__BOOTSTRAP_SERVERS": broker.kafka_settings().bootstrap_servers,
                            "RLHF_POLICY_SERVER__BASE_MODEL": str(base_model),
                            "RLHF_CONSUMER__CREATE_TOPICS": "true", **SERVICE_ENV.get(service, {})}.items():
            patch.setenv(name, value)
        stop = threading.Event()
        stop.set()
        module.main(stop)
    # a topic the service makes sure exists but does not consume is one it writes
    seen.writes |= seen.ensured - seen.reads
    return seen


@pytest.fixture(scope="module")
def code_access(tmp_path_factory: pytest.TempPathFactory, broker: Any, tiny_policy: Path) -> dict[str, KafkaAccess]:
    return {name: observe(name, tmp_path_factory.mktemp(name), broker, tiny_policy) for name in DEPLOYED}


@pytest.fixture(scope="module", params=["dev", "prod"])
def manifests(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, build(request.param)


# -- reading the manifests ----------------------------------------------------------


def cluster_name(docs: list[dict[str, Any]]) -> str:
    """The Strimzi cluster the loop's KafkaTopics belong to."""
    clusters = {t["metadata"]["labels"]["strimzi.io/cluster"] for t in by_kind(docs, "KafkaTopic").values()}
    assert len(clusters) == 1, clusters
    return clusters.pop()


def effective_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Name -> env entry as the container sees it: ConfigMap envFrom, then `env` (wins)."""
    configmaps = by_kind(docs, "ConfigMap")
    env: dict[str, dict[str, Any]] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = configmaps[source["configMapRef"]["name"]].get("data", {})
            prefix = source.get("prefix", "")
            env.update({prefix + k: {"name": prefix + k, "value": v} for k, v in data.items()})
    env.update({e["name"]: e for e in container.get("env", [])})
    return env


def the_container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def mounted_secret_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any] | None:
    """Which Secret key (and through which mount) the file `path` in the container is."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if mount.get("subPath"):
            relative = mount["subPath"] if path == mount["mountPath"] else None
        else:
            prefix = mount["mountPath"].rstrip("/") + "/"
            relative = path[len(prefix):] if path.startswith(prefix) else None
        if relative is None:
            continue
        if "secret" not in volume:
            return {"mount": mount, "secret": None, "key": None}
        items = volume["secret"].get("items")
        keys = [i["key"] for i in items if i["path"] == relative] if items else [relative]
        return {"mount": mount, "secret": volume["secret"], "key": keys[0] if keys else None}
    return None


def kafka_deployments(docs: list[dict[str, Any]], code_access: dict[str, KafkaAccess]) -> dict[str, dict[str, Any]]:
    deployments = by_kind(docs, "Deployment")
    talking = {name for name, access in code_access.items() if access.reads or access.writes}
    assert talking == set(deployments), "every deployed service talks to Kafka"
    return {name: deployments[name] for name in sorted(talking)}


def grants(acl: dict[str, Any], resource_type: str, name: str, operation: str) -> bool:
    resource = acl["resource"]
    if resource["type"] != resource_type:
        return False
    if resource.get("patternType", "literal") == "prefix":
        matches = name.startswith(resource["name"])
    else:
        matches = name == resource["name"]
    operations = set(acl["operations"])
    return matches and (operation in operations or "All" in operations
                        or (operation == "Describe" and bool(operations & IMPLY_DESCRIBE)))


# -- the tests ----------------------------------------------------------------------


def test_code_access_is_what_the_services_wire(code_access: dict[str, KafkaAccess]) -> None:
    """The harness sees the loop as the services wire it (a harness that recorded nothing
    would make every ACL check below vacuous)."""
    assert set(code_access) == set(DEPLOYED)
    assert code_access["capture"].writes == {"rlhf.outputs"} and not code_access["capture"].groups
    # one group per replica, named after the pod (hostname): the ACL must be a prefix
    assert code_access["policy-server"].groups == {f"policy-server-{socket.gethostname()}"}
    for name in ("sampler", "annotation", "trainer", "event-logger", "vllm-deployer"):
        assert code_access[name].groups == {name} and f"rlhf.dlq.{name}" in code_access[name].writes


def test_every_kafka_deployment_uses_sasl_ssl_scram_as_its_own_user(
        manifests: tuple[str, list[dict[str, Any]]], code_access: dict[str, KafkaAccess]) -> None:
    _, docs = manifests
    users = by_kind(docs, "KafkaUser")
    usernames = {}
    for name, deployment in kafka_deployments(docs, code_access).items():
        env = effective_env(the_container(deployment), docs)
        value = {k: e.get("value") for k, e in env.items()}
        assert value.get(f"{KAFKA_ENV}SECURITY_PROTOCOL") == "SASL_SSL", name
        assert value.get(f"{KAFKA_ENV}SASL_MECHANISM") == "SCRAM-SHA-512", name
        username = value.get(f"{KAFKA_ENV}SASL_USERNAME")
        assert username in users, f"{name}: RLHF_KAFKA__SASL_USERNAME={username!r} is no KafkaUser"
        assert users[username]["metadata"]["labels"].get("app.kubernetes.io/name") == name, \
            f"{name} authenticates as {username}, another service's user"
        password = env.get(f"{KAFKA_ENV}SASL_PASSWORD", {})
        assert "value" not in password, f"{name}: the Kafka password is inline"
        ref = password.get("valueFrom", {}).get("secretKeyRef")
        # Strimzi's User Operator writes the SCRAM password to a Secret named after the user
        assert ref == {"name": username, "key": "password"}, f"{name}: password from {ref}, not {username}'s Secret"
        assert users[username]["metadata"].get("namespace") == deployment["metadata"].get("namespace"), \
            f"{name}: a pod reads only Secrets of its own namespace"
        usernames[name] = username
    assert len(set(usernames.values())) == len(usernames), f"services share a Kafka user: {usernames}"
    assert set(users) == set(usernames.values()), "a KafkaUser no service uses"


def test_the_cluster_ca_is_mounted_read_only_where_ssl_cafile_points(
        manifests: tuple[str, list[dict[str, Any]]], code_access: dict[str, KafkaAccess]) -> None:
    _, docs = manifests
    cluster = cluster_name(docs)
    for name, deployment in kafka_deployments(docs, code_access).items():
        pod, container = deployment["spec"]["template"]["spec"], the_container(deployment)
        cafile = effective_env(container, docs).get(f"{KAFKA_ENV}SSL_CAFILE", {}).get("value")
        assert cafile, f"{name}: no RLHF_KAFKA__SSL_CAFILE"
        found = mounted_secret_file(pod, container, cafile)
        assert found, f"{name}: nothing is mounted at {cafile}"
        assert found["secret"] and found["secret"]["secretName"] == f"{cluster}-cluster-ca-cert", found
        assert found["key"] == "ca.crt", f"{name}: {cafile} is key {found['key']!r}, not ca.crt"
        assert found["mount"].get("readOnly") is True, f"{name}: the CA mount is not read-only"
        assert not found["secret"].get("optional"), f"{name}: a missing CA must stop the pod, not be skipped"


def test_bootstrap_servers_are_the_clusters_tls_listener(manifests: tuple[str, list[dict[str, Any]]],
                                                         code_access: dict[str, KafkaAccess]) -> None:
    _, docs = manifests
    cluster = cluster_name(docs)
    namespaces = {t["metadata"]["namespace"] for t in by_kind(docs, "KafkaTopic").values()}
    for name, deployment in kafka_deployments(docs, code_access).items():
        servers = effective_env(the_container(deployment), docs)[f"{KAFKA_ENV}BOOTSTRAP_SERVERS"]["value"]
        for server in servers.split(","):
            host, _, port = server.strip().rpartition(":")
            assert port == "9093", f"{name}: {server} is not Strimzi's TLS listener port"
            assert host.startswith(f"{cluster}-kafka-bootstrap.") and host.split(".")[1] in namespaces, server


def test_one_scram_kafka_user_per_service_with_well_formed_simple_acls(
        manifests: tuple[str, list[dict[str, Any]]]) -> None:
    """KafkaUser has no schema in kubernetes-validate (test_deploy checks its required
    fields); its Strimzi v1beta2 structure is checked here."""
    _, docs = manifests
    cluster = cluster_name(docs)
    users = by_kind(docs, "KafkaUser")
    assert {u["metadata"]["labels"].get("app.kubernetes.io/name") for u in users.values()} == set(DEPLOYED)
    for name, user in users.items():
        assert user["apiVersion"] == "kafka.strimzi.io/v1beta2", name
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == cluster, name
        assert set(user["spec"]) <= {"authentication", "authorization", "quotas", "template"}, name
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}, name
        authorization = user["spec"]["authorization"]
        assert authorization["type"] == "simple" and authorization["acls"], name
        for acl in authorization["acls"]:
            assert set(acl) <= {"resource", "operations", "host", "type"}, f"{name}: {acl}"
            assert set(acl["resource"]) <= {"type", "name", "patternType"}, f"{name}: {acl}"
            assert acl["resource"]["type"] in ACL_RESOURCE_TYPES, f"{name}: {acl}"
            assert acl["resource"].get("patternType", "literal") in {"literal", "prefix"}, f"{name}: {acl}"
            assert acl["operations"] and set(acl["operations"]) <= ACL_OPERATIONS, f"{name}: {acl}"
            assert acl.get("type", "allow") == "allow" and acl.get("host", "*") == "*", f"{name}: {acl}"


def test_acls_grant_what_the_code_reads_and_writes_and_nothing_more(
        manifests: tuple[str, list[dict[str, Any]]], code_access: dict[str, KafkaAccess]) -> None:
    _, docs = manifests
    users = {u["metadata"]["labels"]["app.kubernetes.io/name"]: u for u in by_kind(docs, "KafkaUser").values()}
    for service, access in code_access.items():
        acls = users[service]["spec"]["authorization"]["acls"]
        needs = access.needs()
        missing = sorted(need for need in needs if not any(grants(acl, *need) for acl in acls))
        assert not missing, f"{service} needs {missing}"
        others = {(t, n) for other, a in code_access.items() if other != service for t, n, _ in a.needs()}
        for acl in acls:
            assert acl["resource"].get("name") not in ("*", "") and "All" not in acl["operations"], \
                f"{service}: wildcard ACL {acl}"
            for operation in acl["operations"]:
                assert any(acl["resource"]["type"] == t and grants(acl, t, n, op) and op == operation
                           for t, n, op in needs), f"{service}: {acl} grants {operation}, which it never uses"
            if acl["resource"].get("patternType") == "prefix":
                foreign = sorted((t, n) for t, n in others - {(t, n) for t, n, _ in needs}
                                 if grants(acl, t, n, acl["operations"][0]))
                assert not foreign, f"{service}: prefix ACL {acl} also matches {foreign}"


def client_settings(env: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, cafile: str) -> KafkaSettings:
    """The Kafka settings a pod with `env` builds: Secret values stand in, the CA path
    points at a real PEM bundle here, the bootstrap at a closed local port."""
    for name, entry in env.items():
        if name.startswith(KAFKA_ENV):
            monkeypatch.setenv(name, entry.get("value", "stand-in-secret"))
    monkeypatch.setenv(f"{KAFKA_ENV}SSL_CAFILE", cafile)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(f"{KAFKA_ENV}BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    return ServiceSettings().kafka


def test_kafka_python_accepts_the_client_config_the_manifests_give(
        manifests: tuple[str, list[dict[str, Any]]], code_access: dict[str, KafkaAccess],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-python rejects unknown options at construction and only connects later:
    producer and consumer are built from each Deployment's settings (the admin client
    bootstraps in its constructor, so its options are checked against its own table)."""
    _, docs = manifests
    for name, deployment in kafka_deployments(docs, code_access).items():
        with monkeypatch.context() as patch:
            kafka = client_settings(effective_env(the_container(deployment), docs), patch, certifi.where())
            kwargs = kafka.client_kwargs()
            assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
            assert kwargs["sasl_plain_password"] == "stand-in-secret" and kwargs["ssl_cafile"] == certifi.where()
            producer = KafkaProducer(**kafka.producer_kwargs(), api_version=(3, 7))
            producer.close(timeout=1)
            for group in code_access[name].groups:
                KafkaConsumer(**kafka.consumer_kwargs(group), api_version=(3, 7)).close()
            assert not set(kwargs) - set(KafkaAdminClient.DEFAULT_CONFIG)


# -- settings: a broken security configuration fails at start, by name ---------------


@pytest.fixture
def sasl_ssl_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name, value in {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "SCRAM-SHA-512",
                        "SASL_USERNAME": "rlhf-loop-sampler", "SASL_PASSWORD": "hunter2",
                        "SSL_CAFILE": certifi.where()}.items():
        monkeypatch.setenv(KAFKA_ENV + name, value)
    yield monkeypatch


def test_a_missing_ca_file_is_a_settings_error_naming_the_variable(sasl_ssl_env: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    from services.launch import describe_settings_error

    assert ServiceSettings().kafka.ssl_cafile == certifi.where()
    sasl_ssl_env.setenv(f"{KAFKA_ENV}SSL_CAFILE", str(tmp_path / "absent" / "ca.crt"))
    with pytest.raises(ValidationError) as error:
        ServiceSettings()
    described = describe_settings_error(error.value)
    assert "RLHF_KAFKA__SSL_CAFILE" in described and "no such file" in described
    assert "hunter2" not in described and "hunter2" not in str(error.value)


def test_a_ca_file_that_is_not_pem_is_a_settings_error(sasl_ssl_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    sasl_ssl_env.setenv(f"{KAFKA_ENV}SSL_CAFILE", str(garbage))
    with pytest.raises(ValidationError, match="RLHF_KAFKA__SSL_CAFILE.*not a readable PEM"):
        ServiceSettings()


def test_sasl_without_credentials_names_what_is_missing(sasl_ssl_env: pytest.MonkeyPatch) -> None:
    sasl_ssl_env.delenv(f"{KAFKA_ENV}SASL_PASSWORD")
    with pytest.raises(ValidationError, match="RLHF_KAFKA__SASL_PASSWORD") as error:
        ServiceSettings()
    assert "SASL_USERNAME" not in str(error.value)
    with pytest.raises(ValidationError, match="RLHF_KAFKA__SASL_MECHANISM, RLHF_KAFKA__SASL_USERNAME"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_password="x")


def test_plaintext_for_the_embedded_broker_is_unchanged(tmp_path: Path) -> None:
    """Embedded mode (Tansu) stays PLAINTEXT: no CA or credentials needed, and a CA path
    is only checked where TLS is used."""
    assert KafkaSettings().security_protocol == "PLAINTEXT"
    assert KafkaSettings(ssl_cafile=str(tmp_path / "absent")).client_kwargs()["security_protocol"] == "PLAINTEXT"
    assert KafkaSettings(security_protocol="SSL", ssl_cafile=certifi.where()).ssl_cafile == certifi.where()


# -- the trainer's Kubernetes Job talks to Kafka too ---------------------------------


def test_the_trainer_job_carries_the_trainer_deployments_kafka_wiring(tmp_path: Path) -> None:
    import json

    from services.trainer.executor import JobSpec, KubernetesJobExecutor

    docs = build("prod")
    trainer = by_kind(docs, "Deployment")["trainer"]
    env = effective_env(the_container(trainer), docs)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"settings": {"data_dir": "/var/lib/rlhf-loop"}}))
    job = KubernetesJobExecutor("img", "rlhf-loop").render(JobSpec("run-123456789", job_file, tmp_path / "log"))
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    job_env = {e["name"]: e for e in container.get("env", [])}
    assert job_env[f"{KAFKA_ENV}SASL_PASSWORD"] == env[f"{KAFKA_ENV}SASL_PASSWORD"]
    cafile = env[f"{KAFKA_ENV}SSL_CAFILE"]["value"]
    found = mounted_secret_file(pod, container, cafile)
    assert found and found["secret"] and found["key"] == "ca.crt"
