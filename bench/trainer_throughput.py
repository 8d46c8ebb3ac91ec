"""Trainer throughput: our training steps against raw TRL, same model, same data, same
run — the tiny test model (default) or SmolLM2-135M-Instruct (`--model smollm2`, the
demo's model; results in trainer_throughput_smollm2.json).

  reward model - RewardTrainer on prompt/chosen/rejected pairs     (pairs/s)
                 (our `finetune` mode; the default `head` mode, a Bradley-Terry head
                 on frozen cached features, is timed beside it: cold and warm cache)
  PPO          - PPOTrainer, LoRA policy, value + reward model      (episodes/s)
                 (raw: TRL's usual setup, a full trainable value model; ours: the
                 critic shares the reward model's frozen backbone, so the ratio
                 includes that design, not only wrapper overhead)
  GRPO, RLOO   - GRPOTrainer / RLOOTrainer, LoRA policy, groups of  (episodes/s)
                 `--generations` answers scored by the reward model (raw: the model
                 passed to TRL as its reward function; ours: services.trainer's
                 GroupOptimizer, which scores answers through shared.models.reward)

The machine's 2 cores are shared, so timings are noisy: best and median of
`--rounds` are both reported. Both sides do the same work end to end (load models, build the trainer, train,
save); ours goes through services.trainer (config dataclass -> step function),
raw TRL is the same calls written inline. Rounds alternate which side goes first.
Memory: peak RSS; RSS after each of 3 consecutive full cycles run in-process (RM +
PPO + evaluation, as a job process runs them); and the coordinator's RSS after each
of 3 runs launched as job processes, the way the service runs them.

Run: .venv/bin/python -m bench.trainer_throughput [--pairs 256 --episodes 64 --rounds 3]
     .venv/bin/python -m bench.trainer_throughput --model smollm2   (~10 minutes on 2 cores;
     the model prepared by `rlhf-loop models smollm2`; smaller default sizes, no memory cycles)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).parent / "results" / "trainer_throughput.json"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_prefs(n: int) -> list[Any]:
    from services.trainer.store import PreferenceRow

    return [PreferenceRow(seq=i, preference_id=str(i), prompt=[{"role": "user", "content": f"question number {i}?"}],
                           prompt_hash=str(i), chosen=f"here is a helpful answer {i} with detail",
                           rejected="I am sorry, I cannot help", margin=1.0, guideline_version="g1",
                           created_at="2026-01-01T00:00:00+00:00") for i in range(n)]


def common() -> dict[str, Any]:
    from services.trainer.device import resolve_device, trl_common_args

    return trl_common_args(resolve_device())


# One LoRA shape on both sides: raw builds PEFT's config itself, ours sets the trainer's
# hyperparameters that become the same config (services.trainer.policy.base.lora_config).
LORA_R, LORA_ALPHA, LORA_TARGETS = 8, 16, ["q_proj", "v_proj"]
OUR_LORA: dict[str, Any] = {"lora_r": LORA_R, "lora_alpha": LORA_ALPHA, "lora_target_modules": LORA_TARGETS}


def raw_lora() -> Any:
    from peft import LoraConfig

    return LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      task_type="CAUSAL_LM")


# -- reward model ---------------------------------------------------------------------

def raw_rm(init: str, out: Path, prefs: list[Any], batch: int) -> float:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from services.trainer.reward_model import pair_rows

    rows = pair_rows(prefs)
    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(init)
    model = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1)
    args = RewardConfig(output_dir=str(out / "_t"), num_train_epochs=1, per_device_train_batch_size=batch,
                        learning_rate=1e-4, max_length=128, **common())
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    trainer.save_model(str(out))
    elapsed = time.perf_counter() - started
    del trainer, model
    return elapsed


def our_rm(init: str, out: Path, prefs: list[Any], batch: int) -> float:
    from services.trainer.reward_model import RewardModelConfig, train_finetuned

    started = time.perf_counter()
    train_finetuned(prefs, RewardModelConfig(output_dir=out, mode="finetune", init_path=init, batch_size=batch,
                                             learning_rate=1e-4, max_length=128))
    return time.perf_counter() - started


def head_rm(backbone_path: str, out: Path, prefs: list[Any], cache_file: Path) -> float:
    from services.trainer.features import FeatureCache
    from services.trainer.reward_model import RewardModelConfig, train_head
    from shared.models.reward import RewardModel

    started = time.perf_counter()
    backbone = RewardModel.frozen_backbone(backbone_path, max_length=128)
    cache = FeatureCache(cache_file)
    train_head(backbone, prefs, RewardModelConfig(output_dir=out), cache)
    cache.close()
    return time.perf_counter() - started


# -- PPO ------------------------------------------------------------------------------

def raw_ppo(policy_path: str, rm_path: str, out: Path, prompts: list[Any], episodes: int, batch: int) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(policy_path)
    tok.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    reward = AutoModelForSequenceClassification.from_pretrained(rm_path, num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(rm_path, num_labels=1)
    ds = Dataset.from_list([{"input_ids": tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True,
                                                                  return_dict=False)} for p in prompts])
    args = PPOConfig(output_dir=str(out / "_t"), per_device_train_batch_size=batch, num_mini_batches=1,
                     total_episodes=episodes, response_length=32, learning_rate=1e-5, kl_coef=0.05, stop_token="eos",
                     missing_eos_penalty=1.0, num_sample_generations=0, **common())
    lora = raw_lora()
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                         train_dataset=ds, value_model=value, peft_config=lora)
    trainer.train()
    trainer.save_model(str(out))
    value.save_pretrained(str(out / "value"))
    elapsed = time.perf_counter() - started
    del trainer, policy, reward, value
    return elapsed


def our_ppo(policy_path: str, rm_path: str, out: Path, prompts: list[Any], episodes: int, batch: int) -> float:
    from services.trainer.policy.base import PolicyData, PolicyTrainConfig
    from services.trainer.policy.ppo import PpoOptimizer
    from services.trainer.settings import Hyperparameters

    # the raw side's settings, so both do the same rollouts and updates
    hyper = Hyperparameters(ppo_episodes=episodes, policy_batch_size=batch, response_length=32, max_length=256,
                            policy_learning_rate=1e-5, ppo_epochs=1, ppo_mini_batches=1, kl_coef=0.05,
                            missing_eos_penalty=1.0, **OUR_LORA)
    started = time.perf_counter()
    PpoOptimizer().train(PolicyTrainConfig(base_model=policy_path, reward_model=rm_path, output_dir=out, hyper=hyper),
                         PolicyData(prompts=prompts, pairs=[]))
    return time.perf_counter() - started


# -- GRPO / RLOO ----------------------------------------------------------------------

def group_trl(name: str) -> tuple[Any, Any]:
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    return {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[name]


def raw_group(name: str, policy_path: str, rm_path: str, out: Path, prompts: list[Any], steps: int, batch: int,
              generations: int) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    config_class, trainer_class = group_trl(name)
    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(policy_path)
    tok.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    reward = AutoModelForSequenceClassification.from_pretrained(rm_path, num_labels=1)
    args = config_class(output_dir=str(out / "_t"), per_device_train_batch_size=batch, num_generations=generations,
                        max_completion_length=32, learning_rate=1e-5, beta=0.05, temperature=0.7, top_k=0, top_p=1.0,
                        max_steps=steps, **common())
    lora = raw_lora()
    trainer = trainer_class(model=policy, reward_funcs=reward, args=args, reward_processing_classes=tok,
                            train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                            processing_class=tok, peft_config=lora)
    trainer.train()
    trainer.save_model(str(out))
    elapsed = time.perf_counter() - started
    del trainer, policy, reward
    return elapsed


def our_group(name: str, policy_path: str, rm_path: str, out: Path, prompts: list[Any], steps: int, batch: int,
              generations: int) -> float:
    from services.trainer.policy.base import PolicyData, PolicyTrainConfig
    from services.trainer.policy.group import GroupOptimizer
    from services.trainer.settings import Hyperparameters

    hyper = Hyperparameters(num_generations=generations, group_steps=steps, policy_batch_size=batch,
                            response_length=32, max_length=256, policy_learning_rate=1e-5, kl_coef=0.05,
                            temperature=0.7, **OUR_LORA)
    started = time.perf_counter()
    GroupOptimizer(name, lambda: group_trl(name)).train(
        PolicyTrainConfig(base_model=policy_path, reward_model=rm_path, output_dir=out, hyper=hyper),
        PolicyData(prompts=prompts, pairs=[]))
    return time.perf_counter() - started


# -- cycles ---------------------------------------------------------------------------

def full_cycles(root: Path, policy_path: str, rm_base: str, n_pairs: int, episodes: int, cycles: int) -> list[float]:
    """`cycles` complete runs through the pipeline in this process (store -> RM -> PPO ->
    gates -> registry); RSS after each, models released between cycles."""
    from services.trainer.pipeline import TrainingRun
    from services.trainer.registry import ModelRegistry
    from services.trainer.reporting import RunReporter
    from services.trainer.settings import TrainerSettings
    from services.trainer.store import PreferenceStore
    from tests.trainer_support import LENIENT_GATES, make_preference

    settings = TrainerSettings(data_dir=str(root), trainer={
        "base_model": policy_path, "reward_base_model": rm_base, "gates": LENIENT_GATES,
        "hyper": {"ppo_episodes": episodes, "response_length": 32, "max_length": 128, "ppo_epochs": 1,
                  "ppo_mini_batches": 1}})
    store = PreferenceStore(root / "store.sqlite")
    registry = ModelRegistry(root / "registry")
    reporter = RunReporter(store, lambda topic, event: None)  # no broker: events dropped
    after: list[float] = []
    for cycle in range(cycles):
        for i in range(n_pairs):
            store.add_preference(make_preference(cycle * n_pairs + i))
        run_id = f"bench-{cycle}"
        store.create_run(run_id, "bench", store.max_seq(), n_pairs)
        store.try_lock(run_id, 600)
        TrainingRun(run_id=run_id, watermark=store.max_seq(), options=settings.trainer, store=store,
                    registry=registry, reporter=reporter, work_dir=root).execute()
        store.release_lock(run_id)
        gc.collect()
        after.append(round(rss_mb(), 1))
    store.close()
    return after


def daemon_cycles(root: Path, policy_path: str, rm_base: str, cycles: int) -> list[float]:
    """The service side: `cycles` runs through the coordinator, each in a job process
    (real embedded broker for the events); the coordinator's RSS after each."""
    from prometheus_client import CollectorRegistry

    from services.trainer.service import CONSUMES, PRODUCES, build_coordinator, open_store
    from shared.bus import EventProducer
    from shared.bus.admin import ensure_topics
    from shared.embedded.broker import EmbeddedBroker
    from services.trainer.metrics import TrainerMetrics
    from tests.trainer_support import make_preference, trainer_settings

    after: list[float] = []
    with EmbeddedBroker() as broker:
        kafka = broker.kafka_settings()
        settings = trainer_settings(root, kafka, (Path(policy_path), Path(rm_base)))
        ensure_topics(kafka, [(t.name, t.partitions) for t in {*CONSUMES, *PRODUCES}])
        store, producer = open_store(settings), EventProducer(kafka)
        coordinator = build_coordinator(settings, store, producer, TrainerMetrics(CollectorRegistry()))
        for cycle in range(cycles):
            for i in range(24):
                store.add_preference(make_preference(cycle * 24 + i))
            state = coordinator.wait(coordinator.start_run("bench"), 600)
            assert state == "succeeded", state
            gc.collect()
            after.append(round(rss_mb(), 1))
        producer.close()
        store.close()
    return after


