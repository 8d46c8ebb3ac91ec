"""The trainer's canary judge against real parts: the embedded broker, the registry on
disk, the trainer service itself. Blind comparisons go in on rlhf.comparisons; what
comes out is the decision: `graduated` or `rolled_back` with its numbers, the
manifest's record, the promoted pointer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.bus import EventProducer
from shared.contracts import ModelUpdate, model_update_id_for
from shared.settings import KafkaSettings
from shared.topics import Topic
from services.status import Samples, status_line
from services.trainer.registry import ModelRegistry
from services.trainer.service import run_service
from tests import factories
from tests.conftest import read_topic, wait_for
from tests.trainer_support import trainer_settings
from tests.trainer_support import loop_trainer_topics, own_broker_kafka  # noqa: F401 (fixtures: kafka, trainer_topics)

pytestmark = pytest.mark.integration

CANARY, STABLE = "policy-v0002", "policy-v0001"


def publish_policy(registry: ModelRegistry, parent: str | None) -> str:
    """A complete policy version (the judge never loads it: a file stands for the adapter)."""
    staged = registry.staging(f"run-{len(registry.versions('policy'))}", "policy")
    (staged / "adapter_config.json").write_text("{}")
    version = registry.publish("policy", staged, {"run_id": "r", "parent_version": parent, "base_model": "tiny"})
    registry.set_pointer("policy", "promoted", version)
    return version


def promoted(version: str, previous: str | None, fraction: float = 0.1) -> ModelUpdate:
    return ModelUpdate(event_id=model_update_id_for(version, "promoted"), model_version=version, action="promoted",
                       base_model="tiny", previous_version=previous, canary_fraction=fraction)


@contextmanager
def trainer(tmp_path: Path, kafka: KafkaSettings, **judge: Any) -> Iterator[CollectorRegistry]:
    settings = trainer_settings(tmp_path, kafka, group_id=f"trainer-{tmp_path.name[-8:]}",
                                canary_judge={"check_interval_s": 0.3, "min_comparisons": 5, **judge})
    metrics, stop, started = CollectorRegistry(), threading.Event(), []
    thread = threading.Thread(target=run_service, args=(settings, stop),
                              kwargs={"registry": metrics, "on_started": started.append}, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: bool(started), timeout_s=30)
        yield metrics
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def status_of(metrics: CollectorRegistry) -> str:
    """The status line `rlhf-loop up` prints, from the trainer's own exposition."""
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(metrics).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return status_line(samples)


def updates(kafka: KafkaSettings, topics: dict[str, Topic], action: str, timeout_s: float = 20) -> list[ModelUpdate]:
    found: list[ModelUpdate] = []

    def seen() -> bool:
        found[:] = [u for r in read_topic(kafka, topics["updates"].name, 10_000, 1.5)
                    if (u := ModelUpdate.model_validate_json(r.value)).action == action]
        return bool(found)

    wait_for(seen, timeout_s=timeout_s, interval_s=0.5)
    return found


def judged(producer: EventProducer, topic: Topic, outcomes: list[str], start: int = 0) -> None:
    at = datetime.now(timezone.utc)
    for i, outcome in enumerate(outcomes, start=start):
        producer.send(topic, factories.canary_comparison(task_id=f"task-{i}", outcome=outcome, canary=CANARY,
                                                         stable=STABLE, judged_at=at + timedelta(seconds=i)))
    producer.flush()


def setup_canary(tmp_path: Path, producer: EventProducer, topics: dict[str, Topic]) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "registry")
    assert publish_policy(registry, None) == STABLE
    assert publish_policy(registry, STABLE) == CANARY
    producer.send(topics["updates"], promoted(CANARY, STABLE))
    producer.flush()
    return registry


