"""DPO step (alternative): offline from the preference pairs, no reward model in the
loop. The policy starts from the promoted adapter like the online optimisers; the
reference is the base (adapter disabled) or the incumbent (TRL's own `ref` copy of
the starting adapter; init.settle_reference)."""

from __future__ import annotations

import time

from shared.models.reward import load_tokenizer

from .base import PolicyData, PolicyResult, PolicyTrainConfig, logged_metrics, summarise_logs, trl_config
from .init import load_policy, save_adapter, settle_reference


class DpoOptimizer:
    name = "dpo"

    def train(self, config: PolicyTrainConfig, data: PolicyData) -> PolicyResult:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        from ..device import trl_common_args

        hyper = config.hyper
        tok = load_tokenizer(config.base_model)
        tok.padding_side = "right"  # DPO pads for loss computation, not generation
        start = load_policy(config, load_reference=False)
        rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in data.pairs]
        args = trl_config(DPOConfig, dict(
            output_dir=str(config.output_dir / "_trainer"), per_device_train_batch_size=hyper.policy_batch_size,
            max_steps=hyper.dpo_steps, learning_rate=hyper.policy_learning_rate, beta=hyper.dpo_beta,
            max_length=hyper.max_length, seed=hyper.seed, **trl_common_args(config.device),
        ), hyper.trl.get("dpo", {}), "RLHF_TRAINER__HYPER__TRL__DPO")
        logged = logged_metrics()
        trainer = DPOTrainer(model=start.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             callbacks=[logged])
        settle_reference(trainer.model, config.reference)
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
        save_adapter(trainer.model, config.output_dir, config.ranks)
        init, note = start.init, start.note
        del trainer, start
        return PolicyResult(algorithm=self.name, episodes=hyper.dpo_steps * hyper.policy_batch_size, seconds=seconds,
                            metrics={"dpo_loss": float(output.training_loss),
                                                   **summarise_logs(logged.logs, "dpo", {})}, init=init, init_note=note)
