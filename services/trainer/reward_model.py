"""Reward-model training step: a config dataclass and a function that calls TRL's
`RewardTrainer` directly, plus the scoring the gates need.

Data is conversational (`prompt`/`chosen`/`rejected` message lists, + `margin`), so
the tokenizer's chat template renders it the same way for training, scoring and PPO.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import PreferenceRow


@dataclass(frozen=True)
class RewardModelConfig:
    init_path: str  # previous reward model version, or the configured base
    output_dir: Path  # staging directory; the registry publishes it
    epochs: float = 1.0
    batch_size: int = 8
    learning_rate: float = 1e-4
    max_length: int = 256
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class RewardModelResult:
    pairs: int
    train_loss: float
    seconds: float

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


def pair_rows(prefs: Sequence[PreferenceRow]) -> list[dict[str, Any]]:
    return [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}], "margin": float(p.margin)}
            for p in prefs]


def load_tokenizer(path: str):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def train_reward_model(config: RewardModelConfig, rows: list[dict[str, Any]]) -> RewardModelResult:
    """Warm-start from `init_path`, train on `rows`, save model + tokenizer to `output_dir`."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from .device import trl_common_args

    tok = load_tokenizer(config.init_path)
    model = AutoModelForSequenceClassification.from_pretrained(config.init_path, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    args = RewardConfig(
        output_dir=str(config.output_dir / "_trainer"), num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
        max_length=config.max_length, seed=config.seed, **trl_common_args(config.device),
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(str(config.output_dir))
    tok.save_pretrained(str(config.output_dir))
    _drop_trainer_leftovers(config.output_dir)
    del trainer, model
    return RewardModelResult(pairs=len(rows), train_loss=float(output.training_loss), seconds=seconds)


def _drop_trainer_leftovers(path: Path) -> None:
    import shutil

    shutil.rmtree(path / "_trainer", ignore_errors=True)
    (path / "training_args.bin").unlink(missing_ok=True)


class RewardScorer:
    """Scores (prompt, answer) pairs with a reward model, rendering text the way the
    trainer did (chat template over prompt + assistant answer)."""

    def __init__(self, path: str | Path, max_length: int = 256, device: str = "cpu") -> None:
        from transformers import AutoModelForSequenceClassification

        self.tok = load_tokenizer(str(path))
        self.tok.truncation_side = "left"
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1).to(device).eval()
        self.model.config.pad_token_id = self.tok.pad_token_id
        self.max_length = max_length
        self.device = device

    def score(self, prompts: Sequence[list[dict[str, str]]], answers: Sequence[str], batch_size: int = 16) -> list[float]:
        import torch

        texts = [self.tok.apply_chat_template([*p, {"role": "assistant", "content": a}], tokenize=False)
                 for p, a in zip(prompts, answers, strict=True)]
        scores: list[float] = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = self.tok(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                               max_length=self.max_length, add_special_tokens=False).to(self.device)
                scores.extend(self.model(**enc).logits[:, 0].float().tolist())
        return scores

    def accuracy(self, prefs: Sequence[PreferenceRow]) -> float:
        """Share of held-out pairs where chosen outscores rejected."""
        if not prefs:
            return 0.0
        prompts = [p.prompt for p in prefs]
        chosen = self.score(prompts, [p.chosen for p in prefs])
        rejected = self.score(prompts, [p.rejected for p in prefs])
        return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(prefs)
