"""The policy-optimisation interface. TRL dropped PPO after 1.12, so the pipeline
talks to this protocol, never to a TRL trainer: PPO can move to another
implementation, and RLOO, GRPO and DPO sit beside it, without touching the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ..distributed import Ranks
from ..settings import Hyperparameters


@dataclass(frozen=True)
class PolicyTrainConfig:
    base_model: str  # path of the base policy; the output is a LoRA adapter over it
    reward_model: str  # path of the reward model version (shares the policy tokenizer for PPO)
    output_dir: Path  # staging directory: the adapter files
    hyper: Hyperparameters
    device: str = "cpu"
    init_adapter: str | None = None  # the promoted adapter to continue from (None: a fresh adapter)
    reference: Literal["base", "previous"] = "base"  # the KL reference
    ranks: Ranks = field(default_factory=Ranks.single)  # under `accelerate launch`: this process's rank


@dataclass(frozen=True)
class PolicyData:
    prompts: list[list[dict[str, str]]]  # chat prompts for on-policy rollouts
    pairs: list[dict[str, Any]]  # prompt/chosen/rejected rows for offline methods


@dataclass
class PolicyResult:
    algorithm: str
    episodes: int  # answers generated and scored (online) or pairs seen (DPO)
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    init: str = "fresh"  # "fresh" or "continued"
    init_note: str = ""

    @property
    def episodes_per_s(self) -> float:
        return self.episodes / self.seconds if self.seconds > 0 else 0.0


class PolicyOptimizer(Protocol):
    name: str

    def train(self, config: PolicyTrainConfig, data: PolicyData) -> PolicyResult: ...


def lora_config(hyper: Hyperparameters):  # type: ignore[no-untyped-def]
    from peft import LoraConfig

    targets = hyper.lora_target_modules
    return LoraConfig(r=hyper.lora_r, lora_alpha=hyper.lora_alpha, lora_dropout=0.0,
                      target_modules=targets if isinstance(targets, str) else list(targets), task_type="CAUSAL_LM")


def get_optimizer(name: str) -> PolicyOptimizer:
    from .dpo import DpoOptimizer
    from .group import GroupOptimizer, grpo_classes, rloo_classes
    from .ppo import PpoOptimizer

    optimizers: dict[str, PolicyOptimizer] = {"ppo": PpoOptimizer(), "rloo": GroupOptimizer("rloo", rloo_classes),
                                              "grpo": GroupOptimizer("grpo", grpo_classes), "dpo": DpoOptimizer()}
    try:
        return optimizers[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {sorted(optimizers)}") from None


def history_metrics(history: list[dict[str, float]], wanted: dict[str, str]) -> dict[str, float]:
    """Means over the run of the logged values TRL names in `wanted` (TRL key -> ours),
    plus the last value of each as `<ours>_last`. A key TRL no longer logs is reported
    as missing rather than silently dropped."""
    metrics: dict[str, float] = {}
    for key, short in wanted.items():
        values = [float(entry[key]) for entry in history if key in entry]
        if values:
            metrics[short] = sum(values) / len(values)
            metrics[f"{short}_last"] = values[-1]
    missing = [key for key in wanted if all(key not in e for e in history)]
    if missing and history:
        metrics["trl_metrics_missing"] = float(len(missing))
    return metrics
