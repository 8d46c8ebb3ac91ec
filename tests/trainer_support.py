"""Helpers for the trainer tests: preferences with distinct prompts (so the
prompt-hash split has both sides) and settings small enough to train in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.contracts import Candidate, ChatMessage, ModelOutput, ModelRef, Preference, output_id_for, preference_id_for
from shared.settings import KafkaSettings

MODEL = ModelRef(name="tiny-llama", version="v0")

# Tiny everything: a run trains in seconds on a CPU.
TINY_HYPER: dict[str, Any] = {"ppo_episodes": 16, "ppo_epochs": 1, "ppo_mini_batches": 1, "response_length": 8,
                              "max_length": 64, "dpo_steps": 1, "group_steps": 2, "rm_learning_rate": 1e-3,
                              "policy_learning_rate": 1e-3, "policy_batch_size": 8, "lora_r": 8, "lora_alpha": 16}
# Every candidate passes: tests of the mechanics, not of the evidence (test_gates_* test that).
LENIENT_GATES: dict[str, Any] = {"min_rm_accuracy": 0.0, "min_win_rate": 0.0, "max_degenerate_rate": 1.0,
                                 "alpha": 1.0, "max_kl": 1000.0, "eval_prompts": 4, "min_eval_prompts": 1}


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
