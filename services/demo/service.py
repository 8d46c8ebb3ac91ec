"""The demo's traffic and annotators: replay, simulated annotators and the policy probe,
each a worker of the App (no Kafka of its own: it talks to the loop over HTTP)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from services.annotation.embedded_ui import argilla_dir
from shared.app import App
from shared.datasets.hh_rlhf import prompt_split

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
    with App("demo", settings, kafka=False) as app:
        metrics = DemoMetrics(app.registry)
        watch = TrainingWatch(options.trainer_url, options.pause_while_training)
        if options.replay:
            replayer = Replayer(options, lambda outcome: metrics.requests.labels(outcome).inc(), watch)
            app.add_worker("replay", replayer.run)
        if options.simulated_annotators:
            ui_dir = Path(options.argilla_dir) if options.argilla_dir else argilla_dir(settings.data_dir)
            app.add_worker("annotators", AnnotatorPool(options, ui_dir, metrics.ranked.inc).run)
        if options.probe:
            probe = ServedPolicyProbe(options, ORACLES[options.oracle], prompt_split().heldout, metrics, watch=watch)
            app.add_worker("probe", probe.run)
        app.add_readiness("workers", lambda: all(check() for name, check in app.liveness.items()
                                                 if name.startswith("worker:")))
        log.info("demo: replay=%s simulated_annotators=%s probe=%s oracle=%s", options.replay,
                 options.simulated_annotators, options.probe, options.oracle)
        app.run(stop)
