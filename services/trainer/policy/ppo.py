"""PPO step (default): `trl.experimental.ppo.PPOTrainer` with a LoRA policy.

`ref_model=None` + `peft_config`: the reference is the policy with its adapter
disabled, so no second copy of the base is held. The value model starts from the
reward model (same tokenizer, already a scalar head). `save_model` saves only the
policy adapter, so the value model is saved under `value/` by hand.
"""

from __future__ import annotations

import os
import time

from ..reward_model import load_tokenizer
from .base import PolicyData, PolicyResult, PolicyTrainConfig, lora_config

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


class PpoOptimizer:
    name = "ppo"

    def train(self, config: PolicyTrainConfig, data: PolicyData) -> PolicyResult:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        from ..device import trl_common_args

        hyper = config.hyper
        tok = load_tokenizer(config.base_model)
        policy = AutoModelForCausalLM.from_pretrained(config.base_model)
        reward = AutoModelForSequenceClassification.from_pretrained(config.reward_model, num_labels=1)
        value = AutoModelForSequenceClassification.from_pretrained(config.reward_model, num_labels=1)
        for model in (reward, value):
            model.config.pad_token_id = tok.pad_token_id
        prompt_ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
                      for p in data.prompts]
        budget = max(8, hyper.max_length - hyper.response_length)
        dataset = Dataset.from_list([{"input_ids": ids[-budget:]} for ids in prompt_ids])
        batch = min(hyper.policy_batch_size, len(dataset))
        args = PPOConfig(
            output_dir=str(config.output_dir / "_trainer"), per_device_train_batch_size=batch,
            num_mini_batches=1, total_episodes=max(hyper.ppo_episodes, batch), num_ppo_epochs=hyper.ppo_epochs,
            response_length=hyper.response_length, learning_rate=hyper.policy_learning_rate,
            kl_coef=hyper.kl_coef, stop_token="eos", missing_eos_penalty=1.0, num_sample_generations=0,
            seed=hyper.seed, **trl_common_args(config.device),
        )
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                             train_dataset=dataset, value_model=value, peft_config=lora_config(hyper))
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        metrics = _last_metrics(trainer.state.log_history)
        trainer.save_model(str(config.output_dir))
        value.save_pretrained(str(config.output_dir / "value"))
        _cleanup(config)
        del trainer, policy, reward, value
        return PolicyResult(algorithm=self.name, episodes=hyper.ppo_episodes, seconds=seconds, metrics=metrics)


def _last_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    wanted = {"objective/kl": "ppo_kl", "objective/scores": "ppo_score", "objective/rlhf_reward": "ppo_rlhf_reward",
              "loss/policy_avg": "ppo_policy_loss", "loss/value_avg": "ppo_value_loss"}
    for entry in reversed(history):
        if "objective/kl" in entry:
            return {short: float(entry[key]) for key, short in wanted.items() if key in entry}
    return {}


def _cleanup(config: PolicyTrainConfig) -> None:
    import shutil

    shutil.rmtree(config.output_dir / "_trainer", ignore_errors=True)
    (config.output_dir / "training_args.bin").unlink(missing_ok=True)
