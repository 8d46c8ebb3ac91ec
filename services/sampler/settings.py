from __future__ import annotations

from pydantic import BaseModel, Field

from shared.settings import ServiceSettings

from .completion import CompletionSettings
from .redaction import RedactionSettings
from .rules import SamplingRule, default_rules


class SamplerOptions(BaseModel):
    group_id: str = "sampler"
    rules: list[SamplingRule] = Field(default_factory=default_rules,
                                      description="ordered; the first rule that accepts an output wins (JSON)")
    dedupe_window_s: float = Field(default=86_400.0, ge=0,
                                   description="a near-duplicate prompt within this window is not sampled again")
    completion: CompletionSettings = CompletionSettings()
    redaction: RedactionSettings = RedactionSettings()
    reward_model_dir: str | None = Field(
        default=None, description="reward model for uncertainty; default: the trainer registry's latest")
    registry_dir: str | None = Field(default=None, description="default: DATA_DIR/registry")
    reward_refresh_s: float = Field(default=30.0, gt=0)
    novelty_memory: int = Field(default=2000, ge=1)
    tick_interval_s: float = Field(default=1.0, gt=0, description="how often budget windows are checked")


class SamplerSettings(ServiceSettings):
    """Env: RLHF_SAMPLER__RULES='[...]' (JSON), RLHF_SAMPLER__COMPLETION__TARGET_CANDIDATES=4, ..."""

    sampler: SamplerOptions = SamplerOptions()
