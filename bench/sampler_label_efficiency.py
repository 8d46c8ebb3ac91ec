"""Label efficiency: does uncertainty sampling buy reward-model accuracy per label?

Simulation on the bundled HH-RLHF pairs (the human labels are the hidden oracle),
with the loop's real reward model: the trainer's Bradley-Terry head on the frozen
SmolLM2-135M-Instruct backbone, features rendered exactly as the trainer renders them
(shared.models.reward) and cached (services.trainer.features).

  - held-out test pairs split by prompt (no prompt in both pool and test);
  - `uniform`: K pairs drawn at random from the pool;
  - `uncertainty`: start from 20 random pairs, then repeatedly label the 20 pool pairs
    whose current reward margin |r(a) - r(b)| is smallest (what the sampler's
    uncertainty rule prefers);
  - accuracy on held-out pairs after K labels, mean over seeds.

Run: .venv/bin/python -m bench.sampler_label_efficiency [--pairs 800 --seeds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from services.trainer.bradley_terry import fit_head
from services.trainer.features import FeatureCache, features_for
from shared.datasets.hh_rlhf import load_pairs
from shared.models.reward import RewardModel
from shared.settings import DEFAULT_BASE_MODEL_NAME

RESULTS = Path(__file__).parent / "results" / "sampler_label_efficiency.json"
REPO = Path(__file__).resolve().parents[1]
BUDGETS = (20, 40, 80, 160, 320, 640)
BATCH = 20


def accuracy(head: torch.Tensor, diffs: torch.Tensor) -> float:
    return float(((diffs @ head) > 0).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=800, help="HH-RLHF pairs used (features cost ~0.5 s a pair)")
    parser.add_argument("--l2", type=float, default=1.0)
    args = parser.parse_args()
    models = Path(os.environ.get("RLHF_MODELS_DIR", REPO / ".rlhf-loop" / "models"))
    pairs = list(load_pairs(limit=args.pairs))
    backbone = RewardModel.frozen_backbone(models / DEFAULT_BASE_MODEL_NAME, max_length=256)
    cache = FeatureCache(REPO / ".rlhf-loop" / "bench-features.sqlite")
    started = time.perf_counter()
    prompts = [[m.model_dump() for m in p.prompt] for p in pairs]
    chosen = features_for(backbone, prompts, [p.chosen for p in pairs], cache)
    rejected = features_for(backbone, prompts, [p.rejected for p in pairs], cache)
    feature_seconds = time.perf_counter() - started
    diffs = (chosen - rejected).float()
    in_test = torch.tensor([int(hashlib.sha256(p.prompt_text.encode()).hexdigest(), 16) % 5 == 0 for p in pairs])
    test, pool = diffs[in_test], diffs[~in_test]
    zeros = torch.zeros_like(pool[:1])

    def train(rows: torch.Tensor) -> torch.Tensor:
        return fit_head(rows, zeros.expand_as(rows), l2=args.l2)

    budgets = [k for k in BUDGETS if k <= len(pool)]
    curves: dict[str, dict[int, list[float]]] = {"uniform": {}, "uncertainty": {}}
    for seed in range(args.seeds):
        order = np.random.default_rng(seed).permutation(len(pool))
        for k in budgets:
            curves["uniform"].setdefault(k, []).append(accuracy(train(pool[order[:k]]), test))
        labelled = list(order[:BATCH])
        for k in budgets:
            while len(labelled) < k:
                margins = (pool @ train(pool[labelled])).abs().numpy()
                margins[labelled] = np.inf
                labelled += list(np.argsort(margins)[:BATCH])
            curves["uncertainty"].setdefault(k, []).append(accuracy(train(pool[labelled[:k]]), test))
    summary = {name: {k: round(float(np.mean(v)), 4) for k, v in curve.items()} for name, curve in curves.items()}
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reward_model": f"Bradley-Terry head on frozen {DEFAULT_BASE_MODEL_NAME} features (l2={args.l2})",
        "pairs": len(pairs), "pool": int(len(pool)), "test": int(len(test)), "seeds": args.seeds,
        "feature_seconds": round(feature_seconds, 1), "heldout_accuracy": summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"reward-model accuracy on {len(test)} held-out HH-RLHF pairs, mean of {args.seeds} seeds")
    print(f"{'labels':>8}{'uniform':>10}{'uncertainty':>13}")
    for k in budgets:
        print(f"{k:>8}{summary['uniform'][k]:>10.3f}{summary['uncertainty'][k]:>13.3f}")


if __name__ == "__main__":
    main()
