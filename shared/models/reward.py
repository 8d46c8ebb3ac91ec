"""Reward models as every service reads them: one rendering, one loader, one scorer.

A reward model scores a (prompt, answer) pair as a *final answer*: the chat
template's generation prompt, the answer's tokens, then EOS, read at that EOS. The
trainer (training, gates, PPO), the sampler (uncertainty margins) and the benchmarks
all render through `render`, so no component scores text the model never saw — and
an answer cut at the token cap is scored as what the annotator saw: that text,
ending there.

Two formats on disk, one interface (`RewardModel.load`):

- **head** (default): a frozen backbone — the base policy's own transformer, or its
  first `layers` layers — plus one linear head on the last-token state. The version
  directory holds only the head (`reward_head.safetensors`, `reward_head.json`, a
  few KB); the backbone is read from the path in `reward_head.json`. A frozen
  backbone makes features cacheable, so retraining on every preference so far costs
  milliseconds per cycle, and it shares the policy's tokenizer, as PPO requires.
- **finetune**: a complete `AutoModelForSequenceClassification` directory (TRL's
  `RewardTrainer`), for data sizes where training the backbone pays off.

The rendering is fixed by the code (chat template of the version's tokenizer, start
dropped over the cap, EOS last) except for its token cap, which is a trainer
setting. So each version records the cap it was trained at (`rendering.json`) and
`RewardModel.load` renders at that cap unless told otherwise: a reader with its own
default would cut long conversations elsewhere and score text the model never saw.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.registry_reader import MANIFEST

HEAD_WEIGHTS = "reward_head.safetensors"
HEAD_CONFIG = "reward_head.json"
RENDERING = "rendering.json"
DEFAULT_MAX_LENGTH = 256  # the trainer's default cap; only for a model that records none

Prompt = Sequence[dict[str, str]]


def load_tokenizer(path: str | Path):  # type: ignore[no-untyped-def]
    """The policy tokenizer, left-padded (generation), with a pad token distinct from
    EOS where the vocabulary has one: TRL's PPO finds the end of an answer by its
    first pad, so pad == EOS would cut every answer before its EOS."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        spare = next((t for t in (tok.unk_token, "<|endoftext|>", "<pad>")
                      if t is not None and t != tok.eos_token and t in tok.get_vocab()), None)
        tok.pad_token = spare if spare is not None else tok.eos_token
    tok.padding_side = "left"
    return tok


def render(tokenizer: Any, prompt: Prompt, answer: str, max_length: int) -> list[int]:
    """Token ids of `answer` as the final answer to `prompt`. Over `max_length`, the
    start of the conversation is dropped: the end of an answer decides most rankings."""
    prompt_ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return [*(list(prompt_ids) + answer_ids)[-(max_length - 1):], tokenizer.eos_token_id]


def write_rendering(directory: str | Path, max_length: int) -> None:
    """Record the token cap a version is trained at, beside its weights (the registry
    fsyncs the whole directory before publishing it)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / RENDERING).write_text(json.dumps({"max_length": int(max_length)}))


def recorded_max_length(path: str | Path) -> int | None:
    """The token cap `path` was trained at: its `rendering.json`, else the trainer's
    hyperparameters in its registry manifest (versions published before the file
    existed); None when neither says."""
    path = Path(path)
    if (path / RENDERING).is_file():
        return int(json.loads((path / RENDERING).read_text())["max_length"])
    if (path / MANIFEST).is_file():
        hyper = json.loads((path / MANIFEST).read_text()).get("hyperparameters") or {}
        if hyper.get("max_length"):
            return int(hyper["max_length"])
    return None


@dataclass(frozen=True)
class HeadConfig:
    backbone: str  # directory of the frozen backbone (the base policy)
    layers: int  # transformer layers used; 0 = all
    hidden_size: int


def read_head(path: str | Path) -> tuple[HeadConfig, Any] | None:
    """(config, head vector) of a head-format version; None for a fine-tuned one. Lets a
    caller that already holds the backbone score with another version's head without
    loading the backbone again."""
    path = Path(path)
    if not (path / HEAD_CONFIG).is_file():
        return None
    from safetensors.torch import load_file

    return HeadConfig(**json.loads((path / HEAD_CONFIG).read_text())), load_file(str(path / HEAD_WEIGHTS))["weight"].reshape(-1)


def is_reward_model(path: str | Path) -> bool:
    path = Path(path)
    return (path / HEAD_CONFIG).is_file() or (path / "config.json").is_file()


def load_classifier(backbone: str | Path, layers: int = 0):  # type: ignore[no-untyped-def]
    """A sequence classifier over `backbone` (its first `layers` layers when > 0);
    the score head comes from the caller."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(backbone), num_labels=1)
    if layers:
        config.num_hidden_layers = min(layers, config.num_hidden_layers)
    model = AutoModelForSequenceClassification.from_pretrained(str(backbone), config=config)
    return model