def test_a_canary_the_annotators_prefer_graduates_before_any_timer(
        kafka: KafkaSettings, producer: EventProducer, trainer_topics: dict[str, Topic], tmp_path: Path) -> None:
    registry = setup_canary(tmp_path, producer, trainer_topics)
    with trainer(tmp_path, kafka, max_duration_s=3600, on_timeout="rollback") as metrics:
        # redelivered and edited judgements: one vote per task, the latest revision's
        judged(producer, trainer_topics["comparisons"], ["canary", "stable", "canary"])
        judged(producer, trainer_topics["comparisons"], ["canary", "stable", "canary"])  # redelivery
        assert wait_for(lambda: metrics.get_sample_value("rlhf_canary_ab_comparisons", {"outcome": "win"}) == 2)
        assert not updates(kafka, trainer_topics, "graduated", timeout_s=2)  # 3 < min_comparisons
        assert "canary A/B 2W 1L 0T" in status_of(metrics) and ": judging" in status_of(metrics)
        judged(producer, trainer_topics["comparisons"], ["canary"] * 20 + ["tie"] * 2, start=3)
        [graduated] = updates(kafka, trainer_topics, "graduated")
        decision = graduated.decision
        assert decision is not None and decision.outcome == "graduate" and decision.reason == "evidence"
        assert decision.losses == 1 and decision.ties <= 2 and decision.wins >= 10
        assert decision.log_likelihood_ratio >= decision.graduate_at
        assert graduated.metrics["ab_wins"] == decision.wins and graduated.previous_version == STABLE
        manifest = json.loads((registry.path("policy", CANARY) / "manifest.json").read_text())
        assert manifest["canary_decision"]["outcome"] == "graduate"
        assert manifest["canary_decision"]["wins"] == decision.wins
        assert registry.pointer("policy", "promoted") == CANARY
        assert metrics.get_sample_value("rlhf_canary_decisions_total",
                                        {"outcome": "graduate", "reason": "evidence"}) == 1
        assert wait_for(lambda: "canary decisions: 1 graduate (evidence)" in status_of(metrics))
        judged(producer, trainer_topics["comparisons"], ["stable"] * 30, start=100)  # after the decision
        assert not updates(kafka, trainer_topics, "rolled_back", timeout_s=3)


def test_a_canary_the_annotators_judge_worse_is_rolled_back(
        kafka: KafkaSettings, producer: EventProducer, trainer_topics: dict[str, Topic], tmp_path: Path) -> None:
    registry = setup_canary(tmp_path, producer, trainer_topics)
    with trainer(tmp_path, kafka, max_duration_s=3600, on_timeout="graduate") as metrics:
        judged(producer, trainer_topics["comparisons"], ["stable"] * 22 + ["canary"] * 4 + ["tie"] * 2)
        [rolled_back] = updates(kafka, trainer_topics, "rolled_back")
        assert rolled_back.model_version == CANARY and rolled_back.previous_version == STABLE
        assert rolled_back.decision is not None and rolled_back.decision.outcome == "rollback"
        assert rolled_back.decision.log_likelihood_ratio <= rolled_back.decision.rollback_at
        assert registry.pointer("policy", "promoted") == STABLE
        assert CANARY in registry.rolled_back("policy")
        assert metrics.get_sample_value("rlhf_canary_decisions_total",
                                        {"outcome": "rollback", "reason": "evidence"}) == 1
    assert not updates(kafka, trainer_topics, "graduated", timeout_s=1)


@pytest.mark.parametrize("on_timeout", ["rollback", "graduate", "keep"])
def test_without_annotations_the_configured_timeout_decides(
        kafka: KafkaSettings, producer: EventProducer, trainer_topics: dict[str, Topic], tmp_path: Path,
        on_timeout: str) -> None:
    registry = setup_canary(tmp_path, producer, trainer_topics)
    with trainer(tmp_path, kafka, max_duration_s=2.0, on_timeout=on_timeout) as metrics:
        judged(producer, trainer_topics["comparisons"], ["canary", "stable"])  # too few to decide
        outcome = {"rollback": "rollback", "graduate": "graduate", "keep": "keep"}[on_timeout]
        assert wait_for(lambda: metrics.get_sample_value(
            "rlhf_canary_decisions_total", {"outcome": outcome, "reason": "timeout"}) == 1, timeout_s=20)
        if on_timeout == "keep":
            assert not updates(kafka, trainer_topics, "graduated", timeout_s=2)
            assert not updates(kafka, trainer_topics, "rolled_back", timeout_s=0.5)
            assert registry.canary_decision("policy", CANARY) is None
            assert registry.pointer("policy", "promoted") == CANARY
            return
        action = "graduated" if on_timeout == "graduate" else "rolled_back"
        [update] = updates(kafka, trainer_topics, action)
        assert update.decision is not None and update.decision.reason == "timeout"
        assert (update.decision.wins, update.decision.losses) == (1, 1)
        assert update.decision.canary_age_s >= 2.0
        assert registry.canary_decision("policy", CANARY)["outcome"] == on_timeout  # type: ignore[index]
        assert registry.pointer("policy", "promoted") == (CANARY if on_timeout == "graduate" else STABLE)
