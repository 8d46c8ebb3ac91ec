"""Bus throughput: our producer and consumer loop against raw kafka-python, same run.

Both sides move the same ~1 KB ModelOutput events through the same embedded Tansu
broker with the same producer and consumer options:
  produce  - send N events and flush                        (messages/s)
  consume  - poll -> handle -> commit per batch, until all N (messages/s)
The raw consumer only commits bytes; ours also validates every event against its
contract and keeps metrics, which is the overhead this measures.

Run: make bench   (or .venv/bin/python -m bench.bus_throughput --messages 20000)
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from shared.bus import BatchSink, ConsumerLoop, EventProducer, Handler
from shared.bus.admin import ensure_topics
from shared.contracts import Candidate, ChatMessage, ModelOutput, ModelRef, output_id_for
from shared.embedded.broker import EmbeddedBroker
from shared.observability.metrics import BusMetrics
from shared.settings import ConsumerSettings, KafkaSettings
from shared.topics import Topic, dead_letter_topic

RESULTS = Path(__file__).parent / "results" / "bus_throughput.json"


def make_events(n: int) -> list[ModelOutput]:
    filler = "lorem ipsum dolor sit amet " * 14  # ~1 KB per event once serialised
    model = ModelRef(name="bench", version="v1")
    events = []
    for i in range(n):
        oid = output_id_for(f"bench-{i}")
        events.append(ModelOutput(
            event_id=oid, output_id=oid,
            conversation=[ChatMessage(role="user", content=f"question {i}")],
            candidates=[Candidate(candidate_id="a", text=filler, model=model),
                        Candidate(candidate_id="b", text=filler[::-1], model=model)],
        ))
    return events


def raw_produce(kafka: KafkaSettings, topic: str, events: list[ModelOutput]) -> float:
    producer = KafkaProducer(**kafka.producer_kwargs())
    started = time.perf_counter()
    for event in events:  # serialising is work any producer does, so it is timed on both sides
        producer.send(topic, key=event.partition_key.encode(), value=event.model_dump_json().encode())
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def our_produce(kafka: KafkaSettings, topic: Topic, events: list[ModelOutput]) -> float:
    producer = EventProducer(kafka, BusMetrics(CollectorRegistry()))
    started = time.perf_counter()
    for event in events:
        producer.send(topic, event)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def raw_consume(kafka: KafkaSettings, topic: str, n: int, validate: bool) -> float:
    """Raw kafka-python; with `validate`, also the pydantic decode our loop does, so
    the ratio against it isolates what the loop itself adds."""
    consumer = KafkaConsumer(topic, **kafka.consumer_kwargs(f"raw-{uuid.uuid4().hex[:8]}"))
    seen = 0
    started = None
    while seen < n:
        batch = consumer.poll(timeout_ms=500)
        if batch and started is None:
            started = time.perf_counter()  # exclude the group join, as for ours
        offsets = {}
        for tp, records in batch.items():
            seen += len(records)
            if validate:
                for record in records:
                    ModelOutput.model_validate_json(record.value)
            offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        if offsets:
            consumer.commit(offsets)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return elapsed


def our_consume(kafka: KafkaSettings, topic: Topic, n: int, handle: Handler | None = None,
                group: str | None = None, sink: BatchSink | None = None) -> float:
    """Seconds for our consumer loop to handle `n` events (from the first one), with
    `handle` as the service's handler (none: the bare loop) and its batch sink, if any."""
    group = group or f"ours-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [(dead_letter_topic(group), 1)])
    seen = [0]
    started: list[float] = []
    stop = threading.Event()

    def handler(event, record):  # type: ignore[no-untyped-def]
        if not started:
            started.append(time.perf_counter())
        seen[0] += 1
        if seen[0] >= n:
            stop.set()
        return handle(event, record) if handle is not None else ()

    metrics = BusMetrics(CollectorRegistry())
    producer = EventProducer(kafka, metrics)
    loop = ConsumerLoop(topics=[topic], group_id=group, handler=handler, kafka=kafka,
                        consumer=ConsumerSettings(), producer=producer, metrics=metrics, stop=stop,
                        sink=sink)
    while not stop.is_set():
        loop.run_once()
    elapsed = time.perf_counter() - started[0]
    loop.close()
    producer.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5, help="best of this many rounds per side")
    args = parser.parse_args()
    n = args.messages
    events = make_events(n)
    size = len(events[0].to_json_bytes())
    with EmbeddedBroker() as broker:
        kafka = broker.kafka_settings(session_timeout_ms=2000, heartbeat_interval_ms=500, max_poll_records=2000)
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            raw_topic = Topic(f"bench.raw.{uuid.uuid4().hex[:8]}", ModelOutput, 1)
            our_topic = Topic(f"bench.ours.{uuid.uuid4().hex[:8]}", ModelOutput, 1)
            ensure_topics(kafka, [(raw_topic.name, 1), (our_topic.name, 1)])
            timings = {
                "raw_produce": raw_produce(kafka, raw_topic.name, events),
                "our_produce": our_produce(kafka, our_topic, events),
                "raw_consume": raw_consume(kafka, raw_topic.name, n, validate=False),
                "raw_validate_consume": raw_consume(kafka, raw_topic.name, n, validate=True),
                "our_consume": our_consume(kafka, our_topic, n),
            }
            for name, seconds in timings.items():
                best[name] = min(best.get(name, float("inf")), seconds)
    rates = {name: n / seconds for name, seconds in best.items()}
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "messages": n,
        "event_bytes": size,
        "messages_per_s": {k: round(v) for k, v in rates.items()},
        "ratio_ours_to_raw": {
            "produce": round(rates["our_produce"] / rates["raw_produce"], 3),
            "consume": round(rates["our_consume"] / rates["raw_consume"], 3),
            "consume_vs_raw_with_same_validation": round(rates["our_consume"] / rates["raw_validate_consume"], 3),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"bus throughput, {n} events of {size} B, best of {args.rounds} (Tansu, lz4, acks=all)")
    rows = [
        ("produce", "raw_produce", "our_produce"),
        ("consume (raw: bytes only)", "raw_consume", "our_consume"),
        ("consume (raw: + pydantic decode)", "raw_validate_consume", "our_consume"),
    ]
    print(f"{'stage':<34}{'raw kafka-python':>18}{'rlhf-loop bus':>16}{'ratio':>8}")
    for label, raw, ours in rows:
        print(f"{label:<34}{rates[raw]:>16,.0f}/s{rates[ours]:>14,.0f}/s{rates[ours] / rates[raw]:>8.2f}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
