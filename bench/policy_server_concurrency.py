"""Policy server under concurrent users: tokens/s and p95 latency at 1, 4, 8 and 16
clients through the OpenAI-compatible HTTP API (the `openai` SDK, one thread per
client), with dynamic batching (the default MAX_BATCH_SIZE=8) against the serial
server (MAX_BATCH_SIZE=1) and against raw batched `model.generate` on the same prompts
(left-padded batches of min(clients, 8) rows: the most the batched server can put in
one pass), greedy, in the same run.

Greedy answers are the same on every path, so tokens/s compare like with like (the
token counts are printed to show it).

Warm-up (the default): before the clock starts, every client sends one short request
at the same concurrency, and the measured requests begin together once all are back.
The server has then seen this many users at once, as it has under steady load. With
`--cold`, one request warms the server and the clients start at once: the first
batch then goes out with whoever arrived within the quiet gap (often a single
request), which is the start of a burst, not steady load.

Run: .venv/bin/python -m bench.policy_server_concurrency [--model smollm2|tiny] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import openai
import torch
from prometheus_client import CollectorRegistry

from services.policy_server.api import create_app
from services.policy_server.metrics import PolicyServerMetrics
from services.policy_server.models import PolicyPool
from services.policy_server.routing import Router
from services.policy_server.settings import PolicyServerOptions
from services.trainer.tiny_models import build_tiny_policy
from tests.helpers.openai_stub import serve

RESULTS = Path(__file__).parent / "results" / "policy_server_concurrency.json"
PROMPTS = ["How do I reset my password?", "Give me a tip for writing clear emails.",
           "What is a good name for a cat?", "Explain what a reward model is in one sentence.",
           "Write a haiku about the sea.", "What should I pack for a weekend hike?",
           "Describe a rainbow to a child.", "List three uses of a paperclip."]
CLIENTS = (1, 4, 8, 16)
MAX_BATCH = 8


def requests_for(clients: int) -> int:
    """Every client sends at least two requests (8 in all at one client)."""
    return max(8, 2 * clients)


def prompt(i: int) -> str:
    return PROMPTS[i % len(PROMPTS)]


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


class BatchLog:
    """The pool's `on_batch`: requests per batch, emptied for every run."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, _version: str, requests: int, _rows: int) -> None:
        self.sizes.append(requests)


WARMUP_TOKENS = 4


