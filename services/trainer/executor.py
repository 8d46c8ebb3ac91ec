"""Where a run's job process runs. Local: a child process of the service, logs to
a file. Kubernetes: a batch/v1 Job per run, submitted, watched and deleted through
the Kubernetes API (KubernetesJobExecutor)."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .distributed import launch_command

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class JobSpec:
    run_id: str
    job_file: Path  # JSON payload (run_job.job_payload)
    log_file: Path


class JobHandle(Protocol):
    def poll(self) -> int | None: ...

    def wait(self, timeout_s: float) -> int | None: ...

    def kill(self) -> None: ...

    @property
    def pid(self) -> int: ...


class Executor(Protocol):
    def submit(self, spec: JobSpec) -> JobHandle: ...


def _die_with_parent() -> None:
    """Linux: the job gets SIGKILL if the service dies, so no orphan publishes later
    (the job also checks it still holds the run lock before publishing)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ProcessHandle:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    def poll(self) -> int | None:
        return self._process.poll()

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


class LocalProcessExecutor:
    """A child process per run; `num_processes` > 1 starts it under `accelerate launch`
    on this machine (distributed.py), the rendezvous on `rendezvous_port`."""

    def __init__(self, num_processes: int = 1, *, config_file: str = "", rendezvous_port: int = 29500) -> None:
        self.num_processes, self.config_file, self.rendezvous_port = num_processes, config_file, rendezvous_port

    @classmethod
    def from_options(cls, options: Any) -> LocalProcessExecutor:
        return cls(options.num_processes, config_file=options.accelerate_config_file,
                   rendezvous_port=options.rendezvous_port)

    def command(self, job_file: Path) -> list[str]:
        return launch_command(job_file, num_processes=self.num_processes, config_file=self.config_file,
                              port=self.rendezvous_port)

    def submit(self, spec: JobSpec) -> ProcessHandle:
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        with open(spec.log_file, "ab") as log:
            process = subprocess.Popen(
                self.command(spec.job_file),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd(),
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        return ProcessHandle(process)


# What the trainer Deployment mounts (deploy/k8s/base/trainer.yaml): a Job is the same
# Kafka client, with the same volumes.
KAFKA_USER_SECRET = "rlhf-loop-trainer"
KAFKA_CA_SECRET = "rlhf-cluster-ca-cert"
KAFKA_CA_DIR = "/etc/rlhf-loop/kafka-ca"


# Why a run's Job failed, read off its pod the way `kubectl describe` shows it.
IMAGE_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
POD_START_REASONS = IMAGE_PULL_REASONS | {"CreateContainerConfigError", "CreateContainerError"}
JOB_LABEL = "app.kubernetes.io/name"
JOB_LABEL_VALUE = "rlhf-trainer-job"
RUN_LABEL = "rlhf/run-id"
KILLED = -signal.SIGKILL  # what wait() returns for a Job the trainer deleted (as a killed child process)

log = logging.getLogger(__name__)


def job_name(run_id: str, *, indexed: bool = False) -> str:
    """A DNS-1123 label (a Job's name becomes a pod label): the whole run id, so names
    never collide. An indexed Job's pods are named `<job>-<index>` as their hostnames,
    which must be labels too: 7 characters are left for that."""
    return re.sub(r"[^a-z0-9-]+", "-", f"rlhf-train-{run_id}".lower())[:56 if indexed else 63].rstrip("-")


class KubernetesJobExecutor:
    """A batch/v1 Job per run, through the official `kubernetes` client.

    The pod runs the same `python -m services.trainer.run_job JOB_FILE` as a local
    run, and reads its job file where the service wrote it: on the trainer's data
    volume (rlhf-trainer-data, mounted at the same path; no ConfigMap, so the Role
    needs no configmap rights). It publishes into the registry volume itself. Its pod
    is placed on the trainer's node (the data volume is ReadWriteOnce and holds the
    SQLite store and run lock the job reports through).

    The handle watches the Job (a watch, resumed from its resourceVersion) and reads
    the pod when it fails, so a run fails with the pod's own reason: OOMKilled,
    Evicted, an image pull error (the Job itself would wait forever: the handle
    deletes it), DeadlineExceeded (activeDeadlineSeconds). kill() deletes the Job
    with propagationPolicy Foreground (its pod goes with it).

    More than one process (`num_processes`, GPUs per pod) runs the job under
    `accelerate launch` in the pod. More than one node (`num_nodes`) makes the Job
    Indexed, one pod per node: each pod's machine rank is its completion index, and
    rank 0 is reached at `<job>-0.<subdomain>` through the headless Service the
    manifests ship (deploy/k8s/base/trainer-jobs.yaml). Those pods cannot all sit on
    the trainer's node, so a multi-node run needs the data volume on a ReadWriteMany
    class whose file locking SQLite can trust (README, "Training on more than one
    node"); the pod affinity is left out.

    `api_client`: an ApiClient or a Configuration (tests point it at an API double);
    by default in-cluster config, falling back to a kubeconfig ($KUBECONFIG,
    ~/.kube/config). `on_failure(run_id, reason)` is told why a Job failed before
    wait() returns its exit code, so the coordinator can record that reason.
    """

    def __init__(self, image: str, namespace: str, *, gpus: int = 0, cpu: str = "2", memory: str = "8Gi",
                 memory_limit: str = "16Gi", node_selector: dict[str, str] | None = None,
                 tolerations: list[dict[str, Any]] | None = None, ttl_s: int = 86400, deadline_s: int = 0,
                 service_account: str = "rlhf-loop", colocate_with: dict[str, str] | None = None,
                 num_processes: int = 1, num_nodes: int = 1, accelerate_config_file: str = "",
                 rendezvous_port: int = 29500, subdomain: str = "rlhf-trainer-jobs", api_client: Any = None, watch_s: int = 10, api_patience_s: float = 300.0,
                 on_failure: Callable[[str, str], None] | None = None) -> None:
        self.image, self.namespace, self.gpus = image, namespace, gpus
        self.cpu, self.memory, self.memory_limit = cpu, memory, memory_limit
        self.node_selector, self.tolerations = dict(node_selector or {}), list(tolerations or [])
        self.ttl_s, self.deadline_s, self.service_account = ttl_s, deadline_s, service_account
        self.colocate_with = {"app.kubernetes.io/name": "trainer"} if colocate_with is None else colocate_with
        self.watch_s, self.api_patience_s, self.on_failure = watch_s, api_patience_s, on_failure
        self.num_processes, self.num_nodes, self.config_file = num_processes, num_nodes, accelerate_config_file
        self.rendezvous_port, self.subdomain = rendezvous_port, subdomain
        self._api_client = api_client
        self._api_lock = threading.Lock()

    @classmethod
    def from_options(cls, options: Any, **kwargs: Any) -> KubernetesJobExecutor:
        """From TrainerOptions' kubernetes_* settings."""
        o = options
        return cls(o.kubernetes_image, o.kubernetes_namespace, gpus=o.kubernetes_gpus, cpu=o.kubernetes_cpu,
                   memory=o.kubernetes_memory, memory_limit=o.kubernetes_memory_limit,
                   node_selector=o.kubernetes_node_selector, tolerations=o.kubernetes_tolerations,
                   ttl_s=o.kubernetes_ttl_s, deadline_s=o.kubernetes_deadline_s,
                   service_account=o.kubernetes_job_service_account, num_processes=o.num_processes,
                   num_nodes=o.num_nodes, accelerate_config_file=o.accelerate_config_file,
                   rendezvous_port=o.rendezvous_port, subdomain=o.kubernetes_job_subdomain, **kwargs)

    # -- the API ----------------------------------------------------------------------

    def api_client(self) -> Any:
        from kubernetes import client, config

        with self._api_lock:
            if isinstance(self._api_client, client.Configuration):
                self._api_client = client.ApiClient(self._api_client)
            if self._api_client is None:
                configuration = client.Configuration()
                try:
                    config.load_incluster_config(client_configuration=configuration)
                except config.ConfigException:
                    # $KUBECONFIG as it is now (the client reads it once, at import), else ~/.kube/config
                    config.load_kube_config(config_file=os.environ.get("KUBECONFIG"),
                                            client_configuration=configuration)
                self._api_client = client.ApiClient(configuration)
            return self._api_client

    def batch(self) -> Any:
        from kubernetes import client

        return client.BatchV1Api(self.api_client())

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client())

    # -- the Job ----------------------------------------------------------------------

    def render(self, spec: JobSpec) -> dict[str, Any]:
        payload = json.loads(spec.job_file.read_text())
        gpu = {"nvidia.com/gpu": str(self.gpus)} if self.gpus else {}
        resources = {"requests": {"cpu": self.cpu, "memory": self.memory, **gpu},
                     "limits": {"memory": self.memory_limit, **gpu}}
        indexed = self.num_nodes > 1
        name = job_name(spec.run_id, indexed=indexed)
        data_dir = payload["settings"]["data_dir"]
        command = launch_command(
            spec.job_file, num_processes=self.num_processes, num_nodes=self.num_nodes, config_file=self.config_file,
            machine_rank="$(JOB_COMPLETION_INDEX)" if indexed else "0",  # Kubernetes expands $(VAR) in args
            main_address=f"{name}-0.{self.subdomain}" if indexed else "127.0.0.1", port=self.rendezvous_port,
            python="python")
        labels = {JOB_LABEL: JOB_LABEL_VALUE, "app.kubernetes.io/part-of": "rlhf-loop", RUN_LABEL: spec.run_id}
        pod: dict[str, Any] = {
            "restartPolicy": "Never",
            "serviceAccountName": self.service_account,
            "automountServiceAccountToken": False,  # the job never calls the API
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "train", "image": self.image,
                # the job file lives on the data volume, where the service wrote it
                "command": command,
                # the trainer Deployment's own Kafka user and CA (deploy/k8s/base/kafka-users.yaml)
                "env": [{"name": "RLHF_KAFKA__SASL_PASSWORD",
                         "valueFrom": {"secretKeyRef": {"name": KAFKA_USER_SECRET, "key": "password"}}},
                        {"name": "HF_HUB_OFFLINE", "value": "1"},
                        {"name": "PYTHONUNBUFFERED", "value": "1"}],
                "resources": resources,
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                 {"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True},
                                 {"name": "data", "mountPath": data_dir},
                                 {"name": "registry", "mountPath": f"{data_dir}/registry"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}},
                        {"name": "kafka-ca", "secret": {"secretName": KAFKA_CA_SECRET,
                                                        "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": "rlhf-trainer-data"}},
                        {"name": "registry", "persistentVolumeClaim": {"claimName": "rlhf-registry"}}],
        }
        if self.node_selector:
            pod["nodeSelector"] = self.node_selector
        if self.tolerations:
            pod["tolerations"] = self.tolerations
        if indexed:
            pod["subdomain"] = self.subdomain  # <job>-<index>.<subdomain>: how the ranks find rank 0
            pod["containers"][0]["ports"] = [{"name": "rendezvous", "containerPort": self.rendezvous_port}]
        elif self.colocate_with:  # the data volume is ReadWriteOnce: the trainer's node
            pod["affinity"] = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": self.colocate_with}, "topologyKey": "kubernetes.io/hostname"}]}}
        job_spec: dict[str, Any] = {
            "backoffLimit": 0,  # a failed run is reported failed, never retried half-way
            "ttlSecondsAfterFinished": self.ttl_s,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        }
        if indexed:  # one pod per node; one failed pod fails the Job (backoffLimit 0), so the run
            job_spec.update(completionMode="Indexed", completions=self.num_nodes, parallelism=self.num_nodes)
        if self.deadline_s:
            job_spec["activeDeadlineSeconds"] = self.deadline_s
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": self.namespace, "labels": labels,
                             "annotations": {"rlhf-loop/job-file": str(spec.job_file)}},
                "spec": job_spec}

    def submit(self, spec: JobSpec) -> KubernetesJobHandle:
        body = self.render(spec)
        data_dir = Path(json.loads(spec.job_file.read_text())["settings"]["data_dir"])
        if not spec.job_file.resolve().is_relative_to(data_dir.resolve()):
            raise ValueError(f"the job file {spec.job_file} is not on the data volume ({data_dir}): a pod cannot read it")
        self.batch().create_namespaced_job(self.namespace, body)
        name = body["metadata"]["name"]
        _append(spec.log_file, f"submitted Job {self.namespace}/{name} (kubectl logs -n {self.namespace} job/{name})")
        return KubernetesJobHandle(self, name, spec.run_id, spec.log_file)

    def delete(self, name: str) -> None:
        from kubernetes.client import V1DeleteOptions
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch().delete_namespaced_job(name, self.namespace,
                                               body=V1DeleteOptions(propagation_policy="Foreground"))
        except ApiException as error:
            if error.status != 404:
                raise

    def pod_failure(self, run_id: str) -> tuple[int, str] | None:
        """(exit code, reason) of the run's pod, if it failed or cannot start."""
        pods = self.core().list_namespaced_pod(self.namespace, label_selector=f"{RUN_LABEL}={run_id}").items
        for pod in pods:
            status = pod.status
            if status is None:
                continue
            if status.reason == "Evicted":
                return 1, f"pod {pod.metadata.name} evicted: {status.message or 'no message'}"
            for container in status.container_statuses or []:
                state = container.state
                if state and state.terminated and state.terminated.exit_code:
                    t = state.terminated
                    if t.reason == "OOMKilled":
                        return t.exit_code, (f"OOMKilled: pod {pod.metadata.name} went over its memory limit "
                                             f"({self.memory_limit}); exit code {t.exit_code}")
                    return t.exit_code, (f"pod {pod.metadata.name} exited with code {t.exit_code}"
                                         f" ({t.reason or 'Error'}{': ' + t.message if t.message else ''})")
                if state and state.waiting and state.waiting.reason in POD_START_REASONS:
                    kind = "image pull error" if state.waiting.reason in IMAGE_PULL_REASONS else "cannot start"
                    return 1, f"{kind}: {state.waiting.reason}: {state.waiting.message or self.image}"
        return None


