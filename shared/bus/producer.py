"""The producer every service writes with: acks=all, idempotent, compressed, keyed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from shared.contracts import Event
from shared.observability.metrics import BusMetrics
from shared.settings import KafkaSettings
from shared.topics import Topic

from .codec import encode

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]


class EventProducer:
    """Sends events keyed by their `partition_key`, so one conversation stays on one
    partition and in order. `send` returns the broker future; `publish` waits for the
    acknowledgement (what an HTTP API needs before answering 202)."""

    def __init__(
        self, settings: KafkaSettings, metrics: BusMetrics | None = None, **overrides: Any
    ) -> None:
        # `overrides` are extra kafka-python producer options for one caller's needs,
        # e.g. an HTTP API bounds `max_block_ms` by its own response deadline.
        self._producer = KafkaProducer(**{**settings.producer_kwargs(), **overrides})
        self._metrics = metrics
        self._topic_metrics: dict[str, tuple[Any, Any]] = {}

    def send(self, topic: Topic | str, event: Event, *, headers: Headers = ()) -> FutureRecordMetadata:
        key = getattr(event, "partition_key", event.event_id)
        name = topic.name if isinstance(topic, Topic) else topic
        return self.send_raw(name, key.encode("utf-8"), encode(event), headers=headers)

    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, *, headers: Headers = ()
    ) -> FutureRecordMetadata:
        future = self._producer.send(topic, key=key, value=value, headers=list(headers))
        if self._metrics is not None:
            produced, errors = self._children(topic)
            future.add_callback(lambda _md: produced.inc())
            future.add_errback(lambda _exc: errors.inc())
        return future

    def _children(self, topic: str) -> tuple[Any, Any]:
        children = self._topic_metrics.get(topic)
        if children is None:
            assert self._metrics is not None
            children = (self._metrics.produced.labels(topic), self._metrics.produce_errors.labels(topic))
            self._topic_metrics[topic] = children
        return children

    def publish(self, topic: Topic | str, event: Event, *, timeout_s: float = 10.0) -> None:
        """Send and wait until the broker acknowledged (raises KafkaError otherwise)."""
        self.send(topic, event).get(timeout=timeout_s)

    def flush(self, timeout_s: float | None = None) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)