SIZES = {  # defaults per model: the tiny model's run takes ~2 minutes, SmolLM2's ~10
    "tiny": {"pairs": 1024, "episodes": 64, "batch": 8, "rounds": 5},
    "smollm2": {"pairs": 48, "episodes": 16, "batch": 4, "rounds": 2},
}
ALGORITHMS = ("rm", "ppo", "grpo", "rloo")


def where() -> str:
    """The device both sides train on, as `common()` configures TRL for it."""
    import torch

    from services.trainer.device import resolve_device

    if resolve_device() == "cuda":
        precision = "bf16 autocast" if torch.cuda.is_bf16_supported() else "fp32"
        return f"CUDA {torch.cuda.get_device_name()}, {precision}"
    return "CPU, fp32"


def models(choice: str, root: Path, smollm2_dir: Path) -> tuple[str, str, str]:
    """(policy, reward-model base, description). SmolLM2 is both, as in the demo."""
    if choice == "smollm2":
        if not (smollm2_dir / "config.json").exists():
            raise SystemExit(f"SmolLM2 not prepared at {smollm2_dir}: run `rlhf-loop models smollm2` first")
        return (str(smollm2_dir), str(smollm2_dir),
                f"SmolLM2-135M-Instruct ({smollm2_dir.name}), LoRA r=8 on q_proj/v_proj, {where()}")
    from services.trainer.tiny_models import build_tiny_models

    policy, rm_base = (str(p) for p in build_tiny_models(root / "models"))
    return policy, rm_base, f"tiny Llama (hidden 64, 2 layers), LoRA r=8 on q_proj/v_proj, {where()}"


