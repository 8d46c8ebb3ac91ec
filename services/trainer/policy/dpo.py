"""DPO step (alternative): offline from the preference pairs, no reward model in the
loop. TRL's `DPOTrainer` with `peft_config` uses the adapter-disabled policy as the
reference, like PPO here."""

from __future__ import annotations

import shutil
import time

from ..reward_model import load_tokenizer
from .base import PolicyData, PolicyResult, PolicyTrainConfig, lora_config


class DpoOptimizer:
    name = "dpo"

    def train(self, config: PolicyTrainConfig, data: PolicyData) -> PolicyResult:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM
        from trl import DPOConfig, DPOTrainer

        from ..device import trl_common_args

        hyper = config.hyper
        tok = load_tokenizer(config.base_model)
        tok.padding_side = "right"  # DPO pads for loss computation, not generation
        policy = AutoModelForCausalLM.from_pretrained(config.base_model)
        rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in data.pairs]
        args = DPOConfig(
            output_dir=str(config.output_dir / "_trainer"), per_device_train_batch_size=hyper.policy_batch_size,
            max_steps=hyper.dpo_steps, learning_rate=hyper.policy_learning_rate, beta=hyper.dpo_beta,
            max_length=hyper.max_length, seed=hyper.seed, **trl_common_args(config.device),
        )
        trainer = DPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=lora_config(hyper))
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
        trainer.save_model(str(config.output_dir))
        shutil.rmtree(config.output_dir / "_trainer", ignore_errors=True)
        (config.output_dir / "training_args.bin").unlink(missing_ok=True)
        episodes = hyper.dpo_steps * hyper.policy_batch_size
        del trainer, policy
        return PolicyResult(algorithm=self.name, episodes=episodes, seconds=seconds,
                            metrics={"dpo_loss": float(output.training_loss)})
