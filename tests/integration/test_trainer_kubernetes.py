"""executor=kubernetes end to end: the trainer service (embedded broker, SQLite, the
HTTP API) submits each run as a batch/v1 Job to the Kubernetes API double
(tests/helpers/k8s_api_double.py: the real REST shapes, every body validated against
the Kubernetes 1.37 schema), found the way production finds a cluster outside one
($KUBECONFIG). The double's kubelet really runs the pod's command
(`python -m services.trainer.run_job JOB_FILE`, tiny models on the CPU) with the data
and registry claims at their host paths, so a succeeded Job means a version really
published into the registry; OOMKilled and a service shutdown are driven through it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.trainer.executor import job_name
from services.trainer.service import run_service
from services.trainer.store import PreferenceStore
from shared.bus import EventProducer
from shared.contracts import ModelUpdate, TrainingRunStatus
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.conftest import read_topic, wait_for
from tests.helpers.k8s_api_double import KubeApiDouble
from tests.trainer_support import make_preference, trainer_settings
from tests.trainer_support import loop_trainer_topics, own_broker_kafka  # noqa: F401 (fixtures: kafka, trainer_topics)

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:var\\(\\):UserWarning")]
NS = "rlhf-loop"


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeApiDouble]:
    double = KubeApiDouble(secrets={"rlhf-loop-trainer": {"password": "unused-on-plaintext"}},
                           volumes={"rlhf-trainer-data": tmp_path, "rlhf-registry": tmp_path / "registry"})
    with double:
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # outside a cluster: the kubeconfig
        monkeypatch.setenv("KUBECONFIG", str(double.write_kubeconfig(tmp_path.parent / f"{tmp_path.name}.kubeconfig")))
        yield double


def statuses(kafka: KafkaSettings, topic: Topic, expected: int = 1, timeout_s: float = 2) -> list[TrainingRunStatus]:
    return [TrainingRunStatus.model_validate_json(r.value) for r in read_topic(kafka, topic.name, expected, timeout_s)]


def start_trainer(tmp_path: Path, kafka: KafkaSettings, producer: EventProducer, trainer_topics: dict[str, Topic],
                  models: tuple[Path, Path] | None, preferences: int, **options: Any) -> tuple[threading.Event, threading.Thread]:
    settings = trainer_settings(tmp_path, kafka, models, threshold=preferences,
                                group_id=f"trainer-{tmp_path.name[-8:]}", min_interval_s=3600,
                                executor="kubernetes", kubernetes_namespace=NS, kubernetes_image="rlhf-loop:test",
                                **options)
    stop = threading.Event()
    thread = threading.Thread(target=run_service, args=(settings, stop), kwargs={"registry": CollectorRegistry()},
                              daemon=True)
    thread.start()
    for i in range(preferences):
        producer.send(trainer_topics["preferences"], make_preference(i))
    producer.flush()
    return stop, thread


def test_a_succeeded_job_publishes_its_version(kafka: KafkaSettings, producer: EventProducer, api: KubeApiDouble,
                                              trainer_topics: dict[str, Topic], tmp_path: Path,
                                              tiny_models: tuple[Path, Path]) -> None:
    stop, thread = start_trainer(tmp_path, kafka, producer, trainer_topics, tiny_models, 24)
    try:
        assert wait_for(lambda: any(e.is_terminal for e in statuses(kafka, trainer_topics["runs"])), timeout_s=150,
                        interval_s=0.5)
        events = statuses(kafka, trainer_topics["runs"])
        run_id = events[0].run_id
        logs = "".join(p.read_text()[-3000:] for p in api.pod_logs.values())
        assert events[-1].state == "succeeded", logs
        [body] = api.created
        assert body["metadata"]["name"] == job_name(run_id) and body["metadata"]["labels"]["rlhf/run-id"] == run_id
        assert [s for e in events if (s := e.stage) and e.state == "stage_succeeded"][-1] == "publish"
        assert (tmp_path / "registry" / "policy" / "policy-v0001" / "adapter_model.safetensors").is_file()
        updates = [ModelUpdate.model_validate_json(r.value) for r in read_topic(kafka, trainer_topics["updates"].name, 1)]
        assert updates[0].action == "published" and updates[0].run_id == run_id
        assert api.deletions == [] and api.invalid == []  # finished Jobs are left to ttlSecondsAfterFinished
        store = PreferenceStore(tmp_path / "trainer" / "store.sqlite")
        # the pod reported `succeeded` itself; the lock goes when the watch sees the Job complete
        assert wait_for(lambda: store.lock_holder() is None, timeout_s=20)
        assert store.get_run(run_id).state == "succeeded"
        store.close()
    finally:
        stop.set()
        thread.join(30)


def test_an_oomkilled_pod_fails_the_run_with_that_reason(kafka: KafkaSettings, producer: EventProducer,
                                                        api: KubeApiDouble, trainer_topics: dict[str, Topic],
                                                        tmp_path: Path) -> None:
    api.kubelet = "oom"
    stop, thread = start_trainer(tmp_path, kafka, producer, trainer_topics, None, 6, kubernetes_memory_limit="12Gi")
    try:
        assert wait_for(lambda: any(e.is_terminal for e in statuses(kafka, trainer_topics["runs"])), timeout_s=60,
                        interval_s=0.3)
        events = statuses(kafka, trainer_topics["runs"], 2)
        assert [e.state for e in events] == ["queued", "failed"]
        assert events[-1].reason.startswith("OOMKilled: pod rlhf-train-") and "(12Gi)" in events[-1].reason
        assert "exit code 137" in events[-1].reason
        store = PreferenceStore(tmp_path / "trainer" / "store.sqlite")
        run = store.get_run(events[0].run_id)
        assert run.state == "failed" and run.reason == events[-1].reason and store.lock_holder() is None
        store.close()
        assert api.invalid == []
    finally:
        stop.set()
        thread.join(30)


def test_stopping_the_service_deletes_the_job(kafka: KafkaSettings, producer: EventProducer, api: KubeApiDouble,
                                              trainer_topics: dict[str, Topic], tmp_path: Path) -> None:
    api.kubelet = "hang"
    stop, thread = start_trainer(tmp_path, kafka, producer, trainer_topics, None, 6)
    store = PreferenceStore(tmp_path / "trainer" / "store.sqlite")
    try:
        assert wait_for(lambda: bool(api.created) and bool(api.pods), timeout_s=60)
        holder = store.lock_holder()
        assert holder is not None  # the run lock is held while the Job runs, and heartbeated
        assert wait_for(lambda: (h := store.lock_holder()) is not None and h.heartbeat_at > holder.heartbeat_at,
                        timeout_s=10)
        run_id = holder.run_id
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert api.deletions == [{"namespace": NS, "name": job_name(run_id), "propagationPolicy": "Foreground"}]
    assert api.jobs == {} and api.pods == {} and api.invalid == []
    run = store.get_run(run_id)
    assert run.state == "failed" and run.reason.startswith("trainer shut down mid-run"), run.reason
    assert store.lock_holder() is None
    store.close()