def group_steps(args: argparse.Namespace) -> int:
    """GRPO/RLOO optimiser steps: each takes `batch` answers, `episodes` in all."""
    return max(1, args.episodes // args.batch)


def one_round(r: int, root: Path, policy: str, rm_base: str, prefs: list[Any], args: argparse.Namespace,
              times: dict[str, list[float]]) -> None:
    """Every algorithm on both sides; which side goes first alternates by round. Each
    side's policy runs score with the reward model that side just trained."""
    prompts = [p.prompt for p in prefs]
    steps = group_steps(args)
    sides = [("raw", raw_rm, raw_ppo, raw_group), ("ours", our_rm, our_ppo, our_group)]
    for name, rm_fn, ppo_fn, group_fn in (sides if r % 2 == 0 else sides[::-1]):
        rm_out = root / f"rm-{name}-{r}"
        times.setdefault(f"{name}_rm", []).append(rm_fn(rm_base, rm_out, prefs, args.batch))
        times.setdefault(f"{name}_ppo", []).append(
            ppo_fn(policy, str(rm_out), root / f"ppo-{name}-{r}", prompts[: args.episodes * 2], args.episodes,
                   args.batch))
        for algorithm in ("grpo", "rloo"):
            times.setdefault(f"{name}_{algorithm}", []).append(
                group_fn(algorithm, policy, str(rm_out), root / f"{algorithm}-{name}-{r}", prompts[: steps * 2],
                         steps, args.batch, args.generations))
        shutil.rmtree(root / f"ppo-{name}-{r}", ignore_errors=True)
        gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--smollm2-dir", type=Path, default=Path(".rlhf-loop/models/smollm2-135m-instruct"))
    parser.add_argument("--pairs", type=int)
    parser.add_argument("--episodes", type=int, help="PPO episodes; GRPO/RLOO run episodes/batch steps of batch answers")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--generations", type=int, default=4, help="GRPO/RLOO answers per prompt (divides --batch)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--cycles", type=int, default=3, help="memory cycles (tiny model only)")
    args = parser.parse_args()
    for key, value in SIZES[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch % args.generations:
        parser.error("--batch must be a multiple of --generations (TRL's group batches)")
    results = RESULTS if args.model == "tiny" else RESULTS.with_name(f"trainer_throughput_{args.model}.json")

    root = Path(tempfile.mkdtemp(prefix="trainer-bench-"))
    memory: dict[str, Any] = {}
    try:
        policy, rm_base, description = models(args.model, root, args.smollm2_dir)
        prefs = make_prefs(args.pairs)
        rss_start = rss_mb()
        times: dict[str, list[float]] = {}
        for r in range(args.rounds):
            one_round(r, root, policy, rm_base, prefs, args, times)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()),
                  flush=True)
        for r in range(args.rounds):  # cold cache each round, then the same pairs again (warm)
            cache_file = root / f"features-{r}.sqlite"
            times.setdefault("head_rm_cold", []).append(head_rm(rm_base, root / f"head-{r}", prefs, cache_file))
            times.setdefault("head_rm_warm", []).append(head_rm(rm_base, root / f"head-{r}b", prefs, cache_file))
        memory = {"start": round(rss_start, 1)}
        if args.model == "tiny":
            memory["coordinator_before_job_cycles"] = round(rss_mb(), 1)
            memory["coordinator_after_each_job_process_cycle"] = daemon_cycles(root / "daemon", policy, rm_base,
                                                                               args.cycles)
            memory["after_each_full_cycle_in_process"] = full_cycles(root / "cycles", policy, rm_base,
                                                                     min(args.pairs, 64), args.episodes, args.cycles)
        memory["peak"] = round(peak_rss_mb(), 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    answers = group_steps(args) * args.batch
    work = {"rm": args.pairs, "ppo": args.episodes, "grpo": answers, "rloo": answers}
    keys = {"rm": "rm_pairs_per_s", "ppo": "ppo_episodes_per_s", "grpo": "grpo_episodes_per_s",
            "rloo": "rloo_episodes_per_s"}
    rates = {keys[a]: {"raw_trl": work[a] / best[f"raw_{a}"], "ours": work[a] / best[f"ours_{a}"]} for a in ALGORITHMS}
    median_ratio = {keys[a]: median[f"raw_{a}"] / median[f"ours_{a}"] for a in ALGORITHMS}
    head_rates = {"cold_cache": round(args.pairs / best["head_rm_cold"], 1),
                  "warm_cache": round(args.pairs / best["head_rm_warm"], 1)}
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.python_implementation()} {platform.python_version()}",
        "model": description,
        "pairs": args.pairs, "episodes": args.episodes, "batch": args.batch, "generations": args.generations,
        "rounds": args.rounds,
        "note": "wall time per side includes model load, trainer build, training and save; rates from the best round",
        "rates": {k: {s: round(v, 2) for s, v in d.items()} for k, d in rates.items()},
        "ratio_ours_to_raw": {k: round(d["ours"] / d["raw_trl"], 3) for k, d in rates.items()},
        "ratio_ours_to_raw_median": {k: round(v, 3) for k, v in median_ratio.items()},
        "head_rm_pairs_per_s": head_rates,
        "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "rss_mb": memory,
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {results}")


if __name__ == "__main__":
    main()
