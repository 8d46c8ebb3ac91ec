"""Label efficiency: does uncertainty sampling buy reward-model accuracy per label?

Simulation on the bundled HH-RLHF pairs (human labels are the hidden oracle):
  - features: all-MiniLM-L6-v2 embeddings (the encoder the sampler ships) of the last
    user turn + the answer (the whole dialogue would be truncated at 256 tokens and
    lose the answer); reward model: linear, r(x) = w . phi(x), fitted as a
    Bradley-Terry model (logistic loss on phi(chosen) - phi(rejected), L2, L-BFGS);
  - held-out test pairs split by prompt (no prompt in both pool and test);
  - `uniform`: K pairs drawn at random from the pool;
  - `uncertainty`: start from 20 random pairs, then repeatedly label the 20 pool pairs
    whose current reward margin |r(a) - r(b)| is smallest (what the sampler's
    uncertainty rule prefers);
  - accuracy on held-out pairs after K labels, mean over seeds.

Run: .venv/bin/python -m bench.sampler_label_efficiency
"""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from services.sampler.novelty import MiniLMEncoder
from shared.datasets.hh_rlhf import load_pairs

RESULTS = Path(__file__).parent / "results" / "sampler_label_efficiency.json"
BUDGETS = (20, 40, 80, 160, 320, 640)
BATCH = 20


def train(diffs: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """Bradley-Terry fit: minimise sum log(1 + exp(-d.w)) + l2/2 |w|^2."""

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = diffs @ w
        value = float(np.sum(np.logaddexp(0, -z)) + 0.5 * l2 * w @ w)
        grad = -(diffs.T @ (1 / (1 + np.exp(z)))) + l2 * w
        return value, grad

    return minimize(loss, np.zeros(diffs.shape[1]), jac=True, method="L-BFGS-B",
                    options={"maxiter": 200}).x


def accuracy(w: np.ndarray, diffs: np.ndarray) -> float:
    return float(np.mean(diffs @ w > 0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    pairs = list(load_pairs())
    encoder = MiniLMEncoder()
    last_user = [next(m.content for m in reversed(p.prompt) if m.role == "user") for p in pairs]
    texts_c = [f"user: {u}\nassistant: {p.chosen}" for u, p in zip(last_user, pairs)]
    texts_r = [f"user: {u}\nassistant: {p.rejected}" for u, p in zip(last_user, pairs)]
    phi_c, phi_r = encoder.encode(texts_c), encoder.encode(texts_r)
    diffs = phi_c - phi_r
    in_test = np.array([int(hashlib.sha256(p.prompt_text.encode()).hexdigest(), 16) % 5 == 0 for p in pairs])
    test, pool = diffs[in_test], diffs[~in_test]
    curves: dict[str, dict[int, list[float]]] = {"uniform": {}, "uncertainty": {}}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(pool))
        for k in BUDGETS:
            curves["uniform"].setdefault(k, []).append(accuracy(train(pool[order[:k]]), test))
        labelled = list(order[:BATCH])
        for k in BUDGETS:
            while len(labelled) < k:
                w = train(pool[labelled])
                margins = np.abs(pool @ w)
                margins[labelled] = np.inf
                labelled += list(np.argsort(margins)[:BATCH])
            curves["uncertainty"].setdefault(k, []).append(accuracy(train(pool[labelled[:k]]), test))
    summary = {name: {k: round(float(np.mean(v)), 4) for k, v in curve.items()} for name, curve in curves.items()}
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pairs": len(pairs), "pool": int(len(pool)), "test": int(len(test)), "seeds": args.seeds,
        "heldout_accuracy": summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"reward-model accuracy on {len(test)} held-out HH-RLHF pairs, mean of {args.seeds} seeds")
    print(f"{'labels':>8}{'uniform':>10}{'uncertainty':>13}")
    for k in BUDGETS:
        print(f"{k:>8}{summary['uniform'][k]:>10.3f}{summary['uncertainty'][k]:>13.3f}")


if __name__ == "__main__":
    main()
