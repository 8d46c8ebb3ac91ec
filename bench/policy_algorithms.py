"""PPO, RLOO, GRPO and DPO on the same budget, through the trainer's own optimisers.

One preference data set for all: the base SmolLM2-135M-Instruct answers `--prompts`
training prompts `--candidates` times, the demo's annotators' preference (hidden from
the trainer) ranks each group, and the pairs train one reward-model head (trainer
code: services.trainer.reward_model). Then each algorithm starts from the base with
the same LoRA shape and learning rate and sees the same number of generated answers
(`--episodes`; DPO: optimiser steps x batch = the same number of pairs seen). Each
result is measured like the loop measures itself: held-out prompts, one seeded
sample each, scored by the annotators' preference against the base (sign test).

Run: .venv/bin/python -m bench.policy_algorithms [--episodes 64 --prompts 48 --eval-prompts 64]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from services.demo.oracles import ORACLES
from services.demo.settings import DemoOptions
from services.trainer.evaluate import Answer, PolicySampler
from services.trainer.features import FeatureCache
from services.trainer.policy.base import PolicyData, PolicyTrainConfig, get_optimizer
from services.trainer.reward_model import RewardModelConfig, accuracy, pair_rows, train_head
from services.trainer.settings import Hyperparameters
from services.trainer.store import PreferenceRow, prompt_hash
from shared.datasets.hh_rlhf import prompt_split
from shared.models.reward import RewardModel
from shared.settings import DEFAULT_BASE_MODEL_NAME
from shared.stats import compare, mean_interval

RESULTS = Path(__file__).parent / "results" / "policy_algorithms.json"
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def preference_rows(prompts: list[Any], groups: list[list[str]], oracle_name: str) -> list[PreferenceRow]:
    """Every ordered pair of a group the preference decides (ties give nothing, as in Argilla)."""
    oracle, rows = ORACLES[oracle_name], []
    for prompt, answers in zip(prompts, groups, strict=True):
        scores = oracle(prompt[-1]["content"], answers)
        for i in range(len(answers)):
            for j in range(len(answers)):
                if scores[i] > scores[j]:
                    rows.append(PreferenceRow(seq=len(rows) + 1, preference_id=str(len(rows)), prompt=prompt,
                                              prompt_hash=prompt_hash(prompt), chosen=answers[i],
                                              rejected=answers[j], margin=1.0, guideline_version="bench",
                                              created_at=""))
    return rows


def base_data(base: Path, train_prompts: list[Any], held: list[Any], candidates: int,
              options: DemoOptions) -> tuple[list[list[str]], list[Answer]]:
    """The base's answer groups for the training prompts and its answers to the held-out
    ones; cached on disk (they depend only on the base and the sampling settings)."""
    key = hashlib.sha256(json.dumps([str(base), train_prompts, held, candidates, options.max_tokens,
                                     options.temperature]).encode()).hexdigest()[:16]
    cache = REPO / ".rlhf-loop" / "bench-cache" / f"base-answers-{key}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        return saved["groups"], [Answer(**a) for a in saved["held"]]
    sampler = PolicySampler(str(base), {})
    groups: list[list[str]] = [[] for _ in train_prompts]
    for k in range(candidates):
        for i, answer in enumerate(sampler.generate(None, train_prompts, max_new_tokens=options.max_tokens,
                                                    temperature=options.temperature, seed=1000 * (k + 1))):
            groups[i].append(answer.text)
    held_answers = sampler.generate(None, held, max_new_tokens=options.max_tokens, temperature=options.temperature)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"groups": groups, "held": [a.__dict__ for a in held_answers]}))
    return groups, held_answers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=64, help="answers generated per online algorithm")
    parser.add_argument("--prompts", type=int, default=48, help="training prompts")
    parser.add_argument("--candidates", type=int, default=5, help="answers per prompt in the preference data")
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--algorithms", nargs="*", default=["ppo", "rloo", "grpo", "dpo"])
    parser.add_argument("--hyper", action="append", default=[], metavar="KEY=VALUE",
                        help="override a trainer hyperparameter for every algorithm (e.g. policy_batch_size=16)")
    parser.add_argument("--rm-prompts", type=int, default=0,
                        help="train the reward model on only this many of the prompts (0: all), like an early cycle")
    args = parser.parse_args()
    base = REPO / ".rlhf-loop" / "models" / DEFAULT_BASE_MODEL_NAME
    options = DemoOptions()
    hyper = Hyperparameters(**dict(item.split("=", 1) for item in args.hyper))
    split = prompt_split()
    train_prompts, held = split.replay[:args.prompts], split.heldout[:args.eval_prompts]
    started = time.perf_counter()
    groups, base_answers = base_data(base, train_prompts, held, args.candidates, options)
    data_seconds = time.perf_counter() - started
    oracle = ORACLES[options.oracle]
    base_scores = [oracle(p[-1]["content"], [a.text])[0] for p, a in zip(held, base_answers, strict=True)]
    rm_prompts = args.rm_prompts or len(train_prompts)
    rows = preference_rows(train_prompts[:rm_prompts], groups[:rm_prompts], options.oracle)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rlhf-algorithms-") as tmp:
        root = Path(tmp)
        backbone = RewardModel.frozen_backbone(base, max_length=hyper.max_length)
        cache = FeatureCache(root / "features.sqlite")
        train_head(backbone, rows, RewardModelConfig(output_dir=root / "rm", l2=hyper.rm_l2), cache)
        rm_train_accuracy = accuracy(backbone, rows, cache)
        del backbone
        for name in args.algorithms:
            budget = {"ppo_episodes": args.episodes, "group_steps": max(1, args.episodes // hyper.policy_batch_size),
                      "dpo_steps": max(1, args.episodes // hyper.policy_batch_size)}
            config = PolicyTrainConfig(base_model=str(base), reward_model=str(root / "rm"), output_dir=root / name,
                                       hyper=hyper.model_copy(update=budget))
            run_started = time.perf_counter()
            result = get_optimizer(name).train(config, PolicyData(prompts=train_prompts, pairs=pair_rows(rows)))
            seconds = time.perf_counter() - run_started
            evaluator = PolicySampler(str(base), {name: root / name})
            answers = evaluator.generate(name, held, max_new_tokens=options.max_tokens,
                                         temperature=options.temperature)
            kl = evaluator.sequence_kl(name, None, answers)
            del evaluator
            scores = [oracle(p[-1]["content"], [a.text])[0] for p, a in zip(held, answers, strict=True)]
            comparison = compare(scores, base_scores)
            mean, low, high = mean_interval(scores)
            results[name] = {"train_seconds": round(seconds, 1), "answers_seen": result.episodes,
                             "vs_base": comparison.as_dict(), "oracle_mean": round(mean, 3),
                             "oracle_ci95": [round(low, 3), round(high, 3)], "kl_to_base": round(kl, 2),
                             "finished_rate": sum(a.finished for a in answers) / len(answers),
                             "words_mean": round(sum(len(a.text.split()) for a in answers) / len(answers), 1),
                             "sample": answers[0].text[:200]}
            print(name, json.dumps(results[name]), flush=True)
    mean, low, high = mean_interval(base_scores)
    report = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "oracle": options.oracle, "train_prompts": len(train_prompts), "rm_prompts": rm_prompts, "pairs": len(rows),
        "rm_train_accuracy": round(rm_train_accuracy, 3), "data_seconds": round(data_seconds, 1),
        "eval_prompts": len(held), "base": {"oracle_mean": round(mean, 3), "oracle_ci95": [round(low, 3), round(high, 3)],
                                            "finished_rate": sum(a.finished for a in base_answers) / len(held)},
        "algorithms": results, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "hyperparameters": hyper.model_dump(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
