"""Argilla push throughput: our pusher (consumer loop, one bulk request per polled batch)
against the raw SDK's `dataset.records.log` on the same records, same embedded Argilla,
same run.

  raw SDK  - records.log(batch of B rg.Record) in a loop (no Kafka)
  pusher   - the annotation service's consumer loop: poll B tasks from Kafka, one bulk
             upsert, commit; timed from the first handled task to the last commit

Run: .venv/bin/python -m bench.annotation_throughput [--tasks 400 --batch 50]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import argilla as rg
from prometheus_client import CollectorRegistry

from services.annotation.argilla_api import ArgillaRest
from services.annotation.datasets import RankingDatasets
from services.annotation.metrics import AnnotationMetrics
from services.annotation.pusher import Pusher
from services.annotation.records import task_to_record
from services.annotation.settings import AnnotationOptions
from shared.bus import ConsumerLoop, EventProducer
from shared.bus.admin import ensure_topics
from shared.contracts import Candidate, ChatMessage, ModelRef, RankingTask, SamplingDecision, output_id_for, task_id_for
from shared.embedded.argilla import EmbeddedArgilla
from shared.embedded.broker import EmbeddedBroker
from shared.observability.metrics import BusMetrics
from shared.settings import ConsumerSettings
from shared.topics import Topic, dead_letter_topic

RESULTS = Path(__file__).parent / "results" / "annotation_throughput.json"


def make_tasks(n: int, tag: str) -> list[RankingTask]:
    tasks = []
    for i in range(n):
        output_id = output_id_for(f"{tag}-{i}")
        task_id = task_id_for(output_id)
        tasks.append(RankingTask(
            event_id=task_id, task_id=task_id, output_id=output_id,
            prompt=[ChatMessage(role="user", content=f"How do I do thing number {i}?")],
            candidates=[Candidate(candidate_id=f"c{j}", text=f"Answer {j} to question {i}. " * 8,
                                  model=ModelRef(name="bench", version="v1")) for j in range(2)],
            sampling=SamplingDecision(rule="uniform", strategy="uniform", score=0.05)))
    return tasks


def raw_sdk(client: rg.Argilla, prefix: str, tasks: list[RankingTask], batch: int) -> float:
    dataset = RankingDatasets(client, AnnotationOptions(dataset=prefix)).ensure(2)
    records = []
    for task in tasks:
        body = task_to_record(task, "v1")
        records.append(rg.Record(id=task.task_id, fields=body["fields"], metadata=body["metadata"]))
    started = time.perf_counter()
    for i in range(0, len(records), batch):
        dataset.records.log(records[i:i + batch], batch_size=batch)
    return time.perf_counter() - started


def ours(argilla: EmbeddedArgilla, client: rg.Argilla, broker: EmbeddedBroker, prefix: str,
         tasks: list[RankingTask], batch: int) -> float:
    kafka = broker.kafka_settings(session_timeout_ms=2000, heartbeat_interval_ms=500, max_poll_records=batch)
    topic = Topic(f"bench.tasks.{uuid.uuid4().hex[:8]}", RankingTask, 1)
    group = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [(topic.name, 1), (dead_letter_topic(group), 1)])
    producer = EventProducer(kafka)
    for task in tasks:
        producer.send(topic, task)
    producer.flush()
    options = AnnotationOptions(dataset=prefix)
    datasets = RankingDatasets(client, options)
    datasets.ensure(2)  # created outside the timing, as for the raw side
    rest = ArgillaRest(argilla.url, argilla.api_key)
    pusher = Pusher(datasets, rest, "v1", AnnotationMetrics(CollectorRegistry()), batched=True)
    started: list[float] = []

    def handler(task, record):  # type: ignore[no-untyped-def]
        if not started:
            started.append(time.perf_counter())
        return pusher(task, record)

    metrics = BusMetrics(CollectorRegistry())
    loop = ConsumerLoop(topics=[topic], group_id=group, handler=handler, kafka=kafka, consumer=ConsumerSettings(),
                        producer=producer, metrics=metrics, stop=threading.Event(), sink=pusher)
    done = 0
    while done < len(tasks):
        done += loop.run_once()
    elapsed = time.perf_counter() - started[0]
    loop.close()
    producer.close()
    rest.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker, \
            EmbeddedArgilla(Path(tmp) / "argilla") as argilla:
        client = rg.Argilla(api_url=argilla.url, api_key=argilla.api_key)
        raw_s = raw_sdk(client, "bench-raw", make_tasks(args.tasks, "raw"), args.batch)
        our_s = ours(argilla, client, broker, "bench-ours", make_tasks(args.tasks, "ours"), args.batch)
    raw_rate, our_rate = args.tasks / raw_s, args.tasks / our_s
    result = {"measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tasks": args.tasks,
              "batch": args.batch, "records_per_s": {"raw_sdk": round(raw_rate, 1), "pusher": round(our_rate, 1)},
              "ratio": round(our_rate / raw_rate, 3)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"Argilla push, {args.tasks} records, batches of {args.batch} (embedded argilla-server 2.8, SQLite)")
    print(f"{'raw SDK records.log':<28}{raw_rate:>10.1f} records/s")
    print(f"{'pusher (Kafka -> Argilla)':<28}{our_rate:>10.1f} records/s   ratio {our_rate / raw_rate:.2f}")


if __name__ == "__main__":
    main()
