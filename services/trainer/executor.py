"""Where a run's job process runs. Local: a child process of the service, logs to
a file. Kubernetes: a Job per run; here it renders the manifest (dry run) for a
platform team to apply or wire to the API."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    def submit(self, spec: JobSpec) -> ProcessHandle:
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        with open(spec.log_file, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.trainer.run_job", str(spec.job_file)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd(),
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        return ProcessHandle(process)


# What the trainer Deployment mounts (deploy/k8s/base/trainer.yaml): a Job is the same
# Kafka client, with the same volumes.
KAFKA_USER_SECRET = "rlhf-loop-trainer"
KAFKA_CA_SECRET = "rlhf-cluster-ca-cert"
KAFKA_CA_DIR = "/etc/rlhf-loop/kafka-ca"


class KubernetesJobExecutor:
    """Renders a batch/v1 Job per run. `dry_run` (the only mode built here) writes the
    manifest next to the job file and refuses to start it, so the run fails with a
    reason that says where the manifest is."""

    def __init__(self, image: str, namespace: str, dry_run: bool = True, gpu: bool = False) -> None:
        self.image, self.namespace, self.dry_run, self.gpu = image, namespace, dry_run, gpu

    def render(self, spec: JobSpec) -> dict[str, Any]:
        payload = json.loads(spec.job_file.read_text())
        resources: dict[str, Any] = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}
        if self.gpu:
            resources["limits"]["nvidia.com/gpu"] = 1
        name = f"rlhf-train-{spec.run_id[:8]}"
        data_dir = payload["settings"]["data_dir"]
        return {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/name": "rlhf-trainer-job", "rlhf/run-id": spec.run_id}},
            "spec": {
                "backoffLimit": 0,  # a failed run is reported failed, never retried half-way
                "ttlSecondsAfterFinished": 86400,
                "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "train", "image": self.image,
                        "command": ["python", "-m", "services.trainer.run_job", "/job/job.json"],
                        # the trainer Deployment's own Kafka user and CA (deploy/k8s/base/kafka-users.yaml)
                        "env": [{"name": "RLHF_KAFKA__SASL_PASSWORD",
                                 "valueFrom": {"secretKeyRef": {"name": KAFKA_USER_SECRET, "key": "password"}}},
                                {"name": "HF_HUB_OFFLINE", "value": "1"}],
                        "resources": resources,
                        "volumeMounts": [{"name": "job", "mountPath": "/job"},
                                         {"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True},
                                         {"name": "data", "mountPath": data_dir},
                                         {"name": "registry", "mountPath": f"{data_dir}/registry"}],
                    }],
                    "volumes": [{"name": "job", "configMap": {"name": f"{name}-spec"}},
                                {"name": "kafka-ca", "secret": {"secretName": KAFKA_CA_SECRET,
                                                                "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                                {"name": "data", "persistentVolumeClaim": {"claimName": "rlhf-trainer-data"}},
                                {"name": "registry", "persistentVolumeClaim": {"claimName": "rlhf-registry"}}],
                }},
            },
        }

    def submit(self, spec: JobSpec) -> JobHandle:
        manifest_file = spec.job_file.with_name("job.k8s.json")
        manifest_file.write_text(json.dumps(self.render(spec), indent=2))
        if self.dry_run:
            raise NotImplementedError(f"kubernetes executor is dry-run only: manifest at {manifest_file}")
        raise NotImplementedError("submitting to the Kubernetes API is not built yet")
