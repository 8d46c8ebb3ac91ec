"""Wiring only: settings -> topic -> producer -> app -> HTTP server, until `stop`."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack

from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from shared.bus import EventProducer
from shared.bus.admin import ensure_topics
from shared.observability.metrics import BusMetrics
from shared.observability.http import metrics_server
from shared.observability.probes import kafka_reachable, wait_until_reachable
from shared.topics import OUTPUTS

from .app import create_app
from .auth import with_token
from .server import AppServer
from .settings import CaptureSettings

log = logging.getLogger(__name__)


def close_producer(producer: EventProducer, timeout_s: float) -> None:
    """Close without raising: what is still unsent was never acknowledged, so its
    requests were answered 503 (or counted as proxy capture failures), not 202."""
    try:
        producer.close(timeout_s=timeout_s)
    except KafkaError as error:
        log.warning("capture: closed the producer with unacknowledged events pending: %s", error)


def main(stop: threading.Event) -> None:
    settings = with_token(CaptureSettings())
    options = settings.capture
    wait_until_reachable(settings.kafka)
    if settings.consumer.create_topics:
        ensure_topics(settings.kafka, [(OUTPUTS.name, OUTPUTS.partitions)])
    registry = CollectorRegistry()
    with ExitStack() as stack:
        # max_block_ms: a send waiting for metadata must give up within the time a
        # request may wait for its ack, so a lost broker is a 503, not a hung request.
        producer = EventProducer(settings.kafka, BusMetrics.of(registry),
                                 max_block_ms=int(options.publish_timeout_s * 1000))
        stack.callback(close_producer, producer, settings.consumer.shutdown_grace_s)
        app = create_app(settings, producer, registry)
        server = AppServer(app, settings.http.host, settings.http.port, log_level=settings.log_level,
                           graceful_s=settings.consumer.shutdown_grace_s)
        server.start()
        stack.callback(server.stop)
        metrics_only = metrics_server(settings.http, registry, liveness={"http": lambda: server.alive},
                                      readiness={"kafka": kafka_reachable(settings.kafka)})
        if metrics_only is not None:
            stack.enter_context(metrics_only)
        log.info("capture: listening on %s:%d (auth %s, proxy %s)", settings.http.host, server.port,
                 "off" if options.auth_disabled else "on",
                 f"to {options.proxy_upstream_url}" if options.proxy_upstream_url else "off")
        while not stop.wait(0.5):
            if not server.alive:
                raise RuntimeError("capture: the HTTP server stopped unexpectedly")
    log.info("capture: stopped cleanly")
