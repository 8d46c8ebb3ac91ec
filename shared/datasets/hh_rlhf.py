"""HH-RLHF preference pairs, parsed into the loop's own message shapes.

Each line holds a `chosen` and a `rejected` dialogue that share every turn but the
last assistant answer; that shared part is the prompt.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.contracts import ChatMessage

BUNDLED = Path(__file__).with_name("hh_rlhf_harmless_test.jsonl.gz")
_TURN = re.compile(r"\n\n(Human|Assistant): ")


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[ChatMessage, ...]
    chosen: str
    rejected: str

    @property
    def prompt_text(self) -> str:
        return "\n".join(f"{m.role}: {m.content}" for m in self.prompt)


def parse_dialogue(text: str) -> list[ChatMessage]:
    parts = _TURN.split(text)
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append(ChatMessage(role="user" if speaker == "Human" else "assistant", content=content.strip()))
    return messages


def load_pairs(path: Path = BUNDLED, limit: int | None = None) -> Iterator[PreferencePair]:
    """Pairs whose two dialogues end in an assistant answer after the same prompt."""
    count = 0
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            chosen, rejected = parse_dialogue(row["chosen"]), parse_dialogue(row["rejected"])
            if not chosen or not rejected or chosen[-1].role != "assistant" or rejected[-1].role != "assistant":
                continue
            if chosen[:-1] != rejected[:-1] or not chosen[:-1] or chosen[-1].content == rejected[-1].content:
                continue
            yield PreferencePair(tuple(chosen[:-1]), chosen[-1].content, rejected[-1].content)
            count += 1
            if limit is not None and count >= limit:
                return


@dataclass(frozen=True)
class PromptSplit:
    """The bundled prompts (first user turn, distinct) in three disjoint parts:
    `replay` is the demo's traffic, `trainer_eval` a fixed evaluation set the trainer's
    gates may use, `heldout` what the demo and the efficacy benchmark measure the served
    policy on — never sent as traffic, never trained on, never seen by the gates."""

    replay: list[list[dict[str, str]]]
    trainer_eval: list[list[dict[str, str]]]
    heldout: list[list[dict[str, str]]]


def first_user_prompts(path: Path = BUNDLED) -> list[list[dict[str, str]]]:
    """Each distinct first user turn, in file order (short prompts keep CPU generation quick)."""
    seen: set[str] = set()
    prompts = []
    for pair in load_pairs(path):
        first = next(m for m in pair.prompt if m.role == "user").content
        key = " ".join(first.lower().split())
        if key not in seen:
            seen.add(key)
            prompts.append([{"role": "user", "content": first}])
    return prompts


def prompt_split(heldout: int = 128, trainer_eval: int = 128, path: Path = BUNDLED) -> PromptSplit:
    prompts = first_user_prompts(path)
    cut = len(prompts) - heldout - trainer_eval
    return PromptSplit(prompts[:cut], prompts[cut:cut + trainer_eval], prompts[cut + trainer_eval:])