def server_run(pool: PolicyPool, log: BatchLog, clients: int, max_tokens: int, max_batch: int,
               warm: bool = True) -> dict[str, float]:
    pool.max_batch_size = max_batch
    registry = CollectorRegistry()
    app = create_app(pool=pool, router=Router(), metrics=PolicyServerMetrics(registry), registry=registry,
                     served_model_name="rlhf-policy", max_tokens_default=max_tokens, max_tokens_limit=max_tokens,
                     max_n=5, producer=None, readiness={})
    total = requests_for(clients)
    latencies: list[float] = []
    tokens = 0
    lock = threading.Lock()
    with serve(app) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
        client.chat.completions.create(model="rlhf-policy", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        clock: list[float] = []

        def start_clock() -> None:
            log.sizes.clear()
            clock.append(time.perf_counter())

        together = threading.Barrier(clients, action=start_clock)

        def one_client(c: int) -> None:
            nonlocal tokens
            if warm:  # not counted: see the module docstring
                client.chat.completions.create(model="rlhf-policy", temperature=0, max_tokens=WARMUP_TOKENS,
                                               messages=[{"role": "user", "content": prompt(c)}],
                                               extra_body={"store": False})
            together.wait(timeout=600)
            for k in range(c, total, clients):  # request k goes to client k % clients
                started = time.perf_counter()
                reply = client.chat.completions.create(model="rlhf-policy", temperature=0, max_tokens=max_tokens,
                                                       messages=[{"role": "user", "content": prompt(k)}],
                                                       extra_body={"store": False})
                with lock:
                    latencies.append(time.perf_counter() - started)
                    tokens += reply.usage.completion_tokens if reply.usage else 0

        with ThreadPoolExecutor(max_workers=clients) as executor:
            list(executor.map(one_client, range(clients)))
        elapsed = time.perf_counter() - clock[0]
    return {"tokens_per_s": tokens / elapsed, "p95_latency_s": p95(latencies), "tokens": tokens,
            "requests": total, "seconds": elapsed, "batches": len(log.sizes), "batch_sizes": list(log.sizes)}


def raw_run(pool: PolicyPool, clients: int, max_tokens: int) -> dict[str, float]:
    """HF `generate` on left-padded batches of min(clients, MAX_BATCH) prompts, on the
    pool's model thread, where the server generates. Latency: each row waits for its batch."""
    tokenizer, model = pool.tokenizer, pool._base  # noqa: SLF001 - the same weights, without our wrapping
    total, width = requests_for(clients), min(clients, MAX_BATCH)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": prompt(k)}], add_generation_prompt=True,
                                           tokenize=False) for k in range(total)]

    def work() -> dict[str, float]:
        tokens, latencies = 0, []
        started = time.perf_counter()
        for first in range(0, total, width):
            batch = tokenizer(texts[first:first + width], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(pool.device)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            for row in out[:, batch["input_ids"].shape[1]:].tolist():
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id)]
                tokens += len(row)
            latencies += [time.perf_counter() - started] * len(out)  # as if all were asked at the start
        elapsed = time.perf_counter() - started
        return {"tokens_per_s": tokens / elapsed, "p95_latency_s": p95(latencies), "tokens": tokens,
                "requests": total, "seconds": elapsed}

    return pool.on_model_thread(work)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--smollm2-dir", default=".rlhf-loop/models/smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)))
    parser.add_argument("--window-ms", type=float, default=PolicyServerOptions().batch_window_ms,
                        help="the batched server's BATCH_WINDOW_MS")
    parser.add_argument("--gap-ms", type=float, default=PolicyServerOptions().batch_gap_ms,
                        help="the batched server's BATCH_GAP_MS")
    parser.add_argument("--cold", action="store_true",
                        help="no warm-up at each concurrency: measure from the start of a burst")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.smollm2_dir)
        if args.model == "smollm2" and not (model_dir / "config.json").exists():
            print(f"(SmolLM2 not prepared at {model_dir}: run `rlhf-loop models smollm2`; measuring the tiny model)")
            args.model = "tiny"
        if args.model == "tiny":
            model_dir = build_tiny_policy(Path(tmp) / "tiny")
        torch.manual_seed(0)
        log = BatchLog()
        pool = PolicyPool(model_dir, max_batch_size=MAX_BATCH, batch_window_ms=args.window_ms,
                          batch_gap_ms=args.gap_ms, on_batch=log)
        raw_run(pool, 1, 4)  # warm-up
        rows: dict[str, dict[str, dict[str, float]]] = {}
        print(f"{'clients':>7} {'serial tok/s':>13} {'batched tok/s':>14} {'raw tok/s':>10} "
              f"{'x serial':>9} {'/ raw':>6} {'p95 serial s':>13} {'p95 batched s':>14} {'p95 raw s':>10} "
              f"{'tokens s/b/r':>14} {'batches':>8}")
        for n in clients:
            row = {"serial": server_run(pool, log, n, args.max_tokens, 1, warm=not args.cold),
                   "batched": server_run(pool, log, n, args.max_tokens, MAX_BATCH, warm=not args.cold),
                   "raw_batched_generate": raw_run(pool, n, args.max_tokens)}
            s, b, r = row["serial"], row["batched"], row["raw_batched_generate"]
            row["ratios"] = {"batched_vs_serial": b["tokens_per_s"] / s["tokens_per_s"],
                             "batched_vs_raw": b["tokens_per_s"] / r["tokens_per_s"]}
            rows[str(n)] = row  # type: ignore[assignment]
            print(f"{n:>7} {s['tokens_per_s']:>13.1f} {b['tokens_per_s']:>14.1f} {r['tokens_per_s']:>10.1f} "
                  f"{row['ratios']['batched_vs_serial']:>9.2f} {row['ratios']['batched_vs_raw']:>6.2f} "
                  f"{s['p95_latency_s']:>13.2f} {b['p95_latency_s']:>14.2f} {r['p95_latency_s']:>10.2f} "
                  f"{s['tokens']:>4}/{b['tokens']}/{r['tokens']} {b['batches']:>8} "
                  f"({'+'.join(map(str, b['batch_sizes']))})", flush=True)
    result: dict[str, Any] = {"measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "model": args.model, "max_tokens": args.max_tokens, "max_batch_size": MAX_BATCH,
                              "batch_window_ms": args.window_ms, "batch_gap_ms": args.gap_ms,
                              "warm_up": not args.cold,
                              "device": torch.cuda.get_device_name() if pool.device == "cuda" else "cpu",
                              "torch_threads": torch.get_num_threads(), "results": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
