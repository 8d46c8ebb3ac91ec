from __future__ import annotations

from pydantic import BaseModel, Field

from shared.settings import ServiceSettings

from .comparisons import ComparisonSettings
from .completion import CompletionSettings
from .feedback_preferences import FeedbackPreferenceSettings
from .redaction import RedactionSettings
from .rules import SamplingRule, default_rules


class SamplerOptions(BaseModel):
    group_id: str = "sampler"
    rules: list[SamplingRule] = Field(default_factory=default_rules,
                                      description="ordered; the first rule that accepts an output wins (JSON)")
    dedupe_window_s: float = Field(default=86_400.0, ge=0,
                                   description="a near-duplicate prompt within this window is not sampled again")
    comparisons: ComparisonSettings = Field(
        default_factory=ComparisonSettings,
        description="A/B outputs (canary vs stable) become blind comparison tasks before any rule")
    feedback_preferences: FeedbackPreferenceSettings = Field(
        default_factory=FeedbackPreferenceSettings,
        description="users' edits and regenerates become preferences (opt-in per tenant)")
    completion: CompletionSettings = CompletionSettings()
    redaction: RedactionSettings = RedactionSettings()
    reward_model_dir: str | None = Field(
        default=None, description="reward model for uncertainty; default: the trainer registry's latest")
    registry_dir: str | None = Field(default=None, description="default: DATA_DIR/registry")
    reward_refresh_s: float = Field(default=30.0, gt=0)
    novelty_memory: int = Field(default=2000, ge=1)
    tick_interval_s: float = Field(default=1.0, gt=0, description="how often budget windows are checked")


class SamplerSettings(ServiceSettings):
    """Env: RLHF_SAMPLER__RULES='[...]' (JSON), RLHF_SAMPLER__COMPLETION__TARGET_CANDIDATES=4,
    RLHF_SAMPLER__COMPARISONS__MAX_PER_WINDOW=500, RLHF_SAMPLER__FEEDBACK_PREFERENCES__ENABLED_TENANTS='["*"]', ..."""

    sampler: SamplerOptions = SamplerOptions()
