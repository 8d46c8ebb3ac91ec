"""Wiring only: replay, annotator and probe threads, /metrics /healthz /readyz, stop."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from pathlib import Path

from prometheus_client import CollectorRegistry

from shared.datasets.hh_rlhf import prompt_split
from shared.observability.http import HealthServer, metrics_server

from .annotators import AnnotatorPool
from .evaluator import ServedPolicyProbe
from .metrics import DemoMetrics
from .oracles import ORACLES
from .pacing import TrainingWatch
from .replay import Replayer
from .settings import DemoSettings

log = logging.getLogger(__name__)


def main(stop: threading.Event) -> None:
    settings = DemoSettings()
    options = settings.demo
    registry = CollectorRegistry()
    metrics = DemoMetrics(registry)
    workers: list[threading.Thread] = []
    watch = TrainingWatch(options.trainer_url, options.pause_while_training)
    if options.replay:
        replayer = Replayer(options, lambda outcome: metrics.requests.labels(outcome).inc(), watch)
        workers.append(threading.Thread(target=replayer.run, args=(stop,), name="replay"))
    if options.simulated_annotators:
        argilla_dir = Path(options.argilla_dir or Path(settings.data_dir) / "argilla")
        pool = AnnotatorPool(options, argilla_dir, metrics.ranked.inc)
        workers.append(threading.Thread(target=pool.run, args=(stop,), name="annotators"))
    if options.probe:
        probe = ServedPolicyProbe(options, ORACLES[options.oracle], prompt_split().heldout, metrics, watch=watch)
        workers.append(threading.Thread(target=probe.run, args=(stop,), name="probe"))
    alive = {"workers": lambda: all(w.is_alive() for w in workers)}
    metrics_only = metrics_server(settings.http, registry, alive, alive)
    with ExitStack() as stack:
        stack.enter_context(HealthServer(registry, settings.http.host, settings.http.port, liveness=alive,
                                         readiness=alive, serve_metrics=metrics_only is None))
        if metrics_only is not None:
            stack.enter_context(metrics_only)
        for worker in workers:
            worker.start()
        log.info("demo: replay=%s simulated_annotators=%s probe=%s oracle=%s", options.replay,
                 options.simulated_annotators, options.probe, options.oracle)
        stop.wait()
        for worker in workers:
            worker.join(30)
    log.info("demo: stopped cleanly")
