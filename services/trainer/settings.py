"""Trainer options: `RLHF_TRAINER__<OPTION>` in the environment (nested with `__`,
e.g. `RLHF_TRAINER__GATES__MIN_RM_ACCURACY=0.6`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from shared.settings import ServiceSettings


class Hyperparameters(BaseModel):
    """What a run trains with; copied into every manifest."""

    rm_epochs: float = Field(default=1.0, gt=0)
    rm_batch_size: int = Field(default=8, ge=1)
    rm_learning_rate: float = Field(default=1e-4, gt=0)
    max_length: int = Field(default=256, ge=16, description="token cap for prompt+answer")
    policy_batch_size: int = Field(default=8, ge=1)
    policy_learning_rate: float = Field(default=1e-5, gt=0)
    ppo_episodes: int = Field(default=64, ge=1, description="PPO total episodes (prompts rolled out)")
    ppo_epochs: int = Field(default=1, ge=1)
    response_length: int = Field(default=32, ge=1, description="tokens generated per rollout")
    kl_coef: float = Field(default=0.05, ge=0)
    dpo_steps: int = Field(default=10, ge=1)
    dpo_beta: float = Field(default=0.1, gt=0)
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    seed: int = 0


class GateThresholds(BaseModel):
    """A run whose candidate misses one of these is published but not promoted."""

    min_rm_accuracy: float = Field(default=0.6, ge=0, le=1.01)
    rm_accuracy_epsilon: float = Field(default=0.02, ge=0, description="allowed drop vs previous RM")
    reward_epsilon: float = Field(default=0.0, ge=0, description="allowed mean-reward drop vs previous policy")
    max_kl: float = Field(default=10.0, ge=0, description="mean sequence KL to the reference")
    min_win_rate: float = Field(default=0.5, ge=0, le=1.01)
    max_degenerate_rate: float = Field(default=0.2, ge=0, le=1)
    eval_prompts: int = Field(default=32, ge=1, description="held-out prompts scored per gate check")


class TrainerOptions(BaseModel):
    group_id: str = "trainer"
    preferences_topic: str = "rlhf.preferences"
    outputs_topic: str = "rlhf.outputs"
    runs_topic: str = "rlhf.training-runs"
    updates_topic: str = "rlhf.model-updates"

    threshold: int = Field(default=500, ge=1, description="new preferences that trigger a run")
    min_interval_s: float = Field(default=3600.0, ge=0, description="least time between run starts")
    check_interval_s: float = Field(default=30.0, gt=0, description="how often the trigger job looks")
    min_preferences: int = Field(default=4, ge=2, description="a manual run needs at least this many")
    heldout_fraction: float = Field(default=0.2, gt=0, lt=1, description="share of prompts held out (by hash)")
    lock_stale_s: float = Field(default=120.0, gt=0, description="a run lock whose heartbeat is older is reclaimed")

    algorithm: Literal["ppo", "dpo"] = "ppo"
    base_model: str = Field(default="", description="policy base (path); empty: DATA_DIR/tiny-models/policy")
    reward_base_model: str = Field(default="", description="reward model to start from when none is registered;"
                                   " empty: DATA_DIR/tiny-models/reward-base")
    build_tiny_models: bool = Field(default=True, description="create tiny models at the paths if missing (demo)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    executor: Literal["local", "kubernetes"] = "local"
    kubernetes_image: str = "rlhf-loop:latest"
    kubernetes_namespace: str = "rlhf"
    canary_fraction: float = Field(default=0.1, ge=0, le=1, description="traffic share a promoted policy starts with")

    hyper: Hyperparameters = Hyperparameters()
    gates: GateThresholds = GateThresholds()


class TrainerSettings(ServiceSettings):
    """Env: RLHF_TRAINER__..., plus the common RLHF_* ones."""

    trainer: TrainerOptions = TrainerOptions()

    @model_validator(mode="after")
    def _default_model_paths(self) -> "TrainerSettings":
        # Relative to the data dir, not the working directory: `up --data-dir X` keeps all state under X.
        if not self.trainer.base_model:
            self.trainer.base_model = str(Path(self.data_dir) / "tiny-models" / "policy")
        if not self.trainer.reward_base_model:
            self.trainer.reward_base_model = str(Path(self.data_dir) / "tiny-models" / "reward-base")
        return self
