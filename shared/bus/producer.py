"""The producer every service writes with: acks=all, idempotent, compressed, keyed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import (
    InvalidProducerEpochError,
    OutOfOrderSequenceNumberError,
    ProducerFencedError,
    UnknownProducerIdError,
)
from kafka.producer.future import FutureRecordMetadata

from shared.contracts import Event
from shared.observability.metrics import BusMetrics
from shared.settings import KafkaSettings
from shared.topics import Topic

from .codec import encode

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]
PRODUCER_STATE_ERRORS = (UnknownProducerIdError, OutOfOrderSequenceNumberError, InvalidProducerEpochError,
                         ProducerFencedError)


class EventProducer:
    """Sends events keyed by their `partition_key`, so one conversation stays on one
    partition and in order. `send` returns the broker future; `publish` waits for the
    acknowledgement (what an HTTP API needs before answering 202)."""

    def __init__(
        self, settings: KafkaSettings, metrics: BusMetrics | None = None, **overrides: Any
    ) -> None:
        # `overrides` are extra kafka-python producer options for one caller's needs,
        # e.g. an HTTP API bounds `max_block_ms` by its own response deadline.
        self._options = {**settings.producer_kwargs(), **overrides}
        self._producer = KafkaProducer(**self._options)
        self._metrics = metrics
        self._topic_metrics: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self._broken = False

    def send(self, topic: Topic | str, event: Event, *, headers: Headers = (),
             encoded: bytes | None = None) -> FutureRecordMetadata:
        """`encoded`: the event's encoding when the caller already has it (sent as is,
        not serialised a second time)."""
        key = getattr(event, "partition_key", event.event_id)
        name = topic.name if isinstance(topic, Topic) else topic
        return self.send_raw(name, key.encode("utf-8"), encoded if encoded is not None else encode(event),
                             headers=headers)

    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, *, headers: Headers = ()
    ) -> FutureRecordMetadata:
        if self._broken:
            self._renew()
        future = self._producer.send(topic, key=key, value=value, headers=list(headers))
        if self._metrics is None:
            future.add_errback(self._on_error)
        else:
            on_success, on_error = self._callbacks(topic)
            future.add_callback(on_success)
            future.add_errback(on_error)
        return future

    def _on_error(self, error: BaseException) -> None:
        # The broker lost this producer's id (a restarted in-memory broker, expired
        # producer state): kafka-python cannot recover the idempotent session by itself,
        # so every later send would fail. A fresh producer gets a fresh id; what failed
        # is redelivered by the caller, and deterministic ids keep that harmless.
        if isinstance(error, PRODUCER_STATE_ERRORS) or "InitProducerId" in str(error):
            if not self._broken:
                log.warning("producer session lost (%r): starting a new producer", error)
            self._broken = True

    def _renew(self) -> None:
        with self._lock:
            if not self._broken:
                return
            old, self._producer = self._producer, KafkaProducer(**self._options)
            self._broken = False
        old.close(timeout=0)

    def _callbacks(self, topic: str) -> tuple[Any, Any]:
        """A topic's acknowledgement and error callbacks, built once: a closure and a
        `labels()` lookup per send were a visible share of the producer's cost."""
        callbacks = self._topic_metrics.get(topic)
        if callbacks is None:
            assert self._metrics is not None
            produced, errors = self._metrics.produced.labels(topic), self._metrics.produce_errors.labels(topic)

            def on_success(_metadata: Any) -> None:
                produced.inc()

            def on_error(error: BaseException) -> None:
                errors.inc()
                self._on_error(error)

            callbacks = self._topic_metrics[topic] = (on_success, on_error)
        return callbacks

    def publish(self, topic: Topic | str, event: Event, *, timeout_s: float = 10.0) -> None:
        """Send and wait until the broker acknowledged (raises KafkaError otherwise)."""
        self.send(topic, event).get(timeout=timeout_s)

    def flush(self, timeout_s: float | None = None) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)
