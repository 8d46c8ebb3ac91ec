"""Scores behind the strategies. Every score is deterministic for a given output and
model, so a redelivered output gets the same decision."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence

from shared.contracts import ModelOutput

from .rules import NEGATIVE_FEEDBACK

# punctuation -> space; then str.split() collapses runs of (Unicode) whitespace as
# re's \s+ does. Checked equal to the regex version over every code point: stored
# hashes stay valid. (translate + split is ~3x cheaper, and this runs for every output.)
_PUNCTUATION_TO_SPACE = str.maketrans({c: " " for c in string.punctuation})


def stable_fraction(*parts: str) -> float:
    """A uniform number in [0, 1) fixed by `parts` (sha256): the coin flip of the
    uniform strategy and the random key of reservoir sampling, both replayable."""
    return _fraction_of("\x1f".join(parts).encode("utf-8"))


def fraction_prefix(*parts: str) -> bytes:
    """The bytes `stable_fraction(*parts, last)` hashes before `last`, for
    `stable_fraction_after`."""
    return "".join(f"{part}\x1f" for part in parts).encode("utf-8")


def stable_fraction_after(prefix: bytes, last: str) -> float:
    """`stable_fraction(*parts, last)` with `prefix = fraction_prefix(*parts)` built
    once: the sampler flips a rule's coin for every output, and the join and the
    tuple of parts were half its cost (~1.5 -> ~0.7 us)."""
    return _fraction_of(prefix + last.encode("utf-8"))


def _fraction_of(data: bytes) -> float:
    """The first 8 bytes of sha256(data) as a number in [0, 1)."""
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2**64


def prompt_text(output: ModelOutput) -> str:
    """The text annotators judge the answers against: the conversation so far."""
    return "\n".join(f"{m.role}: {m.content}" for m in output.conversation)


def prompt_messages(output: ModelOutput) -> list[dict[str, str]]:
    """The prompt the reward model scores the answers against: the whole conversation,
    as chat messages. That is what the ranking task carries as its prompt, so what its
    preference carries and what the trainer trains the reward model on; dropping any
    of it (a trailing assistant turn, say) would give a margin on text the model never
    saw."""
    return [{"role": m.role, "content": m.content} for m in output.conversation]


def normalized_prompt_hash(output: ModelOutput) -> str:
    """Same hash for prompts that differ only in case, punctuation or spacing."""
    last_user = next((m.content for m in reversed(output.conversation) if m.role == "user"), None)
    if last_user is None:  # not as next()'s default: that would build the text for every output
        last_user = prompt_text(output)
    text = " ".join(last_user.lower().translate(_PUNCTUATION_TO_SPACE).split())
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def feedback_score(output: ModelOutput) -> float:
    """1 when the user signalled something went wrong (thumbs down, edit, regenerate)."""
    return 1.0 if any(f.kind in NEGATIVE_FEEDBACK for f in output.feedback) else 0.0


def reward_margin(rewards: Sequence[float]) -> float:
    """Gap between the two best rewards: small = the reward model can't tell = worth a label."""
    if len(rewards) < 2:
        return float("inf")
    top = sorted(rewards, reverse=True)
    return top[0] - top[1]
