"""rlhf.training-runs: the life of one training run, one event per transition."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Event
from .ids import derived_id

RunState = Literal[
    "queued", "started", "stage_started", "stage_succeeded", "succeeded", "gated", "failed"
]
RunStage = Literal["snapshot", "reward_model", "policy", "evaluate", "publish"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "gated", "failed"})


def run_event_id_for(run_id: str, state: str, stage: str | None) -> str:
    """Re-emitting the same transition of the same run gives the same event id."""
    return derived_id("training-run", run_id, state, stage or "-")


class TrainingRunStatus(Event):
    run_id: str = Field(min_length=1, max_length=128)
    state: RunState
    stage: RunStage | None = None
    reason: str | None = Field(default=None, max_length=10_000)
    preference_count: int = Field(default=0, ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)
    model_version: str | None = Field(default=None, max_length=200)

    @property
    def partition_key(self) -> str:
        return self.run_id

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES
