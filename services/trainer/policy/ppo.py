"""PPO step (default): `trl.experimental.ppo.PPOTrainer` with a LoRA policy.

The policy starts from the promoted adapter (policy/init.py) and its KL reference is
the base (adapter disabled) or the incumbent (a frozen `ref` adapter). The reward is
the run's reward model read as a final answer, and the critic shares that model's
frozen backbone (ppo_models.py). `save_model` saves the trained adapter only.
"""

from __future__ import annotations

import os
import time
from typing import Any

from shared.models.reward import RewardModel, load_tokenizer

from .base import PolicyData, PolicyResult, PolicyTrainConfig, logged_metrics, summarise_logs, trl_config
from .init import TRAINED_ADAPTER, load_policy, save_adapter

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

PPO_METRICS = {"objective/kl": "ppo_kl", "objective/scores": "ppo_score", "objective/rlhf_reward": "ppo_rlhf_reward",
               "loss/policy_avg": "ppo_policy_loss", "loss/value_avg": "ppo_value_loss",
               "val/num_eos_tokens": "ppo_eos_per_batch"}


def generation_suffix(tok: Any) -> list[int]:
    """The tokens the chat template puts between a prompt and its answer ([] when the
    template does not simply append them): an answer that is EOS right after these is
    empty."""
    probe = [{"role": "user", "content": "x"}]
    prompted = tok.apply_chat_template(probe, add_generation_prompt=True, tokenize=True, return_dict=False)
    plain = tok.apply_chat_template(probe, add_generation_prompt=False, tokenize=True, return_dict=False)
    return list(prompted[len(plain):]) if prompted[:len(plain)] == plain else []


def expose_policy_through_ddp(trainer: Any) -> None:
    """TRL's experimental PPOTrainer reads `self.model.policy` for its reference pass
    (`null_ref_context`, the KL reference with the adapter disabled or switched), and on
    more than one process `self.model` is the DistributedDataParallel wrapper, which has
    no `policy`: every multi-process run failed with AttributeError. The wrapped policy
    is set on the wrapper as a plain attribute — not a registered submodule, so DDP's
    parameters, buckets and state dict are unchanged; the reference pass runs without
    gradients, so it needs no DDP synchronisation."""
    model = trainer.model
    if not hasattr(model, "policy") and hasattr(model, "module"):
        object.__setattr__(model, "policy", model.module.policy)


class PpoOptimizer:
    name = "ppo"

    def train(self, config: PolicyTrainConfig, data: PolicyData) -> PolicyResult:
        from datasets import Dataset
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        from ..device import trl_common_args
        from .ppo_models import FinalAnswerReward, SharedBackboneValue

        hyper = config.hyper
        tok = load_tokenizer(config.base_model)
        start = load_policy(config)
        start.model.generation_config.pad_token_id = tok.pad_token_id
        reward = RewardModel.load(config.reward_model, max_length=hyper.max_length).classifier
        prompt_ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
                      for p in data.prompts]
        budget = max(8, hyper.max_length - hyper.response_length)
        dataset = Dataset.from_list([{"input_ids": ids[-budget:]} for ids in prompt_ids])
        batch = min(hyper.policy_batch_size, len(dataset))
        mini_batches = max(1, min(hyper.ppo_mini_batches, batch))
        batch -= batch % mini_batches
        args = trl_config(PPOConfig, dict(
            output_dir=str(config.output_dir / "_trainer"), per_device_train_batch_size=batch,
            local_rollout_forward_batch_size=batch, num_mini_batches=mini_batches,
            total_episodes=max(hyper.ppo_episodes, batch), num_ppo_epochs=hyper.ppo_epochs,
            response_length=hyper.response_length, learning_rate=hyper.policy_learning_rate,
            kl_coef=hyper.kl_coef, temperature=hyper.temperature, whiten_rewards=hyper.whiten_rewards,
            stop_token="eos", missing_eos_penalty=hyper.missing_eos_penalty, num_sample_generations=0,
            model_adapter_name=TRAINED_ADAPTER, ref_adapter_name=start.reference_adapter,
            seed=hyper.seed, **trl_common_args(config.device),
        ), hyper.trl.get("ppo", {}), "RLHF_TRAINER__HYPER__TRL__PPO")
        logged = logged_metrics()
        trainer = PPOTrainer(args=args, processing_class=tok, model=start.model, ref_model=None,
                             reward_model=FinalAnswerReward(reward, tok.eos_token_id, generation_suffix(tok)),
                             train_dataset=dataset,
                             value_model=SharedBackboneValue(reward), peft_config=None, callbacks=[logged])
        expose_policy_through_ddp(trainer)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        metrics = summarise_logs(logged.logs, "ppo", PPO_METRICS)
        policy = trainer.accelerator.unwrap_model(trainer.model).policy  # DDP wraps it on more than one process
        save_adapter(policy, config.output_dir, config.ranks)
        init, note = start.init, start.note
        del trainer, reward, start
        return PolicyResult(algorithm=self.name, episodes=args.total_episodes, seconds=seconds, metrics=metrics,
                            init=init, init_note=note)
