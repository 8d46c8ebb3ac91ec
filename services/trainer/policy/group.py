"""RLOO and GRPO steps: TRL's `RLOOTrainer` / `GRPOTrainer` with a LoRA policy.

Both sample `num_generations` answers per prompt and use the group as the baseline
(RLOO: leave-one-out mean; GRPO: group mean and spread), so a prompt's own
difficulty never looks like a good or bad answer. The reward is the run's reward
model on each answer as a final answer (shared.models.reward.render).

KL reference: TRL copies a pretrained adapter to `ref` when `beta > 0` (the
incumbent); with `reference="base"` that copy is dropped (init.settle_reference).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shared.models.reward import RewardModel, load_tokenizer

from .base import PolicyData, PolicyResult, PolicyTrainConfig, logged_metrics, summarise_logs, trl_config
from .init import load_policy, save_adapter, settle_reference

GROUP_METRICS = {"reward": "group_reward", "reward_std": "group_reward_std", "kl": "group_kl",
                 "completions/mean_length": "group_mean_length", "completions/clipped_ratio": "group_clipped_ratio"}


def _text(completion: Any) -> str:
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


def grpo_classes() -> tuple[Any, Any]:
    from trl import GRPOConfig, GRPOTrainer

    return GRPOConfig, GRPOTrainer


def rloo_classes() -> tuple[Any, Any]:
    from trl import RLOOConfig, RLOOTrainer

    return RLOOConfig, RLOOTrainer


class GroupOptimizer:
    """One optimiser for both: they differ only in TRL's config and trainer classes."""

    def __init__(self, name: str, trl_classes: Callable[[], tuple[Any, Any]]) -> None:
        self.name = name
        self._trl = trl_classes

    def train(self, config: PolicyTrainConfig, data: PolicyData) -> PolicyResult:
        import torch
        from datasets import Dataset

        from ..device import trl_common_args
        from .ppo_models import floor_empty_answers

        hyper = config.hyper
        config_class, trainer_class = self._trl()
        tok = load_tokenizer(config.base_model)
        start = load_policy(config, load_reference=False)
        reward = RewardModel.load(config.reward_model, device=config.device, max_length=hyper.max_length)

        def score(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
            texts = [_text(c) for c in completions]
            scores = torch.tensor(reward.score(prompts, texts))
            empty = torch.tensor([not t.strip() for t in texts])
            return floor_empty_answers(scores, empty).tolist()  # see ppo_models

        generations = hyper.num_generations
        per_device = max(generations, hyper.policy_batch_size - hyper.policy_batch_size % generations)
        args = trl_config(config_class, dict(
            output_dir=str(config.output_dir / "_trainer"), per_device_train_batch_size=per_device,
            num_generations=generations, max_completion_length=hyper.response_length,
            learning_rate=hyper.policy_learning_rate, beta=hyper.kl_coef, temperature=hyper.temperature,
            top_k=0, top_p=1.0, max_steps=hyper.group_steps, seed=hyper.seed, **trl_common_args(config.device),
        ), hyper.trl.get(self.name, {}), f"RLHF_TRAINER__HYPER__TRL__{self.name.upper()}")
        logged = logged_metrics()
        trainer = trainer_class(model=start.model, reward_funcs=score, args=args,
                                train_dataset=Dataset.from_list([{"prompt": p} for p in data.prompts]),
                                processing_class=tok, callbacks=[logged])
        settle_reference(trainer.model, config.reference)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        metrics = summarise_logs(logged.logs, self.name, GROUP_METRICS)
        save_adapter(trainer.model, config.output_dir, config.ranks)
        init, note = start.init, start.note
        del trainer, start
        return PolicyResult(algorithm=self.name, episodes=hyper.group_steps * per_device, seconds=seconds,
                            metrics=metrics, init=init, init_note=note)
