"""Sampler throughput against raw consumption, same broker, same events, same run.

  raw       - kafka-python consumer + the same pydantic decode + commit per batch
  raw sampler - the same, plus what any sampler of this rule must do: flip the same
              coin (sha256 of rule and output id), build and send the selected
              outputs' RankingTasks with a raw KafkaProducer, flush before the commit.
              No store, no dedupe, no idempotence: what ours adds on top of the job
  sampler   - the sampler's consumer loop with the default-style rule (uniform 5%),
              wired as the service wires it (the sampler as its own batch sink):
              decision and dedupe lookups, task building, one SQLite transaction
              per polled batch
  uncertainty scoring - Sampler.handle with an uncertainty rule and the tiny reward
              model, against the raw forward pass of that model on the same texts

Best of `--rounds` per side (fresh topics and groups each round, sides rotating). The
events are kept as bytes and the heap is frozen before the first round, as a service
freezes its own once built (shared/lifecycle.freeze_heap): 20,000 ModelOutputs held as
objects are ~360k tracked objects that every full GC pass would walk, on whichever
side happened to cross the threshold (0.1-0.3 s of a ~1 s round).

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

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata

from bench.bus_throughput import our_consume, raw_consume
from services.sampler.handlers import Sampler
from services.sampler.metrics import SamplerMetrics
from shared.models.reward_scorer import RewardScorer, directory_locator
from services.sampler.rules import SamplingRule
from services.sampler.scoring import stable_fraction
from services.sampler.store import SamplerStore
from shared.bus import EventProducer
from shared.bus.admin import ensure_topics
from shared.contracts import (
    Candidate,
    ChatMessage,
    ModelOutput,
    ModelRef,
    RankingTask,
    SamplingDecision,
    output_id_for,
    task_id_for,
)
from shared.embedded.broker import EmbeddedBroker
from shared.lifecycle import freeze_heap
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


RULE, RATE = "uniform-5pct", 0.05


def raw_sampler_consume(kafka: KafkaSettings, topic: str, n: int) -> float:
    """A sampler written on the raw clients: consume, decode, flip the rule's coin,
    send each selected output's task, flush, commit (seconds from the first batch)."""
    consumer = KafkaConsumer(topic, **kafka.consumer_kwargs(f"raw-sampler-{uuid.uuid4().hex[:8]}"))
    producer = KafkaProducer(**kafka.producer_kwargs())
    seen, started = 0, None
    while seen < n:
        batch = consumer.poll(timeout_ms=500)
        if batch and started is None:
            started = time.perf_counter()
        offsets = {}
        for tp, records in batch.items():
            seen += len(records)
            for record in records:
                output = ModelOutput.model_validate_json(record.value)
                if stable_fraction(RULE, output.output_id) >= RATE:
                    continue
                task_id = task_id_for(output.output_id)
                task = RankingTask(event_id=task_id, task_id=task_id, output_id=output.output_id,
                                   conversation_id=output.conversation_id, prompt=list(output.conversation),
                                   candidates=list(output.candidates), app=output.app, tags=list(output.tags),
                                   sampling=SamplingDecision(rule=RULE, strategy="uniform", score=RATE))
                producer.send(RANKING_TASKS.name, key=task.partition_key.encode(),
                              value=task.model_dump_json().encode())
            offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        if offsets:
            producer.flush()  # the tasks are acknowledged before their outputs are committed
            consumer.commit(offsets)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    producer.close()
    return elapsed


def sampler_consume(kafka: KafkaSettings, topic: Topic, n: int, workdir: Path) -> float:
    group = f"sampler-{uuid.uuid4().hex[:8]}"
    sampler = Sampler([SamplingRule(name=RULE, strategy="uniform", rate=RATE)],
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
    n = args.messages
    outputs = make_outputs(n)
    payloads = [(o.partition_key.encode(), o.to_json_bytes()) for o in outputs]
    scored = outputs[: args.scored + 1]
    del outputs
    freeze_heap()  # what a service does once built (see the module doc)
    sides = ("raw", "raw_sampler", "ours")
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        workdir = Path(tmp)
        kafka = broker.kafka_settings(session_timeout_ms=2000, heartbeat_interval_ms=500, max_poll_records=2000)
        # the service creates its topics at start; here they exist before the first round too
        ensure_topics(kafka, [(RANKING_TASKS.name, RANKING_TASKS.partitions), (PREFERENCES.name, PREFERENCES.partitions)])
        for r in range(args.rounds):  # fresh topics and groups each round; which side goes first rotates
            topics = {side: Topic(f"bench.{side}.{uuid.uuid4().hex[:8]}", ModelOutput, 1) for side in sides}
            ensure_topics(kafka, [(t.name, 1) for t in topics.values()])
            producer = EventProducer(kafka)
            for key, value in payloads:
                for topic in topics.values():
                    producer.send_raw(topic.name, key, value)
            producer.flush()
            producer.close()
            runs = {"raw": lambda: raw_consume(kafka, topics["raw"].name, n, validate=True),
                    "raw_sampler": lambda: raw_sampler_consume(kafka, topics["raw_sampler"].name, n),
                    "ours": lambda: sampler_consume(kafka, topics["ours"], n, workdir)}
            for side in sides[r % 3:] + sides[: r % 3]:
                seconds[side].append(runs[side]())
            print(f"round {r + 1}: " + ", ".join(f"{side} {n / seconds[side][-1]:,.0f}/s" for side in sides),
                  flush=True)
        rate = {side: n / min(seconds[side]) for side in sides}
        raw_scoring, our_scoring = uncertainty_rates(scored, workdir)
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "messages": n,
        "rounds": args.rounds,
        "events_per_s": {"raw_consume_decode": round(rate["raw"]), "raw_sampler": round(rate["raw_sampler"]),
                         "sampler_uniform": round(rate["ours"]),
                         "raw_reward_forward": round(raw_scoring, 1), "sampler_uncertainty": round(our_scoring, 1)},
        "ratio": {"rate_strategy": round(rate["ours"] / rate["raw"], 3),
                  "rate_strategy_vs_raw_sampler": round(rate["ours"] / rate["raw_sampler"], 3),
                  "rate_strategy_median": round(statistics.median(seconds["raw"]) / statistics.median(seconds["ours"]), 3),
                  "uncertainty_scoring": round(our_scoring / raw_scoring, 3)},
        "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"{'path':<52}{'raw':>12}{'sampler':>12}{'ratio':>8}")
    for label, raw in [("uniform 5% vs raw consume (decode, commit)", rate["raw"]),
                       ("uniform 5% vs raw sampler (+ coin, task sends)", rate["raw_sampler"])]:
        print(f"{label:<52}{raw:>10,.0f}/s{rate['ours']:>10,.0f}/s{rate['ours'] / raw:>8.2f}")
    print(f"{'uncertainty, tiny RM, 3 candidates':<52}{raw_scoring:>10,.1f}/s{our_scoring:>10,.1f}/s"
          f"{our_scoring / raw_scoring:>8.2f}")


if __name__ == "__main__":
    main()
