"""The policy-optimisation interface. TRL dropped PPO after 1.12, so the pipeline
talks to this protocol, never to a TRL trainer: PPO can move to another
implementation, and RLOO, GRPO and DPO sit beside it, without touching the pipeline."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ..distributed import Ranks
from ..settings import Hyperparameters

log = logging.getLogger(__name__)


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


def logged_metrics() -> Any:
    """A TrainerCallback that keeps every numeric value TRL logs (`on_log`), on rank 0:
    what a run measured is read from what TRL reported, not looked up by key later."""
    from transformers import TrainerCallback

    class LoggedMetrics(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.logs: list[dict[str, float]] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if logs and state.is_world_process_zero:
                # a NaN (e.g. a variance over one sample) is no measurement: events carry finite numbers
                self.logs.append({k: float(v) for k, v in logs.items()
                                  if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)})

    return LoggedMetrics()


def summarise_logs(logs: list[dict[str, float]], prefix: str, named: dict[str, str]) -> dict[str, float]:
    """Every series TRL logged, as `<prefix>_<key>` (its mean over the run) and
    `<prefix>_<key>_last`; the series gates, dashboards and the README read keep their
    stable names (`named`: TRL key -> ours). A named series TRL did not log (renamed in
    a new TRL) is counted in `trl_metrics_missing` and warned about, never silently
    dropped."""
    series: dict[str, list[float]] = {}
    for entry in logs:
        for key, value in entry.items():
            series.setdefault(key, []).append(value)
    metrics: dict[str, float] = {}
    for key, values in series.items():
        short = named.get(key) or f"{prefix}_" + re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")
        metrics[short] = sum(values) / len(values)
        metrics[f"{short}_last"] = values[-1]
    missing = sorted(key for key in named if key not in series)
    if missing and logs:
        log.warning("TRL no longer logs %s (renamed?): those run metrics are missing", missing)
        metrics["trl_metrics_missing"] = float(len(missing))
    return metrics


def trl_config(config_class: Any, ours: dict[str, Any], overrides: dict[str, Any], setting: str) -> Any:
    """`config_class(**ours)` with the user's TRL options on top (RLHF_TRAINER__HYPER__TRL__<SECTION>,
    JSON): TRL's own names and meanings, so anything TRL offers can be set without a
    setting of ours for it. An option TRL's config does not have is refused by name."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{setting}: {config_class.__name__} has no option {', '.join(unknown)}")
    return config_class(**{**ours, **overrides})
