"""Wiring only: replay and annotator threads, /metrics /healthz /readyz, stop."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from shared.observability.http import HealthServer

from .annotators import AnnotatorPool
from .metrics import DemoMetrics
from .replay import Replayer
from .settings import DemoSettings

log = logging.getLogger(__name__)


def main(stop: threading.Event) -> None:
    settings = DemoSettings()
    options = settings.demo
    registry = CollectorRegistry()
    metrics = DemoMetrics(registry)
    workers: list[threading.Thread] = []
    if options.replay:
        replayer = Replayer(options, lambda outcome: metrics.requests.labels(outcome).inc())
        workers.append(threading.Thread(target=replayer.run, args=(stop,), name="replay"))
    if options.simulated_annotators:
        argilla_dir = Path(options.argilla_dir or Path(settings.data_dir) / "argilla")
        pool = AnnotatorPool(options, argilla_dir, metrics.ranked.inc)
        workers.append(threading.Thread(target=pool.run, args=(stop,), name="annotators"))
    alive = {"workers": lambda: all(w.is_alive() for w in workers)}
    with HealthServer(registry, settings.http.host, settings.http.port, liveness=alive, readiness=alive):
        for worker in workers:
            worker.start()
        log.info("demo: replay=%s simulated_annotators=%s", options.replay, options.simulated_annotators)
        stop.wait()
        for worker in workers:
            worker.join(30)
    log.info("demo: stopped cleanly")
