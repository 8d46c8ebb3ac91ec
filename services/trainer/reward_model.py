"""Reward-model training step: a config dataclass and `train_reward_model`.

`head` mode (default) fits a Bradley-Terry head on the frozen base backbone's
last-token features of every preference up to the run's watermark: features are
cached, so a cycle costs seconds however much history there is, and the head shares
the policy's tokenizer, as PPO requires. Measured on SmolLM2-135M (docs/trainer.md):
as accurate as a full fine-tune at tens to hundreds of pairs, 4x cheaper before the
cache and ~100x after. `finetune` mode trains the backbone too, with TRL's
`RewardTrainer`, warm-starting from the promoted reward model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.models.reward import RewardModel, load_tokenizer, read_head, write_rendering

from .bradley_terry import fit_head, pair_accuracy
from .distributed import Ranks
from .features import FeatureCache, features_for
from .store import PreferenceRow


@dataclass(frozen=True)
class RewardModelConfig:
    output_dir: Path  # staging directory; the registry publishes it
    mode: Literal["head", "finetune"] = "head"
    init_path: str = ""  # finetune: the promoted reward model, or the base to start from
    layers: int = 0  # head: backbone layers the head reads (0 = all)
    l2: float = 1.0  # head: L2 penalty
    epochs: float = 1.0
    batch_size: int = 8
    learning_rate: float = 1e-4
    max_length: int = 256
    seed: int = 0
    device: str = "cpu"
    trl_overrides: dict[str, Any] = field(default_factory=dict)  # RLHF_TRAINER__HYPER__TRL__REWARD


@dataclass(frozen=True)
class RewardModelResult:
    pairs: int
    train_loss: float  # finetune: TRL's loss; head: 1 - training accuracy
    seconds: float

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


class HeadView:
    """Another version's head over the backbone this run already holds: scores with
    that version without loading its backbone again (features come from the cache)."""

    def __init__(self, backbone: RewardModel, head: Any, version: str | None = None) -> None:
        self.backbone, self.head, self.version = backbone, head.float(), version
        self.feature_key = backbone.feature_key

    def encode(self, prompts: Sequence[Any], answers: Sequence[str]) -> list[list[int]]:
        return self.backbone.encode(prompts, answers)

    def features(self, sequences: Sequence[list[int]]) -> Any:
        return self.backbone.features(sequences)

    def scores_of(self, features: Any) -> list[float]:
        return [float(v) for v in features.float() @ self.head]


def load_version(path: Path, backbone: RewardModel | None, device: str = "cpu", max_length: int = 256) -> Any:
    """A registered reward model as a scorer: a `HeadView` when it is a head over
    `backbone`, else the model itself."""
    head = read_head(path)
    if head is not None and backbone is not None and backbone.head is not None:
        config, vector = head
        if Path(config.backbone).resolve() == Path(backbone.head.backbone).resolve() and config.layers == backbone.head.layers:
            return HeadView(backbone, vector, path.name)
    return RewardModel.load(path, device=device, max_length=max_length)


def preference_features(model: Any, prefs: Sequence[PreferenceRow], cache: FeatureCache | None,
                        ranks: Ranks | None = None) -> tuple[Any, Any]:
    """(chosen, rejected) feature rows. On more than one process each rank computes a
    block of the answers (the backbone's forward passes are the cost) and all ranks
    end with every row."""
    ranks = ranks or Ranks.single()
    prompts = [p.prompt for p in prefs]
    prompts, answers = prompts + prompts, [p.chosen for p in prefs] + [p.rejected for p in prefs]
    mine = ranks.shard(len(answers))
    block = features_for(model, prompts[mine.start:mine.stop], answers[mine.start:mine.stop], cache)
    both = ranks.gather_rows(block, len(answers))
    return both[:len(prefs)], both[len(prefs):]


def accuracy(model: Any, prefs: Sequence[PreferenceRow], cache: FeatureCache | None = None,
             ranks: Ranks | None = None) -> float:
    """Share of pairs the model orders like the annotators did."""
    if not prefs:
        return 0.0
    chosen, rejected = preference_features(model, prefs, cache, ranks)
    scores_c, scores_r = model.scores_of(chosen), model.scores_of(rejected)
    return sum(c > r for c, r in zip(scores_c, scores_r, strict=True)) / len(prefs)


def train_head(backbone: RewardModel, prefs: Sequence[PreferenceRow], config: RewardModelConfig,
               cache: FeatureCache | None, ranks: Ranks | None = None) -> RewardModelResult:
    """Features sharded across ranks; every rank fits the same head on all of them (the
    fit is seconds, and the backbone then scores with it everywhere); rank 0 saves it."""
    ranks = ranks or Ranks.single()
    started = time.perf_counter()
    chosen, rejected = preference_features(backbone, prefs, cache, ranks)
    head = fit_head(chosen, rejected, l2=config.l2, weights=[p.weight for p in prefs])
    if ranks.is_main:
        backbone.save_head(config.output_dir, head)
    else:
        backbone.set_head(head)
    seconds = time.perf_counter() - started
    return RewardModelResult(pairs=len(prefs), train_loss=1.0 - pair_accuracy(head, chosen, rejected), seconds=seconds)


def pair_rows(prefs: Sequence[PreferenceRow]) -> list[dict[str, Any]]:
    """Conversational rows for TRL (RewardTrainer, DPOTrainer)."""
    return [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}], "margin": float(p.margin)}
            for p in prefs]


def train_finetuned(prefs: Sequence[PreferenceRow], config: RewardModelConfig,
                    ranks: Ranks | None = None) -> RewardModelResult:
    """Warm-start from `init_path`, train with TRL's RewardTrainer, save model + tokenizer.
    Under `accelerate launch` the trainer runs data-parallel on every rank; rank 0 writes
    the files and the others wait until they are complete."""
    ranks = ranks or Ranks.single()
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from .device import trl_common_args
    from .policy.base import trl_config

    tok = load_tokenizer(config.init_path)
    tok.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(config.init_path, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    args = trl_config(RewardConfig, dict(
        output_dir=str(config.output_dir / "_trainer"), num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
        max_length=config.max_length, seed=config.seed, **trl_common_args(config.device),
    ), config.trl_overrides, "RLHF_TRAINER__HYPER__TRL__REWARD")
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(pair_rows(prefs)),
                            processing_class=tok)
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(str(config.output_dir))  # rank 0 only (Trainer.args.should_save)
    if ranks.is_main:
        tok.padding_side = "left"
        tok.save_pretrained(str(config.output_dir))
        write_rendering(config.output_dir, config.max_length)  # readers render at the cap it trained at
        _drop_trainer_leftovers(config.output_dir)
    ranks.barrier()
    del trainer, model
    return RewardModelResult(pairs=len(prefs), train_loss=float(output.training_loss), seconds=seconds)


def _drop_trainer_leftovers(path: Path) -> None:
    import shutil

    shutil.rmtree(path / "_trainer", ignore_errors=True)
    (path / "training_args.bin").unlink(missing_ok=True)
