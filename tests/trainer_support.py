"""Helpers for the trainer tests: preferences with distinct prompts (so the
prompt-hash split has both sides) and settings small enough to train in seconds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from shared.contracts import Candidate, ChatMessage, ModelOutput, ModelRef, Preference, output_id_for, preference_id_for
from shared.settings import KafkaSettings
from shared.topics import COMPARISONS, MODEL_UPDATES, OUTPUTS, PREFERENCES, TRAINING_RUNS, Topic

MODEL = ModelRef(name="tiny-llama", version="v0")

# Tiny everything: a run trains in seconds on a CPU.
TINY_HYPER: dict[str, Any] = {"ppo_episodes": 16, "ppo_epochs": 1, "ppo_mini_batches": 1, "response_length": 8,
                              "max_length": 64, "dpo_steps": 1, "group_steps": 2, "rm_learning_rate": 1e-3,
                              "policy_learning_rate": 1e-3, "policy_batch_size": 8, "lora_r": 8, "lora_alpha": 16}
# Every candidate passes: tests of the mechanics, not of the evidence (test_gates_* test that).
LENIENT_GATES: dict[str, Any] = {"min_rm_accuracy": 0.0, "min_win_rate": 0.0, "max_degenerate_rate": 1.0,
                                 "alpha": 1.0, "max_kl": 1000.0, "eval_prompts": 4, "min_eval_prompts": 1}


# What the trainer reads and writes: the loop's topics themselves (shared/topics.py).
TRAINER_TOPICS: dict[str, Topic] = {"preferences": PREFERENCES, "outputs": OUTPUTS, "runs": TRAINING_RUNS,
                                    "updates": MODEL_UPDATES, "comparisons": COMPARISONS}


@pytest.fixture(name="kafka")
def own_broker_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    """A module whose tests read back what the trainer publishes on the loop's own topics
    imports this as its `kafka`: each test on a broker of its own."""
    with trainer_broker(tmp_path_factory.mktemp("broker")) as settings:
        yield settings


@pytest.fixture(name="trainer_topics")
def loop_trainer_topics(kafka: KafkaSettings) -> dict[str, Topic]:
    from shared.bus.admin import ensure_topics

    ensure_topics(kafka, [(t.name, t.partitions) for t in TRAINER_TOPICS.values()])
    return TRAINER_TOPICS


@contextmanager
def trainer_broker(log_dir: Path) -> Iterator[KafkaSettings]:
    """A broker of one test's own, for a test that reads what the trainer published on
    the loop's topics: no other test's runs, updates or preferences are on it."""
    from shared.embedded.broker import EmbeddedBroker
    from tests.conftest import FAST_GROUP

    with EmbeddedBroker(log_file=log_dir / "tansu.log") as broker:
        yield broker.kafka_settings(**FAST_GROUP)


def make_preference(i: int, guideline: str = "g1") -> Preference:
    pid = preference_id_for(f"task-{i}", "good", "bad")
    return Preference(
        event_id=pid, preference_id=pid, ranking_id=f"rank-{i}", task_id=f"task-{i}", output_id=f"out-{i}",
        conversation_id=f"conv-{i}", prompt=[ChatMessage(role="user", content=f"question number {i}?")],
        chosen=Candidate(candidate_id="good", text=f"here is a helpful answer {i}", model=MODEL),
        rejected=Candidate(candidate_id="bad", text="I am sorry, I cannot help", model=MODEL),
        margin=1.0, guideline_version=guideline,
    )


def make_output(i: int) -> ModelOutput:
    oid = output_id_for(f"req-{i}")
    return ModelOutput(event_id=oid, output_id=oid, conversation=[ChatMessage(role="user", content=f"ask {i}")],
                       candidates=[Candidate(candidate_id="a", text="an answer", model=MODEL)])


def trainer_settings(data_dir: Path, kafka: KafkaSettings | None = None, models: tuple[Path, Path] | None = None,
                     **trainer: Any):  # type: ignore[no-untyped-def]
    from services.trainer.settings import TrainerSettings

    options: dict[str, Any] = {"hyper": TINY_HYPER, "gates": LENIENT_GATES,
                               "check_interval_s": 0.3, "min_interval_s": 0.0, "threshold": 10_000}
    if models:
        options.update(base_model=str(models[0]), reward_base_model=str(models[1]))
    options.update(trainer)
    extra: dict[str, Any] = {"kafka": kafka} if kafka is not None else {}
    return TrainerSettings(data_dir=str(data_dir), http={"host": "127.0.0.1", "port": 0}, trainer=options, **extra)
