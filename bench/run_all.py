"""The benchmark suite in one command: every bench script in turn (each starts its own
embedded parts), then one table of the ratios measured side by side, and the loop's
latencies and memory. Results: bench/results/*.json and bench/results/summary.md.

Run: make bench   (about 105 minutes on 2 cores: the loop ~50, the algorithms ~35, the trainer on
SmolLM2 ~10; --quick skips those three, 15-25 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SUITE = [  # (module, arguments, slow: skipped by --quick)
    ("bench.bus_throughput", [], False),
    ("bench.capture_throughput", [], False),
    ("bench.sampler_throughput", [], False),
    ("bench.annotation_throughput", [], False),
    ("bench.trainer_throughput", [], False),
    ("bench.policy_server_throughput", [], False),
    ("bench.policy_server_concurrency", [], False),
    ("bench.trainer_throughput", ["--model", "smollm2"], True),
    ("bench.policy_algorithms", [], True),
    ("bench.loop_efficacy", [], True),
]


def load(name: str, since: float = 0.0) -> dict:  # type: ignore[type-arg]
    """A script's results; none when written before `since` (a run's start: a --quick
    run leaves the slow scripts' files of an earlier run, which are not this run's)."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() and path.stat().st_mtime >= since else {}


def rows(since: float = 0.0) -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    bus = load("bus_throughput", since)
    if bus:
        r = bus["messages_per_s"]
        out.append(("bus produce vs raw kafka-python", f"{r['raw_produce']:,}/s", f"{r['our_produce']:,}/s",
                    f"{bus['ratio_ours_to_raw']['produce']:.2f}"))
        out.append(("bus consume+commit vs raw (same decode)", f"{r['raw_validate_consume']:,}/s",
                    f"{r['our_consume']:,}/s", f"{bus['ratio_ours_to_raw']['consume_vs_raw_with_same_validation']:.2f}"))
    capture = load("capture_throughput", since)
    if capture.get("events_per_s"):
        e = capture["events_per_s"]
        out.append(("capture HTTP single vs raw producer (acked)", f"{e.get('raw_acked', 0):,.0f}/s",
                    f"{e.get('http_single', 0):,.0f}/s", f"{e.get('http_single', 0) / max(e.get('raw_acked', 1), 1):.2f}"))
        if "raw_batch_acked" in e:  # the same ack semantics: each batch of B acknowledged before the next
            out.append(("capture HTTP batch vs raw producer (acked per batch)", f"{e['raw_batch_acked']:,.0f}/s",
                        f"{e.get('http_batch', 0):,.0f}/s", f"{e.get('http_batch', 0) / max(e['raw_batch_acked'], 1):.2f}"))
        out.append(("capture HTTP batch vs raw producer pipelined (no wait)", f"{e.get('raw_pipelined', 0):,.0f}/s",
                    f"{e.get('http_batch', 0):,.0f}/s", f"{e.get('http_batch', 0) / max(e.get('raw_pipelined', 1), 1):.2f}"))
    sampler = load("sampler_throughput", since)
    if sampler:
        e = sampler["events_per_s"]
        out.append(("sampler (uniform) vs raw consume", f"{e['raw_consume_decode']:,}/s", f"{e['sampler_uniform']:,}/s",
                    f"{sampler['ratio']['rate_strategy']:.2f}"))
        if "raw_sampler" in e:
            out.append(("sampler (uniform) vs raw-client sampler (coin, task sends)", f"{e['raw_sampler']:,}/s",
                        f"{e['sampler_uniform']:,}/s", f"{sampler['ratio']['rate_strategy_vs_raw_sampler']:.2f}"))
    annotation = load("annotation_throughput", since)
    if annotation:
        r = annotation["records_per_s"]
        out.append(("Argilla push vs raw SDK records.log", f"{r['raw_sdk']}/s", f"{r['pusher']}/s",
                    f"{annotation['ratio']:.2f}"))
    for results, model in (("trainer_throughput", "tiny"), ("trainer_throughput_smollm2", "SmolLM2-135M")):
        trainer = load(results, since)
        for key, label in (("rm_pairs_per_s", "reward model (pairs)"), ("ppo_episodes_per_s", "PPO (episodes)"),
                           ("grpo_episodes_per_s", "GRPO (episodes)"), ("rloo_episodes_per_s", "RLOO (episodes)")):
            rates = trainer.get("rates", {}).get(key)
            if rates:
                out.append((f"{label} {model} vs raw TRL", f"{rates['raw_trl']:.2f}/s", f"{rates['ours']:.2f}/s",
                            f"{trainer['ratio_ours_to_raw'][key]:.2f}"))
    policy = load("policy_server_throughput", since).get("results", {})
    for model, values in policy.items():
        out.append((f"policy server {model} vs model.generate", f"{values['raw_tokens_per_s']:.1f} tok/s",
                    f"{values['our_tokens_per_s']:.1f} tok/s", f"{values['ratio']:.2f}"))
    measured = load("policy_server_concurrency", since)
    concurrency, model = measured.get("results", {}), measured.get("model", "smollm2")
    if "8" in concurrency:
        eight = concurrency["8"]  # the tiny model when SmolLM2 is not prepared: say which
        model += "" if measured.get("warm_up") else " (cold start)"  # bench.policy_server_concurrency --cold
        out.append((f"policy server {model}, 8 clients, batched vs serial server",
                    f"{eight['serial']['tokens_per_s']:.1f} tok/s",
                    f"{eight['batched']['tokens_per_s']:.1f} tok/s", f"{eight['ratios']['batched_vs_serial']:.2f}"))
        out.append((f"policy server {model}, 8 clients, batched vs raw batched generate",
                     f"{eight['raw_batched_generate']['tokens_per_s']:.1f} tok/s",
                     f"{eight['batched']['tokens_per_s']:.1f} tok/s", f"{eight['ratios']['batched_vs_raw']:.2f}"))
    return out


