"""A disk cache of frozen-backbone features, so a run only pays for answers it has
not seen before.

With a frozen backbone the last-token state of a rendered (prompt, answer) never
changes, so each is computed once and kept: the reward-model head, the judges, the
live agreement and the gates all read it from here. Keys are the backbone's
identity plus the token ids, so a different base model or layer count misses.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.models.reward import Prompt, RewardModel
from shared.sqlite_wal import connect_wal


class FeatureCache:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect_wal(path, timeout_s=30)
        self._conn.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._conn.close()

    @staticmethod
    def key(model_key: str, ids: list[int]) -> str:
        return hashlib.sha256(f"{model_key}|{','.join(map(str, ids))}".encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start:start + 500])
                rows = self._conn.execute(
                    f"SELECT key, vector FROM features WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                found.update({k: np.frombuffer(v, dtype=np.float32) for k, v in rows})
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT OR REPLACE INTO features (key, vector) VALUES (?, ?)",
                                   [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()])
            self._conn.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM features").fetchone()[0])


def features_for(model: RewardModel, prompts: Sequence[Prompt], answers: Sequence[str],
                 cache: FeatureCache | None) -> Any:
    """Feature rows for the pairs, computing only what the cache lacks."""
    import torch

    sequences = model.encode(prompts, answers)
    model_key = model.feature_key
    if cache is None or model_key is None:
        return model.features(sequences)
    keys = [FeatureCache.key(model_key, ids) for ids in sequences]
    found = cache.get_many(sorted(set(keys)))
    missing = sorted({k: i for i, k in enumerate(keys) if k not in found}.items())
    if missing:
        computed = model.features([sequences[i] for _k, i in missing])
        fresh = {k: computed[j].numpy() for j, (k, _i) in enumerate(missing)}
        cache.put_many(fresh)
        found.update(fresh)
    return torch.tensor(np.stack([found[k] for k in keys])) if keys else model.features([])
