"""rlhf.model-updates: a model version was published, promoted or rolled back."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Event
from .ids import derived_id

UpdateAction = Literal["published", "promoted", "rolled_back"]


def model_update_id_for(model_version: str, action: str) -> str:
    return derived_id("model-update", model_version, action)


class ModelUpdate(Event):
    """Tells servers and deployers what to load.

    `published` = a candidate exists in the registry (gates may have failed:
    `gate_passed` and `gate_reasons` say); `promoted` = it should take traffic,
    `canary_fraction` of it first; `rolled_back` = return traffic to `previous_version`.
    """

    model_version: str = Field(min_length=1, max_length=200)
    action: UpdateAction
    run_id: str | None = Field(default=None, max_length=128)
    base_model: str = Field(min_length=1, max_length=500)
    adapter_uri: str | None = Field(default=None, max_length=2_000)
    reward_model_version: str | None = Field(default=None, max_length=200)
    previous_version: str | None = Field(default=None, max_length=200)
    gate_passed: bool = True
    gate_reasons: list[str] = Field(default_factory=list, max_length=50)
    canary_fraction: float = Field(default=1.0, ge=0.0, le=1.0)
    metrics: dict[str, float] = Field(default_factory=dict)

    @property
    def partition_key(self) -> str:
        return self.model_version