def summary(since: float = 0.0) -> str:
    """The table of every result written since `since` (0: every result there is)."""
    lines = [f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} CPUs, "
             f"{platform.python_implementation()} {platform.python_version()}", "",
             "| benchmark | raw | rlhf-loop | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(since)]
    algorithms = load("policy_algorithms", since)
    if algorithms:
        lines += ["", f"policy optimisers, same budget ({algorithms['algorithms'].get('ppo', {}).get('answers_seen')}"
                      f" answers), win rate vs base on {algorithms['eval_prompts']} held-out prompts:"]
        lines += [f"- {name}: {r['vs_base']['win_rate']:.3f} (p={r['vs_base']['p_value']:.2g}), {r['train_seconds']} s,"
                  f" KL {r['kl_to_base']}" for name, r in algorithms["algorithms"].items()]
    loop = load("loop_efficacy", since)
    if loop:
        s2p = loop["submission_to_preference_s"]
        lines += ["", f"loop: first promotion after {loop['first_promoted_minutes']} min;"
                      f" submission → preference p50 {s2p['p50']} s, p95 {s2p['p95']} s (n={s2p['n']})"]
        for version, entry in loop["measurement"]["versions"].items():
            vs = entry.get("vs_base")
            lines.append(f"- {version}: preference score {entry['oracle_mean']} {entry['oracle_ci95']}"
                         + (f", win rate vs base {vs['win_rate']:.3f} (p={vs['p_value']:.2g})" if vs else ""))
        lines.append(f"RSS (MB) after each run: {loop['rss_mb_after_each_run']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the slow real-model measurements (loop, algorithms, trainer on SmolLM2)")
    parser.add_argument("--summary-only", action="store_true", help="print the table from existing results")
    args = parser.parse_args()
    since = 0.0 if args.summary_only else time.time()
    if not args.summary_only:
        for module, arguments, slow in SUITE:
            if args.quick and slow:
                continue
            print(f"== {' '.join([module, *arguments])}", flush=True)
            subprocess.run([sys.executable, "-m", module, *arguments], check=True)
    text = summary(since)
    RESULTS.mkdir(parents=True, exist_ok=True)  # gitignored: absent on a fresh checkout
    (RESULTS / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
