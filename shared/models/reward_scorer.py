"""Scores candidates with the promoted reward model, reloaded when the registry moves:
the sampler's uncertainty rule and the annotation service's suggestions use it.

The model comes from the trainer's registry, found through the reader every service
shares (shared.registry_reader: the same pointer, the same test for a complete
version), and is read exactly as the trainer reads it (shared.models.reward: the same
rendering of prompt + answer at the token cap the version was trained at, the same
head), so a margin here is a difference of scores the trainer would compute. Until
the trainer has promoted one the scorer answers None and the rule falls back to its
`fallback_rate`. A new version is picked up when the registry pointer changes
(checked at most every `refresh_s`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from shared.registry_reader import Pointer, RegistryReader

from .reward import RewardModel, is_reward_model

log = logging.getLogger(__name__)

# Returns the directory of the reward model to use, or None when there is none yet.
ModelLocator = Callable[[], Path | None]
Prompt = Sequence[dict[str, str]]


class RewardScorer:
    """`max_length` None (the default): render at the cap the loaded version was
    trained at; a number overrides it (benchmarks only: it scores other text)."""

    def __init__(self, locate: ModelLocator, refresh_s: float = 30.0, max_length: int | None = None) -> None:
        self._locate = locate
        self._refresh_s = refresh_s
        self._max_length = max_length
        self._loaded_from: Path | None = None
        self._model: RewardModel | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()

    @property
    def version(self) -> str | None:
        return self._loaded_from.name if self._loaded_from else None

    def rewards(self, prompt: Prompt, answers: Sequence[str]) -> list[float] | None:
        self._maybe_reload()
        model = self._model
        if model is None:
            return None
        return model.score([prompt] * len(answers), list(answers))

    def _maybe_reload(self) -> None:
        if self._checked_at and time.monotonic() - self._checked_at < self._refresh_s:
            return  # also while none is published: no registry read per scored output
        with self._lock:
            self._checked_at = time.monotonic()
            try:
                path = self._locate()
            except Exception:  # a broken registry must not stop sampling
                log.exception("cannot locate the reward model")
                return
            if path is None or path == self._loaded_from:
                return
            self._model = RewardModel.load(path, max_length=self._max_length)
            self._loaded_from = path
            log.info("scoring with reward model %s", path)


def directory_locator(directory: str | None) -> ModelLocator:
    """A fixed directory (or none): for setups without a registry."""
    path = Path(directory) if directory else None
    return lambda: path if path is not None and is_reward_model(path) else None


def registry_locator(registry_dir: str | Path, pointer: Pointer = "promoted") -> ModelLocator:
    """The trainer registry's promoted reward model; None until the trainer has
    promoted one (or while the pointer names nothing complete)."""
    reader = RegistryReader(registry_dir)

    def locate() -> Path | None:
        path = reader.pointed_path("reward", pointer)
        return path if path is not None and is_reward_model(path) else None

    return locate
