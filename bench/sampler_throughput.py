"""Sampler throughput against raw consumption, same broker, same events, same run.

  raw       - kafka-python consumer + the same pydantic decode + commit per batch
  sampler   - the sampler's consumer loop with the default-style rule (uniform 5%),
              wired as the service wires it (the sampler as its own batch sink):
              decision and dedupe lookups, task building, one SQLite transaction
              per polled batch
  uncertainty scoring - Sampler.handle with an uncertainty rule and the tiny reward
              model, against the raw forward pass of that model on the same texts

Best of `--rounds` per side (fresh topics and groups each round, sides alternating).

Run: .venv/bin/python -m bench.sampler_throughput [--messages 20000 --rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry

from bench.bus_throughput import our_consume, raw_consume
from services.sampler.handlers import Sampler
from services.sampler.metrics import SamplerMetrics
from shared.models.reward_scorer import RewardScorer, directory_locator
from services.sampler.rules import SamplingRule
from services.sampler.store import SamplerStore
from shared.bus import EventProducer
from shared.bus.admin import ensure_topics
from shared.contracts import Candidate, ChatMessage, ModelOutput, ModelRef, output_id_for
from shared.embedded.broker import EmbeddedBroker
from shared.settings import KafkaSettings
from shared.topics import PREFERENCES, RANKING_TASKS, Topic

RESULTS = Path(__file__).parent / "results" / "sampler_throughput.json"


def make_outputs(n: int) -> list[ModelOutput]:
    model = ModelRef(name="bench", version="v1")
    outputs = []
    for i in range(n):
        oid = output_id_for(f"sampler-bench-{i}")
        outputs.append(ModelOutput(
            event_id=oid, output_id=oid,
            conversation=[ChatMessage(role="user", content=f"question number {i} about topic {i % 97}")],
            candidates=[Candidate(candidate_id=c, text=f"answer {c} to {i} " * 20, model=model) for c in "abc"],
        ))
    return outputs


def sampler_consume(kafka: KafkaSettings, topic: Topic, n: int, workdir: Path) -> float:
    group = f"sampler-{uuid.uuid4().hex[:8]}"
    sampler = Sampler([SamplingRule(name="uniform-5pct", strategy="uniform", rate=0.05)],
                      SamplerStore(workdir / f"{group}.db"), SamplerMetrics(CollectorRegistry()),
                      dedupe_window_s=0)
    try:
        return our_consume(kafka, topic, n, handle=sampler.collect, group=group, sink=sampler)
    finally:
        sampler.close()


def tiny_reward_model(path: Path) -> Path:
    """A reward head over a tiny Llama backbone, as the trainer's registry stores one."""
    from services.trainer.tiny_models import build_tiny_policy
    from shared.models.reward import RewardModel

    backbone = RewardModel.frozen_backbone(build_tiny_policy(path.parent / "base"))
    torch.manual_seed(0)
    backbone.save_head(path, torch.randn(backbone.head.hidden_size))  # type: ignore[union-attr]
    return path


def uncertainty_rates(outputs: list[ModelOutput], workdir: Path) -> tuple[float, float]:
    from shared.models.reward import RewardModel, render

    model_dir = tiny_reward_model(workdir / "rm")
    scorer = RewardScorer(directory_locator(str(model_dir)))
    sampler = Sampler([SamplingRule(name="unc", strategy="uncertainty", max_margin=0.01)],
                      SamplerStore(workdir / "unc.db"), SamplerMetrics(CollectorRegistry()),
                      dedupe_window_s=0, reward_scorer=scorer)
    sampler.handle(outputs[0], None)  # type: ignore[arg-type]  # load the model outside the timing
    started = time.perf_counter()
    for output in outputs[1:]:
        sampler.handle(output, None)  # type: ignore[arg-type]
    ours = (len(outputs) - 1) / (time.perf_counter() - started)
    raw_model = RewardModel.load(model_dir, max_length=256)  # the same forward, called directly
    tokenizer, classifier = raw_model.tokenizer, raw_model.classifier
    started = time.perf_counter()
    for output in outputs[1:]:
        prompt = [{"role": m.role, "content": m.content} for m in output.conversation]
        ids = [render(tokenizer, prompt, c.text, 256) for c in output.candidates]
        width = max(map(len, ids))
        batch = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        with torch.no_grad():
            hidden = classifier.model(input_ids=batch, attention_mask=mask).last_hidden_state
            classifier.score(hidden[torch.arange(len(ids)), mask.sum(1) - 1])
    raw = (len(outputs) - 1) / (time.perf_counter() - started)
    sampler.close()
    return raw, ours


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5, help="best of this many rounds per side")
    parser.add_argument("--scored", type=int, default=300)
    args = parser.parse_args()
    outputs = make_outputs(args.messages)
    seconds: dict[str, list[float]] = {"raw": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        workdir = Path(tmp)
        kafka = broker.kafka_settings(session_timeout_ms=2000, heartbeat_interval_ms=500, max_poll_records=2000)
        # the service creates its topics at start; here they exist before the first round too
        ensure_topics(kafka, [(RANKING_TASKS.name, RANKING_TASKS.partitions), (PREFERENCES.name, PREFERENCES.partitions)])
        for r in range(args.rounds):  # fresh topics and groups each round; which side goes first alternates
            raw_topic = Topic(f"bench.raw.{uuid.uuid4().hex[:8]}", ModelOutput, 1)
            our_topic = Topic(f"bench.sampler.{uuid.uuid4().hex[:8]}", ModelOutput, 1)
            ensure_topics(kafka, [(raw_topic.name, 1), (our_topic.name, 1)])
            producer = EventProducer(kafka)
            for output in outputs:
                producer.send(raw_topic, output)
                producer.send(our_topic, output)
            producer.flush()
            producer.close()
            sides = [("raw", lambda: raw_consume(kafka, raw_topic.name, args.messages, validate=True)),
                     ("ours", lambda: sampler_consume(kafka, our_topic, args.messages, workdir))]
            for name, run in (sides if r % 2 == 0 else sides[::-1]):
                seconds[name].append(run())
            print(f"round {r + 1}: raw {args.messages / seconds['raw'][-1]:,.0f}/s, "
                  f"sampler {args.messages / seconds['ours'][-1]:,.0f}/s", flush=True)
        raw_rate, our_rate = args.messages / min(seconds["raw"]), args.messages / min(seconds["ours"])
        raw_scoring, our_scoring = uncertainty_rates(outputs[: args.scored + 1], workdir)
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "messages": args.messages,
        "rounds": args.rounds,
        "events_per_s": {"raw_consume_decode": round(raw_rate), "sampler_uniform": round(our_rate),
                         "raw_reward_forward": round(raw_scoring, 1), "sampler_uncertainty": round(our_scoring, 1)},
        "ratio": {"rate_strategy": round(our_rate / raw_rate, 3),
                  "rate_strategy_median": round(statistics.median(seconds["raw"]) / statistics.median(seconds["ours"]), 3),
                  "uncertainty_scoring": round(our_scoring / raw_scoring, 3)},
        "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"{'path':<44}{'raw':>12}{'sampler':>12}{'ratio':>8}")
    print(f"{'uniform 5% (consume, decide, commit)':<44}{raw_rate:>10,.0f}/s{our_rate:>10,.0f}/s{our_rate / raw_rate:>8.2f}")
    print(f"{'uncertainty, tiny RM, 3 candidates':<44}{raw_scoring:>10,.1f}/s{our_scoring:>10,.1f}/s"
          f"{our_scoring / raw_scoring:>8.2f}")


if __name__ == "__main__":
    main()
