"""The one way a consumer service runs: settings -> bus -> handler -> metrics/health -> shutdown.

Every consumer service is a `ConsumerSpec` (its topics, group and handler) handed to
`run_consumer_service`; what differs between services is only the handler.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from shared.bus import BatchSink, ConsumerLoop, EventProducer, Handler, Ticker
from shared.bus.admin import ensure_topics
from shared.observability.http import HealthServer, metrics_server
from shared.observability.metrics import BusMetrics
from shared.observability.probes import kafka_reachable, wait_until_reachable
from shared.settings import ServiceSettings
from shared.topics import Topic, dead_letter_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumerSpec:
    name: str
    group_id: str
    topics: Sequence[Topic]
    handler: Handler
    produces: Sequence[Topic] = ()
    ticker: Ticker | None = None
    tick_interval_s: float = 1.0
    sink: BatchSink | None = None
    # Dependencies besides Kafka that /readyz reports (name -> "is it up now?").
    readiness: Mapping[str, Callable[[], bool]] = field(default_factory=dict)


def run_consumer_service(
    spec: ConsumerSpec,
    settings: ServiceSettings,
    stop: threading.Event,
    *,
    registry: CollectorRegistry | None = None,
    on_started: Callable[[HealthServer], None] | None = None,
    http_server: Callable[..., HealthServer] = HealthServer,
) -> None:
    """Run `spec` until `stop` is set; cleanup happens in reverse order of set-up.

    `http_server` builds the /metrics /healthz /readyz server; a service that serves
    more routes passes a HealthServer subclass (e.g. the trainer's run API)."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = BusMetrics.of(registry).declare(spec.group_id, spec.topics, spec.produces)  # series from the start
    wait_until_reachable(settings.kafka)
    if settings.consumer.create_topics:
        wanted = [(t.name, t.partitions) for t in (*spec.topics, *spec.produces)]
        ensure_topics(settings.kafka, [*wanted, (dead_letter_topic(spec.group_id), 1)])
    with ExitStack() as stack:
        producer = EventProducer(settings.kafka, metrics)
        stack.callback(producer.close)
        loop = ConsumerLoop(
            topics=spec.topics,
            group_id=spec.group_id,
            handler=spec.handler,
            kafka=settings.kafka,
            consumer=settings.consumer,
            producer=producer,
            metrics=metrics,
            stop=stop,
            ticker=spec.ticker,
            tick_interval_s=spec.tick_interval_s,
            sink=spec.sink,
        )
        stack.callback(loop.close)
        stall_limit_s = settings.kafka.max_poll_interval_ms / 1000
        liveness = {"consumer_loop": lambda: time.monotonic() - loop.last_poll_monotonic < stall_limit_s}
        readiness = {"kafka": kafka_reachable(settings.kafka), **spec.readiness}
        metrics_only = metrics_server(settings.http, registry, liveness, readiness)
        health = http_server(registry, settings.http.host, settings.http.port, liveness=liveness,
                             readiness=readiness, serve_metrics=metrics_only is None)
        stack.enter_context(health)
        if metrics_only is not None:
            stack.enter_context(metrics_only)
        log.info("%s: consuming %s as group %s; http on :%d, metrics on :%d", spec.name,
                 [t.name for t in spec.topics], spec.group_id, health.port, (metrics_only or health).port)
        if on_started is not None:
            on_started(health)
        loop.run()
    log.info("%s: stopped cleanly", spec.name)