def _append(log_file: Path, line: str) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        f.write(f"[kubernetes] {line}\n")


class KubernetesJobHandle:
    """A submitted Job, followed by a watch thread; `failure_reason` says why it failed."""

    def __init__(self, executor: KubernetesJobExecutor, name: str, run_id: str, log_file: Path) -> None:
        self.executor, self.name, self.run_id, self.log_file = executor, name, run_id, log_file
        self.failure_reason: str | None = None
        self._code: int | None = None
        self._done = threading.Event()
        self._killed = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"k8s-{name[-12:]}", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return 0  # no local process: the pod runs elsewhere

    def poll(self) -> int | None:
        return self._code if self._done.is_set() else None

    def wait(self, timeout_s: float) -> int | None:
        self._done.wait(timeout_s)
        return self.poll()

    def kill(self) -> None:
        """Delete the Job (Foreground: its pod first), then wait briefly for the watch to see it go."""
        if self._done.is_set():
            return
        self._killed.set()
        try:
            self.executor.delete(self.name)
            _append(self.log_file, f"deleted Job {self.name} (propagationPolicy Foreground)")
        except Exception as error:  # noqa: BLE001 - the run is failed either way
            log.warning("could not delete Job %s: %s", self.name, error)
        if not self._done.wait(10.0):
            self._finish(KILLED, None)

    def _finish(self, code: int, reason: str | None) -> None:
        if self._done.is_set():
            return
        self._code = code
        if reason and not self._killed.is_set():
            self.failure_reason = reason
            _append(self.log_file, f"Job {self.name} failed: {reason}")
            if self.executor.on_failure:
                try:
                    self.executor.on_failure(self.run_id, reason)
                except Exception:
                    log.exception("reporting the failure of %s", self.name)
        self._done.set()

    def _settle(self, event_type: str, job: Any) -> bool:
        """Look at one watch event; True once the Job has finished (or is gone)."""
        if event_type == "DELETED":
            self._finish(KILLED, None if self._killed.is_set() else f"Job {self.name} was deleted outside the trainer")
            return True
        conditions = {c.type: c for c in (job.status.conditions or []) if c.status == "True"} if job.status else {}
        if "Complete" in conditions:
            _append(self.log_file, f"Job {self.name} complete")
            self._finish(0, None)
            return True
        if "Failed" in conditions:
            condition = conditions["Failed"]
            found = self.executor.pod_failure(self.run_id)
            if condition.reason == "DeadlineExceeded":
                reason = (f"DeadlineExceeded: the Job ran longer than its deadline "
                          f"(activeDeadlineSeconds={self.executor.deadline_s})")
                self._finish(found[0] if found else 1, reason)
            else:
                self._finish(found[0] if found else 1, found[1] if found else
                             f"Job {self.name} failed: {condition.reason}: {condition.message or ''}".rstrip(": "))
            return True
        return False

    def _check_pod(self) -> bool:
        """A pod that cannot start (image pull, config) never fails its Job: fail the run and delete the Job."""
        found = self.executor.pod_failure(self.run_id)
        if found and not found[1].startswith(("image pull error", "cannot start")):
            return False  # a terminated container: the Job's own Failed condition follows
        if found:
            try:
                self.executor.delete(self.name)
            finally:
                self._finish(found[0], found[1])
            return True
        return False

    def _follow(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        batch, version, failing_since = self.executor.batch(), None, None
        while not self._done.is_set():
            try:
                w = watch.Watch()
                kwargs: dict[str, Any] = {"field_selector": f"metadata.name={self.name}",
                                          "timeout_seconds": self.executor.watch_s}
                if version:
                    kwargs["resource_version"] = version
                seen = False
                for event in w.stream(batch.list_namespaced_job, self.executor.namespace, **kwargs):
                    seen = True
                    if self._settle(event["type"], event["object"]):
                        w.stop()
                        return
                    # only once settled: an event whose handling failed is seen again
                    version = event["object"].metadata.resource_version or version
                if not seen and not version:  # a watch from now lists what exists: nothing
                    self._finish(KILLED, None if self._killed.is_set() else f"Job {self.name} no longer exists")
                    return
                if not self._killed.is_set() and self._check_pod():
                    return
                failing_since = None
            except ApiException as error:
                if error.status == 410:  # the resourceVersion is too old: watch from now
                    version = None
                    continue
                failing_since = self._api_trouble(error, failing_since)
            except Exception as error:  # noqa: BLE001 - the API server restarts, the network blips
                failing_since = self._api_trouble(error, failing_since)

    def _api_trouble(self, error: Exception, since: float | None) -> float:
        now = time.monotonic()
        since = since or now
        log.warning("watching Job %s: %s: %s", self.name, type(error).__name__, error)
        if now - since > self.executor.api_patience_s:
            try:
                self.executor.delete(self.name)
            except Exception as gone:  # noqa: BLE001 - the API is what is missing
                log.warning("could not delete Job %s: %s", self.name, gone)
            self._finish(1, f"lost the Kubernetes API for {now - since:.0f} s watching Job {self.name}: {error}")
        else:
            self._done.wait(min(5.0, 0.5 + (now - since)))
        return since
