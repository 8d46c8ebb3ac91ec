"""The trainer against real parts: the embedded broker, SQLite, real job processes
and tiny models trained on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shared.bus import EventProducer
from shared.contracts import ModelUpdate, TrainingRunStatus
from shared.settings import KafkaSettings
from shared.topics import Topic
from services.trainer.executor import JobSpec, LocalProcessExecutor, ProcessHandle
from services.trainer.handlers import make_store_handler
from services.trainer.jobs import TriggerJob
from services.trainer.metrics import TrainerMetrics
from services.trainer.pipeline import TrainingRun
from services.trainer.registry import ModelRegistry
from services.trainer.reporting import RunReporter
from services.trainer.runs import RunCoordinator, RunRejected
from services.trainer.service import run_service
from services.trainer.store import PreferenceStore
from tests.conftest import read_topic, wait_for
from tests.trainer_support import make_output, make_preference, trainer_settings
from tests.trainer_support import loop_trainer_topics, own_broker_kafka  # noqa: F401 (fixtures: kafka, trainer_topics)

# TRL passes `gradient_checkpointing=False` on to a deprecated transformers alias.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:var\\(\\):UserWarning")]


def events_of(kafka: KafkaSettings, topic: Topic, contract: type, expected: int, timeout_s: float = 10) -> list[Any]:
    return [contract.model_validate_json(r.value) for r in read_topic(kafka, topic.name, expected, timeout_s)]


def http(method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class SleepExecutor:
    """Real job processes that only sleep: trigger and lock behaviour without paying
    for training. (Their runs end 'failed': the job never reports success.)"""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.submitted: list[str] = []

    def submit(self, spec: JobSpec) -> ProcessHandle:
        self.submitted.append(spec.run_id)
        return ProcessHandle(subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({self.seconds})"]))


def make_coordinator(tmp_path: Path, kafka: KafkaSettings, executor: Any,
                     models: tuple[Path, Path] | None = None, **options: Any) -> RunCoordinator:
    settings = trainer_settings(tmp_path, kafka, models, **options)
    store = PreferenceStore(tmp_path / "trainer" / "store.sqlite")
    producer = EventProducer(kafka)
    reporter = RunReporter(store, lambda t, e: producer.publish(t, e))
    return RunCoordinator(settings, store, ModelRegistry(tmp_path / "registry"), reporter, executor,
                          TrainerMetrics(CollectorRegistry()), heartbeat_s=0.2)


def test_trainer_consumes_preferences_once_each(kafka: KafkaSettings, producer: EventProducer, start_loop,
                                                 group_id: str, trainer_topics: dict[str, Topic],
                                                 tmp_path: Path) -> None:
    store = PreferenceStore(tmp_path / "store.sqlite")
    metrics = TrainerMetrics(CollectorRegistry())
    prefs, outs = trainer_topics["preferences"], trainer_topics["outputs"]
    for i in range(5):
        producer.send(prefs, make_preference(i))
    producer.send(prefs, make_preference(2))  # redelivered by an upstream retry
    producer.send(outs, make_output(1))
    producer.send(outs, make_output(1))
    producer.flush()
    loop = start_loop([prefs, outs], group_id, make_store_handler(store, metrics))
    assert wait_for(lambda: loop.metric("rlhf_messages_consumed_total", topic=prefs.name, group=group_id) == 6
                    and loop.metric("rlhf_messages_consumed_total", topic=outs.name, group=group_id) == 2)
    loop.join()
    assert store.preference_count() == 5 and store.new_since_last_training() == 5
    assert len(store.prompts()) == 6  # 5 preference prompts + 1 captured output
    assert metrics.stored.labels("preference", "duplicate")._value.get() == 1


def test_trainer_trigger_fires_once_at_threshold_and_respects_interval_and_lock(
        kafka: KafkaSettings, trainer_topics: dict[str, Topic], tmp_path: Path) -> None:
    executor = SleepExecutor(seconds=1.5)
    coordinator = make_coordinator(tmp_path, kafka, executor, threshold=5, min_interval_s=100)
    store, now = coordinator.store, [1000.0]
    job = TriggerJob(store, coordinator, coordinator.settings.trainer, coordinator.metrics, clock=lambda: now[0])
    for i in range(4):
        store.add_preference(make_preference(i))
    assert job.check() is None  # 4 < 5
    store.add_preference(make_preference(4))
    store.add_preference(make_preference(4))  # a duplicate does not count
    run_id = job.check()
    assert run_id is not None
    assert job.check() is None  # the lock: one run at a time
    with pytest.raises(RunRejected, match="in progress"):
        coordinator.start_run("manual")
    assert coordinator.wait(run_id, 20) == "failed"  # the sleeping job never reports success
    now[0] = time.time() + 10  # 10 s after: inside the interval
    assert job.check() is None
    now[0] = time.time() + 200  # interval passed; the failed run used nothing up
    assert job.check() is not None
    assert len(executor.submitted) == 2
    states = [e.state for e in events_of(kafka, trainer_topics["runs"], TrainingRunStatus, 3)]
    assert states[:3] == ["queued", "failed", "queued"]
    coordinator.close()


def test_trainer_service_full_run_publishes_and_promotes(kafka: KafkaSettings, producer: EventProducer,
                                                         trainer_topics: dict[str, Topic], tmp_path: Path,
                                                         tiny_models: tuple[Path, Path]) -> None:
    """Preferences on the topic -> threshold trigger -> job process: RM -> PPO -> gates ->
    registry -> ModelUpdate events; the HTTP API refuses a second run meanwhile."""
    settings = trainer_settings(tmp_path, kafka, tiny_models, threshold=24,
                                group_id=f"trainer-{tmp_path.name[-8:]}", min_interval_s=3600)
    registry, stop, servers = CollectorRegistry(), threading.Event(), []
    thread = threading.Thread(target=run_service, args=(settings, stop),
                              kwargs={"registry": registry, "on_started": servers.append}, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: bool(servers), timeout_s=30)
        base = f"http://127.0.0.1:{servers[0].http_port}"
        token = (tmp_path / "trainer" / "api-token").read_text().strip()  # generated: no token was set
        assert http("POST", f"{base}/v1/runs")[0] == 401
        assert http("POST", f"{base}/v1/runs", token="wrong")[0] == 401
        assert http("GET", f"{base}/v1/runs")[0] == 401
        assert http("POST", f"{base}/v1/runs", token=token)[0] == 422  # nothing stored yet
        for i in range(24):
            producer.send(trainer_topics["preferences"], make_preference(i))
        producer.flush()
        statuses = lambda: events_of(kafka, trainer_topics["runs"], TrainingRunStatus, 1, 2)  # noqa: E731
        assert wait_for(lambda: any(e.state == "started" for e in statuses()), timeout_s=60)
        code, body = http("POST", f"{base}/v1/runs", {"reason": "again"}, token=token)
        assert code == 409 and "in progress" in body["detail"]
        assert wait_for(lambda: any(e.is_terminal for e in statuses()), timeout_s=90, interval_s=0.5)
        events = statuses()
        run_id = events[0].run_id
        log_file = tmp_path / "trainer" / "runs" / run_id / "run.log"
        assert events[-1].state == "succeeded", log_file.read_text()[-3000:]
        stages = [(e.state, e.stage) for e in events if e.stage]
        assert stages == [(s, st) for st in ("snapshot", "reward_model", "policy", "evaluate", "publish")
                          for s in ("stage_started", "stage_succeeded")]
        updates = events_of(kafka, trainer_topics["updates"], ModelUpdate, 2)
        assert [u.action for u in updates] == ["published", "promoted"]
        assert updates[0].model_version == "policy-v0001" and updates[0].gate_passed
        assert updates[0].reward_model_version == "rm-v0001" and updates[0].run_id == run_id
        policy_dir = tmp_path / "registry" / "policy" / "policy-v0001"
        assert (policy_dir / "adapter_model.safetensors").is_file()
        assert (tmp_path / "registry" / "reward" / "rm-v0001" / "reward_head.safetensors").is_file()
        manifest = json.loads((policy_dir / "manifest.json").read_text())
        assert manifest["preferences"]["preference_count"] == 24
        assert manifest["preferences"]["guideline_versions"] == ["g1"]
        assert manifest["reward_model_version"] == "rm-v0001" and manifest["parent_version"] is None
        assert manifest["gate"] == {"passed": True, "reasons": []}
        assert manifest["init"]["kind"] == "fresh" and manifest["lineage"] == []
        assert {"rm_accuracy", "win_rate", "p_value", "kl", "degenerate_rate"} <= set(manifest["metrics"])
        assert manifest["metrics"]["job_peak_rss_mb"] > 100  # the job loaded two models: its real peak
        assert manifest["evaluation"]["judge"] == "ensemble" and manifest["evaluation"]["prompts"] >= 1
        assert manifest["hyperparameters"]["lora_r"] == 8 and manifest["code_version"]
        assert json.loads((tmp_path / "registry" / "policy" / "promoted.json").read_text())["version"] == "policy-v0001"
        code, run = http("GET", f"{base}/v1/runs/{run_id}", token=token)
        assert code == 200 and run["state"] == "succeeded"
        assert wait_for(lambda: (registry.get_sample_value("rlhf_trainer_runs_total", {"outcome": "succeeded"}) or 0) == 1)
        assert registry.get_sample_value("rlhf_trainer_preferences_since_last_training") == 0
        assert registry.get_sample_value("rlhf_trainer_model_version_info",
                                         {"kind": "policy", "pointer": "promoted", "version": "policy-v0001"}) == 1
        assert http("GET", f"{base}/healthz")[0] == 200
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def _run_in_process(tmp_path: Path, kafka: KafkaSettings, models: tuple[Path, Path],
                    **options: Any) -> tuple[str, RunCoordinator]:
    coordinator = make_coordinator(tmp_path, kafka, SleepExecutor(0), models, **options)
    store = coordinator.store
    for i in range(24):
        store.add_preference(make_preference(i))
    run_id = f"run-{time.monotonic_ns()}"
    store.create_run(run_id, "test", store.max_seq(), 24)
    store.try_lock(run_id, 60)
    state = TrainingRun(run_id=run_id, watermark=store.max_seq(), options=coordinator.settings.trainer, store=store,
                        registry=coordinator.registry, reporter=coordinator.reporter).execute()
    store.release_lock(run_id)
    return state, coordinator


def test_trainer_failing_gate_publishes_candidate_without_promoting(
        kafka: KafkaSettings, trainer_topics: dict[str, Topic], tmp_path: Path,
        tiny_models: tuple[Path, Path]) -> None:
    gates = {"min_rm_accuracy": 0.0, "min_win_rate": 1.01, "max_degenerate_rate": 1.0, "alpha": 1.0,
             "max_kl": 1000.0, "eval_prompts": 4, "min_eval_prompts": 1}
    state, coordinator = _run_in_process(tmp_path, kafka, tiny_models, gates=gates)
    assert state == "gated"
    registry = coordinator.registry
    assert registry.versions("policy") == ["policy-v0001"] and registry.pointer("policy", "promoted") is None
    assert registry.manifest("policy", "policy-v0001")["gate"]["passed"] is False
    updates = events_of(kafka, trainer_topics["updates"], ModelUpdate, 1)
    assert [u.action for u in updates] == ["published"]
    assert not updates[0].gate_passed and "win_rate" in updates[0].gate_reasons[0]
    statuses = events_of(kafka, trainer_topics["runs"], TrainingRunStatus, 12)
    assert statuses[-1].state == "gated" and "win_rate" in (statuses[-1].reason or "")


def test_trainer_killed_job_leaves_no_half_model_and_is_failed(
        kafka: KafkaSettings, trainer_topics: dict[str, Topic], tmp_path: Path,
        tiny_models: tuple[Path, Path]) -> None:
    # a fine-tuned reward model for 500 epochs: long enough to be killed mid-training
    hyper = {"rm_mode": "finetune", "rm_epochs": 500, "max_length": 64, "rm_batch_size": 2}
    coordinator = make_coordinator(tmp_path, kafka, LocalProcessExecutor(), tiny_models, hyper=hyper)
    for i in range(24):
        coordinator.store.add_preference(make_preference(i))
    run_id = coordinator.start_run("test")
    staging = coordinator.registry.staging_root / f"{run_id}-reward"
    assert wait_for(lambda: staging.exists(), timeout_s=60), (tmp_path / "trainer" / "runs" / run_id / "run.log").read_text()
    handle = coordinator.handle(run_id)
    assert handle is not None
    os.kill(handle.pid, signal.SIGKILL)
    assert coordinator.wait(run_id, 20) == "failed"
    run = coordinator.store.get_run(run_id)
    assert run is not None and "signal 9" in (run.reason or "")
    assert coordinator.registry.versions("reward") == [] and coordinator.registry.pointer("reward", "latest") is None
    assert coordinator.active_run() is None
    coordinator.recover()  # what a restart does
    assert not staging.exists()
    statuses = events_of(kafka, trainer_topics["runs"], TrainingRunStatus, 5)
    assert statuses[-1].state == "failed" and statuses[-1].run_id == run_id


def test_trainer_restart_fails_the_run_of_a_dead_service(kafka: KafkaSettings, trainer_topics: dict[str, Topic],
                                                        tmp_path: Path) -> None:
    coordinator = make_coordinator(tmp_path, kafka, SleepExecutor(0))
    store = coordinator.store
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.create_run("orphan", "test", 0, 0)
    store.set_run_state("orphan", "started")
    store.try_lock("orphan", 60, pid=dead.pid)  # held by a service that died
    half = coordinator.registry.staging("orphan", "policy")
    (half / "adapter_model.safetensors").write_bytes(b"half")
    restarted = make_coordinator(tmp_path, kafka, SleepExecutor(0))
    assert restarted.recover() == ["orphan"]
    run = restarted.store.get_run("orphan")
    assert run is not None and run.state == "failed" and "restarted" in (run.reason or "")
    assert not half.exists() and restarted.active_run() is None
    assert events_of(kafka, trainer_topics["runs"], TrainingRunStatus, 1)[0].state == "failed"


def test_run_counts_survive_a_trainer_restart(kafka: KafkaSettings, trainer_topics: dict[str, Topic],
                                             tmp_path: Path) -> None:
    """The status line reads `rlhf_trainer_runs_recorded`: a restarted trainer (a new
    coordinator on the same store) still reports the runs before it."""
    first = make_coordinator(tmp_path, kafka, SleepExecutor(seconds=0.2))
    for i in range(6):
        first.store.add_preference(make_preference(i))
    assert first.wait(first.start_run("manual"), 20) == "failed"
    gauge = lambda c, state: c.metrics.runs_recorded.labels(state)._value.get()  # noqa: E731
    assert gauge(first, "failed") == 1
    first.close()
    restarted = make_coordinator(tmp_path, kafka, SleepExecutor(seconds=0.2))
    restarted.recover()
    assert gauge(restarted, "failed") == 1 and gauge(restarted, "succeeded") == 0
    assert restarted.metrics.runs.labels("failed")._value.get() == 0  # the process counter starts afresh
