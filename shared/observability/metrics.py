"""Metrics of the bus, built on a registry that is passed in (no hidden global, so each
test and each service gets its own)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.topics import Topic, dead_letter_topic

from .batched_histogram import BatchedHistogram

# The fixed reasons a consumer loop counts a failure or a dead letter under.
FAILURE_REASONS = ("error", "dependency_unavailable", "dead_letter_failed")
DEAD_LETTER_KINDS = ("poison", "retries_exhausted")

# Handler latency buckets: a JSON decode is sub-millisecond, an Argilla push or a
# reward-model scoring can take seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class BusMetrics:
    """Per-topic message counts and handler latency. Label values are topic and group
    names and a fixed set of reasons, so cardinality stays bounded."""

    _by_registry: "weakref.WeakKeyDictionary[CollectorRegistry, BusMetrics]" = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, registry: CollectorRegistry) -> "BusMetrics":
        """The one BusMetrics of `registry`: every producer and consumer of a service
        counts into the same series (a second instance could not register them)."""
        metrics = cls._by_registry.get(registry)
        if metrics is None:
            metrics = cls._by_registry[registry] = cls(registry)
        return metrics

    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumed = Counter(
            "rlhf_messages_consumed_total",
            "Messages read from a topic and handled (including dead-lettered ones).",
            ["topic", "group"],
            registry=registry,
        )
        self.produced = Counter(
            "rlhf_messages_produced_total",
            "Messages acknowledged by the broker.",
            ["topic"],
            registry=registry,
        )
        self.produce_errors = Counter(
            "rlhf_messages_produce_errors_total",
            "Messages the broker did not acknowledge.",
            ["topic"],
            registry=registry,
        )
        self.failed = Counter(
            "rlhf_messages_failed_total",
            "Handler attempts that failed; reason is 'error' or 'dependency_unavailable'.",
            ["topic", "group", "reason"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "rlhf_messages_dead_lettered_total",
            "Messages sent to the group's dead-letter topic; reason is 'poison' or 'retries_exhausted'.",
            ["topic", "group", "reason"],
            registry=registry,
        )
        # Observed once per batch (see BatchedHistogram), not once per message.
        self.handler_seconds = BatchedHistogram(
            "rlhf_handler_duration_seconds",
            "Time a handler took per message, successful or not.",
            ["topic", "group"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.commits = Counter(
            "rlhf_consumer_commits_total",
            "Offset commits; outcome is 'ok' or 'failed'.",
            ["group", "outcome"],
            registry=registry,
        )
        self.last_poll = Gauge(
            "rlhf_consumer_last_poll_timestamp_seconds",
            "Unix time of the consumer's last poll; a stalled consumer stops moving it.",
            ["group"],
            registry=registry,
        )

    def declare(self, group: str | None = None, consumes: Iterable[Topic | str] = (),
                produces: Iterable[Topic | str] = (), dead_letters: str | None = None) -> BusMetrics:
        """Export the series of a service's known topics at 0 from its start, before the
        first message, failure or dead letter: a labelled series only exists after its
        first `.labels()`, so without this an alert on `increase(...) > 0` misses the
        first error of a process (it appears at 1, no increase seen) and
        `sum(increase(produced{topic=...}[6h])) == 0` has no series to fire on when a
        service never produced. Topics are `Topic`s or names; `dead_letters` (default
        `rlhf.dlq.<group>`) is what the consumer produces on poison."""
        topics = [t.name if isinstance(t, Topic) else t for t in consumes]
        if group is not None:
            for topic in topics:
                self.consumed.labels(topic, group)
                self.handler_seconds.labels(topic, group)
                for reason in FAILURE_REASONS:
                    self.failed.labels(topic, group, reason)
                for kind in DEAD_LETTER_KINDS:
                    self.dead_lettered.labels(topic, group, kind)
            for outcome in ("ok", "failed"):
                self.commits.labels(group, outcome)
        written = [t.name if isinstance(t, Topic) else t for t in produces]
        if group is not None and topics:
            written.append(dead_letters or dead_letter_topic(group))
        for topic in written:
            self.produced.labels(topic)
            self.produce_errors.labels(topic)
        return self
