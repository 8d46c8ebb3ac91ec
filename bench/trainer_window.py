"""Per-run cost of the trainer's data preparation against the size of the store: today's
way (every live preference up to the watermark) vs the training window (new since the
last finished run + a replay sample + a bounded held-out sample, streamed from the
store; services/trainer/store.py `training_window`).

Stores of 1k, 10k and 100k synthetic preferences (each its own prompt, 5% superseded,
a finished run 500 rows below the top, so 500 are new) are filled with one executemany
in one transaction through the store's own schema. Each (size, way) is measured in a
fresh process, so its peak RSS (VmHWM) is its own:

  prep    snapshot: selection + split by prompt hash + the policy's prompts (what the
          `snapshot` stage does)
  rm      + the reward-model stage's data work with the tiny model: encode every
          pair, features through a warm feature cache (a later run's steady state:
          only new answers miss), fit the head, held-out accuracy (--rm)

Run: .venv/bin/python -m bench.trainer_window [--sizes 1000 10000 100000] [--rm]
     [--replay-size N --heldout-max N]   (defaults: the trainer's defaults)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).parent / "results" / "trainer_window.json"
NEW_ROWS = 500  # the default trigger threshold: what one run typically finds new


def fill_store(path: str | Path, n: int, *, superseded_every: int = 20, finished_at: int | None = None,
               start: int = 0) -> None:
    """`n` synthetic preferences (seq start+1..start+n, each its own prompt) written through the
    store's schema in one transaction; every `superseded_every`-th row is superseded
    (0: none). `finished_at`: a succeeded run with that watermark."""
    from services.trainer.store import PreferenceStore, prompt_hash

    PreferenceStore(path).close()  # creates / upgrades the schema
    rows = []
    for i in range(start, start + n):
        prompt = [{"role": "user", "content": f"question number {i}?"}]
        superseded = f"rank-{i}-r2" if superseded_every and (i + 1) % superseded_every == 0 else None
        rows.append((f"pref-{i}", f"rank-{i}", f"task-{i}", f"out-{i}", json.dumps(prompt), prompt_hash(prompt),
                     f"here is a helpful answer {i}", "I am sorry, I cannot help", 1.0, 1.0, 1, "g1",
                     "2026-12-01T12:00:00+00:00", 1.8e9 + i, f"pair-{i}", 1.8e9 + i, superseded))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO preferences (preference_id, ranking_id, task_id, output_id, prompt_json, prompt_hash,"
        " chosen, rejected, margin, agreement, annotator_count, guideline_version, created_at, stored_at,"
        " pair_key, revision_at, superseded_by) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    if finished_at is not None:
        conn.execute("INSERT INTO runs (run_id, state, trigger, created_at, finished_at, watermark,"
                     " preference_count) VALUES (?, 'succeeded', 'bench', 0, 0, ?, 0)",
                     (f"finished-{finished_at}", finished_at))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # into the main file: a reader starts from a small WAL
    conn.close()


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM belongs to the process image, while ru_maxrss carries
    the parent's peak over fork + exec (the parent filled the stores)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def old_snapshot(store: Any, watermark: int, heldout_fraction: float) -> tuple[list[Any], list[Any], int]:
    """The snapshot before windows: every live row up to the watermark."""
    from services.trainer.store import is_heldout

    prefs = store.preferences_upto(watermark)
    train = [p for p in prefs if not is_heldout(p.prompt_hash, heldout_fraction)]
    heldout = [p for p in prefs if is_heldout(p.prompt_hash, heldout_fraction)]
    prompts = store.prompts()
    return train, heldout, len(prompts)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    from services.trainer.pipeline import take_snapshot
    from services.trainer.settings import TrainerOptions
    from services.trainer.store import PreferenceStore

    overrides = {k: v for k, v in (("replay_size", args.replay_size), ("heldout_sample_max", args.heldout_max))
                 if v is not None}
    options = TrainerOptions(**overrides)
    backbone = cache = None
    if args.rm:
        from services.trainer.features import FeatureCache
        from shared.models.reward import RewardModel

        backbone = RewardModel.frozen_backbone(args.model, max_length=64)
        cache = FeatureCache(args.cache)
    base_rss = peak_rss_mb()
    store = PreferenceStore(args.store)
    watermark = store.max_seq()
    times = []
    for _round in range(args.rounds):  # the 2 cores are shared: the best of a few rounds
        train = heldout = snap = None
        started = time.perf_counter()
        if args.way == "all":
            train, heldout, prompts = old_snapshot(store, watermark, options.heldout_fraction)
        else:
            snap = take_snapshot(store, watermark, options, run_id="bench-run")
            train, heldout, prompts = snap.train, snap.heldout, len(snap.train_prompts) + len(snap.heldout_prompts)
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    store.prompts()  # the policy's prompts: the same query either way
    prompts_s = time.perf_counter() - started
    out: dict[str, Any] = {"train_pairs": len(train), "heldout_pairs": len(heldout), "prompts": prompts,
                           "prep_s": round(min(times), 3), "prep_s_rounds": [round(t, 3) for t in times],
                           "of_which_prompts_s": round(prompts_s, 3)}
    if args.rm:
        from services.trainer.reward_model import (
            RewardModelConfig,
            accuracy,
            train_head,
        )

        rm_started = time.perf_counter()
        train_head(backbone, train, RewardModelConfig(output_dir=Path(args.cache).parent / f"rm-{args.way}"),
                   cache)  # type: ignore[arg-type]
        out["rm_accuracy"] = round(accuracy(backbone, heldout, cache), 3)
        out["rm_s"] = round(time.perf_counter() - rm_started, 3)
    out["total_s"] = round(out["prep_s"] + out.get("rm_s", 0.0), 3)
    peak = peak_rss_mb()
    out.update(peak_rss_mb=round(peak, 1), peak_rss_over_start_mb=round(peak - base_rss, 1))
    store.close()
    return out


def warm_cache(store_path: Path, model: str, cache_path: Path) -> None:
    """Features of every stored answer, once: what the cache holds after earlier runs."""
    from services.trainer.features import FeatureCache, features_for
    from services.trainer.store import PreferenceStore
    from shared.models.reward import RewardModel

    backbone = RewardModel.frozen_backbone(model, max_length=64)
    store, cache = PreferenceStore(store_path), FeatureCache(cache_path)
    rows = store.preferences_upto(store.max_seq())
    for at in range(0, len(rows), 5000):
        part = rows[at:at + 5000]
        prompts = [r.prompt for r in part]
        features_for(backbone, prompts + prompts, [r.chosen for r in part] + [r.rejected for r in part], cache)
    store.close()
    cache.close()


def measure(args: argparse.Namespace, size: int, way: str, work: Path, model: str | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.trainer_window", "--child", "--way", way, "--rounds", str(args.rounds),
               "--store", str(work / f"store-{size}.sqlite"), "--cache", str(work / f"features-{size}.sqlite")]
    if model:
        command += ["--rm", "--model", model]
    for flag, value in (("--replay-size", args.replay_size), ("--heldout-max", args.heldout_max)):
        if value is not None:
            command += [flag, str(value)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--rm", action="store_true", help="also the reward-model stage's data work (tiny model)")
    parser.add_argument("--replay-size", type=int, default=None)
    parser.add_argument("--heldout-max", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--way", choices=["all", "window"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    from services.trainer.settings import TrainerOptions

    options = TrainerOptions(**{k: v for k, v in (("replay_size", args.replay_size),
                                                  ("heldout_sample_max", args.heldout_max)) if v is not None})
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="trainer-window-") as tmp:
        work = Path(tmp)
        model = None
        if args.rm:
            from services.trainer.tiny_models import build_tiny_models

            model = str(build_tiny_models(work / "models")[1])
        for size in args.sizes:
            started = time.perf_counter()
            fill_store(work / f"store-{size}.sqlite", size, finished_at=max(0, size - NEW_ROWS))
            fill_s = time.perf_counter() - started
            if model:
                warm_cache(work / f"store-{size}.sqlite", model, work / f"features-{size}.sqlite")
            results[str(size)] = {"fill_s": round(fill_s, 2),
                                  **{way: measure(args, size, way, work, model) for way in ("all", "window")}}
            print(f"{size}: {results[str(size)]}", flush=True)

    header = ["stored", "way", "train", "held-out", "prep s", "of which prompts s"] + (["rm s", "rm acc"] if args.rm else []) + [
        "total s", "peak RSS MB", "RSS over start MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for size, entry in results.items():
        for way in ("all", "window"):
            r = entry[way]
            cells = [f"{int(size):,}", way, str(r["train_pairs"]), str(r["heldout_pairs"]), f"{r['prep_s']:.3f}",
                     f"{r['of_which_prompts_s']:.3f}"]
            if args.rm:
                cells += [f"{r['rm_s']:.2f}", f"{r['rm_accuracy']:.3f}"]
            cells += [f"{r['total_s']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_over_start_mb']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "measured_at": datetime.now(UTC).isoformat(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "new_rows_per_run": NEW_ROWS,
        "window": {k: getattr(options, k) for k in ("train_window_new_max", "replay_size", "replay_half_life",
                                                    "heldout_sample_max", "heldout_fraction")},
        "with_rm": args.rm, "results": results, "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
