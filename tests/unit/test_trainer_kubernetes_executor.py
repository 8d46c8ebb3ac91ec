"""KubernetesJobExecutor against the API double (tests/helpers/k8s_api_double.py: the
real REST shapes, every body validated against the Kubernetes 1.37 schema): a Job per
run, watched to its end, its pod's termination mapped to the run's reason, deleted
with propagationPolicy Foreground. No broker, no model: the pod's work is stood in for
by the double's kubelet (the end-to-end run with real training:
tests/integration/test_trainer_kubernetes.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.trainer.executor import KILLED, JobSpec, KubernetesJobExecutor, job_name
from services.trainer.run_job import job_payload
from services.trainer.settings import TrainerSettings
from tests.helpers.k8s_api_double import KubeApiDouble

NS = "rlhf-loop"
RUN = "0b9f3c3e-6a1e-4c55-9d0c-3f1f2b7f2a10"


@pytest.fixture
def spec(tmp_path: Path) -> JobSpec:
    run_dir = tmp_path / "trainer" / "runs" / RUN
    run_dir.mkdir(parents=True)
    job_file = run_dir / "job.json"
    job_file.write_text(json.dumps(job_payload(RUN, 3, TrainerSettings(data_dir=str(tmp_path)))))
    return JobSpec(RUN, job_file, run_dir / "run.log")


@pytest.fixture
def double() -> Iterator[KubeApiDouble]:
    with KubeApiDouble(start_delay_s=0.1) as api:
        yield api


def executor(double: KubeApiDouble, failures: list[tuple[str, str]] | None = None, **kwargs) -> KubernetesJobExecutor:  # type: ignore[no-untyped-def]
    return KubernetesJobExecutor("ghcr.io/rlhf-loop/rlhf-loop:test", NS, api_client=double.configuration(),
                                 watch_s=1, on_failure=(lambda r, why: failures.append((r, why))) if failures is not None
                                 else None, **kwargs)


@pytest.mark.parametrize("kubelet, code, reason", [
    ("oom", 137, "OOMKilled: pod rlhf-train-0b9f3c3e"),
    ("evicted", 1, "evicted: The node was low on resource: ephemeral-storage"),
    ("image_pull", 1, "image pull error: ErrImagePull: rpc error"),
    ("deadline", 1, "DeadlineExceeded: the Job ran longer than its deadline (activeDeadlineSeconds=600)"),
])
def test_a_failed_pod_fails_the_run_with_its_reason(double: KubeApiDouble, spec: JobSpec, kubelet: str, code: int,
                                                   reason: str) -> None:
    double.kubelet = kubelet
    failures: list[tuple[str, str]] = []
    handle = executor(double, failures, deadline_s=600).submit(spec)
    assert handle.wait(20) == code
    assert len(failures) == 1 and failures[0][0] == RUN and reason in failures[0][1], failures
    assert handle.failure_reason == failures[0][1]
    assert reason in spec.log_file.read_text()
    # a pod that can never start never fails its Job: the handle deletes it
    expected = [{"namespace": NS, "name": job_name(RUN), "propagationPolicy": "Foreground"}]
    assert double.deletions == (expected if kubelet == "image_pull" else [])
    assert double.invalid == []


def test_the_job_is_labelled_watched_to_success_and_valid(double: KubeApiDouble, spec: JobSpec) -> None:
    double.kubelet, double.volumes = "oom", {}
    failures: list[tuple[str, str]] = []
    ex = executor(double, failures, gpus=1, node_selector={"nvidia.com/gpu.present": "true"}, ttl_s=3600,
                  tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    double.kubelet = "hang"
    handle = ex.submit(spec)
    assert handle.wait(0.5) is None and handle.poll() is None and handle.pid == 0
    [body] = double.created
    kubernetes_validate.validate(body, "1.37.0", strict=True)
    assert body["metadata"]["labels"]["rlhf/run-id"] == RUN and body["metadata"]["namespace"] == NS
    job = body["spec"]
    pod = job["template"]["spec"]
    [container] = pod["containers"]
    assert job["backoffLimit"] == 0 and job["ttlSecondsAfterFinished"] == 3600 and "activeDeadlineSeconds" not in job
    assert job["template"]["metadata"]["labels"]["rlhf/run-id"] == RUN
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" == container["resources"]["requests"]["nvidia.com/gpu"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["automountServiceAccountToken"] is False
    assert container["command"][-1] == str(spec.job_file)  # read from the data volume
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_dir = str(spec.job_file.parents[3])
    assert claims == {"data": "rlhf-trainer-data", "registry": "rlhf-registry"}
    assert mounts["data"] == data_dir and mounts["registry"] == f"{data_dir}/registry"
    # a Job that succeeds: wait() says 0 and nothing is reported failed
    name = body["metadata"]["name"]
    pod_name = next(iter(double.pods))[1]
    double._terminated(NS, name, pod_name, container, 0, "Completed")
    assert handle.wait(10) == 0 and failures == [] and double.deletions == []
    assert ("GET", f"/apis/batch/v1/namespaces/{NS}/jobs") in double.requests  # watched, not polled by name


def test_kill_deletes_the_job_in_the_foreground_and_reports_nothing(double: KubeApiDouble, spec: JobSpec) -> None:
    double.kubelet = "hang"
    failures: list[tuple[str, str]] = []
    handle = executor(double, failures).submit(spec)
    assert handle.wait(0.5) is None
    handle.kill()
    assert handle.poll() == KILLED and failures == []
    assert double.deletions == [{"namespace": NS, "name": job_name(RUN), "propagationPolicy": "Foreground"}]
    assert double.jobs == {} and double.pods == {} and double.invalid == []


def test_a_job_deleted_by_someone_else_fails_the_run(double: KubeApiDouble, spec: JobSpec) -> None:
    double.kubelet = "hang"
    failures: list[tuple[str, str]] = []
    handle = executor(double, failures).submit(spec)
    assert handle.wait(0.5) is None
    double.delete_job(NS, job_name(RUN), {"propagationPolicy": "Background"}, {})
    assert handle.wait(10) == KILLED and "deleted outside the trainer" in failures[0][1]


def test_a_job_file_off_the_data_volume_is_refused(double: KubeApiDouble, tmp_path: Path) -> None:
    job_file = tmp_path / "elsewhere.json"
    job_file.write_text(json.dumps({"settings": {"data_dir": str(tmp_path / "data")}}))
    with pytest.raises(ValueError, match="not on the data volume"):
        executor(double).submit(JobSpec(RUN, job_file, tmp_path / "log"))
    assert double.created == []


def test_production_config_falls_back_to_a_kubeconfig(double: KubeApiDouble, spec: JobSpec, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod: no in-cluster config
    monkeypatch.setenv("KUBECONFIG", str(double.write_kubeconfig(tmp_path / "kubeconfig")))
    double.kubelet = "hang"
    handle = KubernetesJobExecutor("img", NS, watch_s=1).submit(spec)
    handle.kill()
    assert [d["name"] for d in double.deletions] == [job_name(RUN)]


def test_the_shipped_role_allows_every_call_the_executor_makes(double: KubeApiDouble, spec: JobSpec) -> None:
    """deploy/k8s/base/trainer-rbac.yaml against what the executor really sends (test_deploy.py
    checks the Role allows no more)."""
    rbac = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "trainer-rbac.yaml"
    [role] = [d for d in yaml.safe_load_all(rbac.read_text()) if d["kind"] == "Role"]
    allowed = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    double.kubelet = "oom"  # create, watch, list pods
    assert executor(double).submit(spec).wait(20) == 137
    double.kubelet = "hang"
    handle = executor(double).submit(JobSpec("second-run", spec.job_file, spec.log_file))
    assert handle.wait(0.5) is None
    handle.kill()  # delete
    assert double.verbs == {("batch", "jobs", "create"), ("batch", "jobs", "watch"), ("", "pods", "list"),
                            ("batch", "jobs", "delete")}
    assert double.verbs <= allowed


def test_the_settings_shape_the_job(spec: JobSpec, tmp_path: Path) -> None:
    from services.trainer.service import make_executor

    settings = TrainerSettings(data_dir=str(tmp_path), trainer={
        "executor": "kubernetes", "kubernetes_namespace": NS, "kubernetes_image": "img:2", "kubernetes_gpus": 2,
        "kubernetes_memory_limit": "40Gi", "kubernetes_node_selector": {"pool": "a100"}, "kubernetes_ttl_s": 60,
        "kubernetes_tolerations": [{"key": "gpu", "operator": "Exists"}], "kubernetes_deadline_s": 0})
    ex = make_executor(settings)
    assert isinstance(ex, KubernetesJobExecutor)
    body = ex.render(spec)
    kubernetes_validate.validate(body, "1.37.0", strict=True)
    pod = body["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert body["metadata"]["namespace"] == NS and container["image"] == "img:2"
    assert container["resources"]["limits"] == {"memory": "40Gi", "nvidia.com/gpu": "2"}
    assert pod["nodeSelector"] == {"pool": "a100"} and pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert body["spec"]["ttlSecondsAfterFinished"] == 60 and "activeDeadlineSeconds" not in body["spec"]
    # the data volume is ReadWriteOnce: the pod goes to the trainer's node
    [term] = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {"labelSelector": {"matchLabels": {"app.kubernetes.io/name": "trainer"}},
                    "topologyKey": "kubernetes.io/hostname"}


def test_a_multi_gpu_pod_runs_the_job_under_accelerate(spec: JobSpec, tmp_path: Path) -> None:
    from services.trainer.service import make_executor

    settings = TrainerSettings(data_dir=str(tmp_path), trainer={
        "executor": "kubernetes", "kubernetes_gpus": 4, "num_processes": 4})
    body = make_executor(settings).render(spec)
    kubernetes_validate.validate(body, "1.37.0", strict=True)
    [container] = body["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "accelerate.commands.launch"]
    assert command[-3:] == ["-m", "services.trainer.run_job", str(spec.job_file)]
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert flags["--num_processes"] == "4" and flags["--num_machines"] == "1" and "--multi_gpu" in command
    assert "completionMode" not in body["spec"]  # one node: a plain Job, on the trainer's node
    assert "podAffinity" in body["spec"]["template"]["spec"]["affinity"]


def test_more_than_one_node_is_an_indexed_job_with_the_rendezvous_wired(spec: JobSpec, tmp_path: Path) -> None:
    from services.trainer.service import make_executor

    config = tmp_path / "fsdp.yaml"
    settings = TrainerSettings(data_dir=str(tmp_path), trainer={
        "executor": "kubernetes", "kubernetes_namespace": NS, "kubernetes_gpus": 2, "num_processes": 2,
        "num_nodes": 3, "accelerate_config_file": str(config), "rendezvous_port": 29600})
    body = make_executor(settings).render(spec)
    kubernetes_validate.validate(body, "1.37.0", strict=True)
    name = body["metadata"]["name"]
    assert len(name) <= 56 and len(f"{name}-2") <= 63  # pod hostnames <job>-<index> stay DNS labels
    assert body["spec"]["completionMode"] == "Indexed"
    assert body["spec"]["completions"] == body["spec"]["parallelism"] == 3 and body["spec"]["backoffLimit"] == 0
    pod = body["spec"]["template"]["spec"]
    assert pod["subdomain"] == "rlhf-trainer-jobs" and "affinity" not in pod
    [container] = pod["containers"]
    assert container["ports"] == [{"name": "rendezvous", "containerPort": 29600}]
    command = container["command"]
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert flags == {**flags, "--config_file": str(config), "--num_processes": "6", "--num_machines": "3",
                     "--machine_rank": "$(JOB_COMPLETION_INDEX)", "--main_process_ip": f"{name}-0.rlhf-trainer-jobs",
                     "--main_process_port": "29600"}
    assert "--multi_gpu" not in command  # the user's accelerate config decides (FSDP here)
    # the shipped headless Service selects these pods and publishes them before readiness
    docs = list(yaml.safe_load_all((Path(__file__).parents[2] / "deploy/k8s/base/trainer-jobs.yaml").read_text()))
    [service] = [d for d in docs if d["kind"] == "Service"]
    assert service["metadata"]["name"] == pod["subdomain"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert all(body["spec"]["template"]["metadata"]["labels"][k] == v for k, v in service["spec"]["selector"].items())


def test_more_than_one_node_needs_the_kubernetes_executor(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_nodes=2 needs executor=kubernetes"):
        TrainerSettings(data_dir=str(tmp_path), trainer={"num_nodes": 2})
