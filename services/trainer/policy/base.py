"""The policy-optimisation interface. TRL dropped PPO after 1.12, so the pipeline
talks to this protocol, never to a TRL trainer: PPO can move to another
implementation (or GRPO/RLOO join) without touching the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..settings import Hyperparameters


@dataclass(frozen=True)
class PolicyTrainConfig:
    base_model: str  # path of the base policy; the output is a LoRA adapter over it
    reward_model: str  # path of the reward model (shares the policy tokenizer for PPO)
    output_dir: Path  # staging directory: adapter files (+ value/ for PPO)
    hyper: Hyperparameters
    device: str = "cpu"


@dataclass(frozen=True)
class PolicyData:
    prompts: list[list[dict[str, str]]]  # chat prompts for on-policy rollouts
    pairs: list[dict[str, Any]]  # prompt/chosen/rejected rows for offline methods


@dataclass
class PolicyResult:
    algorithm: str
    episodes: int  # prompts rolled out (PPO) or pairs seen (DPO)
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def episodes_per_s(self) -> float:
        return self.episodes / self.seconds if self.seconds > 0 else 0.0


class PolicyOptimizer(Protocol):
    name: str

    def train(self, config: PolicyTrainConfig, data: PolicyData) -> PolicyResult: ...


def lora_config(hyper: Hyperparameters):  # type: ignore[no-untyped-def]
    from peft import LoraConfig

    return LoraConfig(r=hyper.lora_r, lora_alpha=hyper.lora_alpha, lora_dropout=0.0,
                      target_modules=list(hyper.lora_target_modules), task_type="CAUSAL_LM")


def get_optimizer(name: str) -> PolicyOptimizer:
    from .dpo import DpoOptimizer
    from .ppo import PpoOptimizer

    optimizers: dict[str, PolicyOptimizer] = {"ppo": PpoOptimizer(), "dpo": DpoOptimizer()}
    try:
        return optimizers[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {sorted(optimizers)}") from None