def backbone_of(classifier: Any) -> Any:
    return getattr(classifier, classifier.base_model_prefix)


class RewardModel:
    """Scores answers; `features` exposes the last-token states the head reads."""

    def __init__(self, classifier: Any, tokenizer: Any, *, max_length: int = DEFAULT_MAX_LENGTH, device: str = "cpu",
                 head: HeadConfig | None = None, version: str | None = None) -> None:
        classifier.config.pad_token_id = tokenizer.pad_token_id
        self.classifier = classifier.to(device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = device
        self.head = head
        self.version = version

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", max_length: int | None = None) -> "RewardModel":
        """A saved version, rendering at `max_length` or, when None, at the cap it was
        trained at (`recorded_max_length`)."""
        path = Path(path)
        if max_length is None:
            max_length = recorded_max_length(path) or DEFAULT_MAX_LENGTH
        if (path / HEAD_CONFIG).is_file():
            from safetensors.torch import load_file

            head = HeadConfig(**json.loads((path / HEAD_CONFIG).read_text()))
            classifier = load_classifier(head.backbone, head.layers)
            weights = load_file(str(path / HEAD_WEIGHTS))
            classifier.score.weight.data.copy_(weights["weight"].reshape(classifier.score.weight.shape))
            return cls(classifier, load_tokenizer(head.backbone), max_length=max_length, device=device, head=head,
                       version=path.name)
        from transformers import AutoModelForSequenceClassification

        classifier = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
        return cls(classifier, load_tokenizer(path), max_length=max_length, device=device, version=path.name)

    @classmethod
    def frozen_backbone(cls, backbone: str | Path, layers: int = 0, device: str = "cpu",
                        max_length: int = DEFAULT_MAX_LENGTH) -> "RewardModel":
        """The backbone with a zero head: for extracting features to train a head on."""
        classifier = load_classifier(backbone, layers)
        classifier.score.weight.data.zero_()
        head = HeadConfig(str(Path(backbone).resolve()), layers, int(classifier.config.hidden_size))
        return cls(classifier, load_tokenizer(backbone), max_length=max_length, device=device, head=head)

    @property
    def feature_key(self) -> str | None:
        """Identifies the frozen features (None for a fine-tuned backbone: its features
        change with every version, so they are not cached)."""
        if self.head is None:
            return None
        weights = sorted(Path(self.head.backbone).glob("*.safetensors"))
        stamp = ",".join(f"{w.name}:{w.stat().st_size}:{int(w.stat().st_mtime)}" for w in weights)
        return f"{self.head.backbone}|layers={self.head.layers}|max_length={self.max_length}|{stamp}"

    def encode(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[list[int]]:
        return [render(self.tokenizer, p, a, self.max_length) for p, a in zip(prompts, answers, strict=True)]

    def features(self, sequences: Sequence[list[int]], batch_size: int = 16):  # type: ignore[no-untyped-def]
        """Last-token hidden states, one row per sequence (batched by length)."""
        import torch

        rows: list[Any] = [None] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        backbone = backbone_of(self.classifier)
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                width = max(len(sequences[i]) for i in chunk)
                ids = torch.full((len(chunk), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
                    mask[row, :len(sequences[i])] = 1
                hidden = backbone(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
                last = hidden[torch.arange(len(chunk)), mask.sum(1).to(self.device) - 1]
                for row, i in enumerate(chunk):
                    rows[i] = last[row].float().cpu()
        return torch.stack(rows) if rows else torch.zeros((0, int(self.classifier.config.hidden_size)))

    def scores_of(self, features) -> list[float]:  # type: ignore[no-untyped-def]
        import torch

        with torch.no_grad():
            return [float(v) for v in self.classifier.score(features.to(self.device))[:, 0]]

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[float]:
        return self.scores_of(self.features(self.encode(prompts, answers)))

    def head_vector(self):  # type: ignore[no-untyped-def]
        return self.classifier.score.weight.detach().reshape(-1).float().cpu()

    def save_head(self, directory: Path, weight) -> None:  # type: ignore[no-untyped-def]
        """Write a head-format version: `weight` is the (hidden_size,) head vector, fit
        on features rendered at this model's `max_length` (recorded with it)."""
        from safetensors.torch import save_file

        assert self.head is not None, "only a frozen-backbone model has a head to save"
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"weight": weight.reshape(1, -1).contiguous().float()}, str(directory / HEAD_WEIGHTS))
        (directory / HEAD_CONFIG).write_text(json.dumps(asdict(self.head), indent=2))
        write_rendering(directory, self.max_length)
        self.set_head(weight)

    def set_head(self, weight) -> None:  # type: ignore[no-untyped-def]
        """Score with `weight` from now on (without writing it anywhere)."""
        self.classifier.score.weight.data.copy_(weight.reshape(self.classifier.score.weight.shape))
