"""A run on two CPU processes (gloo) under `accelerate launch`, through the trainer's
own coordinator and local executor, against the real broker and tiny models (issue
15): it publishes exactly one complete version of each model, and the reward model's held-out accuracy is that of the same run on one process,
within noise."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.trainer.executor import LocalProcessExecutor
from services.trainer.metrics import TrainerMetrics
from services.trainer.registry import ModelRegistry
from services.trainer.reporting import RunReporter
from services.trainer.runs import RunCoordinator
from services.trainer.store import PreferenceStore
from shared.bus import EventProducer
from shared.settings import KafkaSettings
from tests.trainer_support import make_preference, trainer_settings

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::FutureWarning")]

# finetune: TRL's RewardTrainer itself runs data-parallel (head mode only shards the features)
HYPER = {"rm_mode": "finetune", "rm_epochs": 2, "rm_batch_size": 4, "max_length": 64, "ppo_episodes": 16,
         "ppo_epochs": 1, "ppo_mini_batches": 1, "response_length": 8, "policy_batch_size": 4,
         "rm_learning_rate": 1e-3, "policy_learning_rate": 1e-3, "lora_r": 8, "lora_alpha": 16}
PAIRS = 60


def noisy_preference(i: int):  # type: ignore[no-untyped-def]
    """One pair in four is ranked against the pattern: held-out accuracy is well below
    1, so the two runs' accuracies can differ and the comparison means something."""
    pref = make_preference(i)
    return pref.model_copy(update={"chosen": pref.rejected, "rejected": pref.chosen}) if i % 4 == 0 else pref


def run_once(data_dir: Path, kafka: KafkaSettings, models: tuple[Path, Path], processes: int) -> dict[str, Any]:
    settings = trainer_settings(data_dir, kafka, models, hyper=HYPER, num_processes=processes, torch_threads=1)
    store = PreferenceStore(data_dir / "trainer" / "store.sqlite")
    producer = EventProducer(kafka)
    registry = ModelRegistry(data_dir / "registry")
    reporter = RunReporter(store, lambda topic, event: producer.publish(topic, event))
    coordinator = RunCoordinator(settings, store, registry, reporter,
                                 LocalProcessExecutor.from_options(settings.trainer),
                                 TrainerMetrics(CollectorRegistry()), heartbeat_s=0.2)
    try:
        for i in range(PAIRS):
            store.add_preference(noisy_preference(i))
        run_id = coordinator.start_run("test")
        state = coordinator.wait(run_id, 600)
        log = (data_dir / "trainer" / "runs" / run_id / "run.log").read_text()
        assert state == "succeeded", log
        return {"log": log, "run_id": run_id, "reward": registry.versions("reward"),
                "policy": registry.versions("policy"), "rm": registry.manifest("reward", "rm-v0001"),
                "manifest": registry.manifest("policy", "policy-v0001")}
    finally:
        coordinator.close()
        producer.close()
        store.close()


def test_two_gloo_processes_publish_one_version_as_good_as_one_process(
        kafka: KafkaSettings, tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    two = run_once(tmp_path / "two", kafka, tiny_models, processes=2)
    assert "rank 1 of 2" in two["log"] and "rank 0 of 2" in two["log"]
    assert two["reward"] == ["rm-v0001"] and two["policy"] == ["policy-v0001"]  # exactly one version each
    policy_dir = tmp_path / "two" / "registry" / "policy" / "policy-v0001"
    assert (policy_dir / "adapter_model.safetensors").is_file() and (policy_dir / "adapter_config.json").is_file()
    assert two["manifest"]["metrics"]["training_processes"] == 2
    assert not list((tmp_path / "two" / "registry").glob(".staging/*"))  # nothing half-written left behind

    one = run_once(tmp_path / "one", kafka, tiny_models, processes=1)
    assert "rank 0 of 1" in one["log"] and "training_processes" not in one["manifest"]["metrics"]
    acc_two, acc_one = two["rm"]["metrics"]["rm_accuracy"], one["rm"]["metrics"]["rm_accuracy"]
    n = two["rm"]["metrics"]["rm_heldout_pairs"]
    assert n == one["rm"]["metrics"]["rm_heldout_pairs"] and n >= 8
    noise = 2 * math.sqrt(max(acc_one * (1 - acc_one), 0.1) / n)  # two binomial standard errors
    assert abs(acc_two - acc_one) <= noise, (acc_two, acc_one, n)
    print(json.dumps({"rm_accuracy_2proc": acc_two, "rm_accuracy_1proc": acc_one, "heldout": n}))


def test_killing_the_launcher_takes_every_rank_with_it(kafka: KafkaSettings, tmp_path: Path,
                                                       tiny_models: tuple[Path, Path]) -> None:
    import os
    import signal

    import psutil

    from tests.conftest import wait_for

    settings = trainer_settings(tmp_path, kafka, tiny_models, num_processes=2, torch_threads=1,
                                hyper={**HYPER, "rm_epochs": 500, "rm_batch_size": 2})  # long enough to be killed
    store = PreferenceStore(tmp_path / "trainer" / "store.sqlite")
    producer = EventProducer(kafka)
    registry = ModelRegistry(tmp_path / "registry")
    coordinator = RunCoordinator(settings, store, registry,
                                 RunReporter(store, lambda topic, event: producer.publish(topic, event)),
                                 LocalProcessExecutor.from_options(settings.trainer),
                                 TrainerMetrics(CollectorRegistry()), heartbeat_s=0.2)
    try:
        for i in range(24):
            store.add_preference(make_preference(i))
        run_id = coordinator.start_run("test")
        log = tmp_path / "trainer" / "runs" / run_id / "run.log"
        assert wait_for(lambda: log.is_file() and "rank 1 of 2" in log.read_text(), timeout_s=120), log.read_text()
        handle = coordinator.handle(run_id)
        assert handle is not None
        launcher = psutil.Process(handle.pid)
        children = [(p, _command_line(p)) for p in launcher.children(recursive=True)]
        ranks = [p for p, command in children if "services.trainer.run_job" in command]
        assert len(ranks) == 2, [command for _, command in children]
        os.kill(handle.pid, signal.SIGKILL)
        assert coordinator.wait(run_id, 30) == "failed"
        _, alive = psutil.wait_procs(ranks, timeout=15)
        for orphan in alive:
            orphan.kill()
        assert alive == [], "a rank outlived its launcher"
        assert registry.versions("reward") == [] and registry.versions("policy") == []
    finally:
        coordinator.close()
        producer.close()
        store.close()


def _command_line(process) -> str:
    """A child's command line, or "" for one that exited meanwhile.

    The launcher's tree also holds short-lived helpers (a zombie between its
    exit and its parent's wait has no command line to read); only a rank that
    is missing from the count should fail the test.
    """
    import psutil

    try:
        return " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return ""
