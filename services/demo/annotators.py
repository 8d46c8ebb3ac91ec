"""Simulated annotators: every annotator account of the embedded Argilla ranks what is
pending, through the UI's own endpoints (simulated_annotator.py). The blind canary
comparisons come first: a canary waits on them to graduate or roll back, while a
ranking a little later only delays one training pair."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from services.annotation.embedded_ui import embedded_ui
from services.annotation.settings import DEFAULT_COMPARISON_DATASET

from .oracles import ORACLES
from .settings import DemoOptions
from .simulated_annotator import SimulatedAnnotator

log = logging.getLogger(__name__)


class AnnotatorPool:
    def __init__(self, options: DemoOptions, argilla_dir: Path, on_ranked: Callable[[int], None]) -> None:
        self._options = options
        self._dir = argilla_dir
        self._on_ranked = on_ranked
        self._annotators: list[SimulatedAnnotator] = []
        self._comparison_dataset = DEFAULT_COMPARISON_DATASET

    def _connect(self) -> bool:
        ui = embedded_ui(self._dir)
        if ui is None:
            return False
        oracle = ORACLES[self._options.oracle]
        self._comparison_dataset = ui.comparison_dataset or DEFAULT_COMPARISON_DATASET
        self._annotators = [SimulatedAnnotator(ui.url, u.username, u.password, oracle, noise=self._options.noise,
                                               delay_s=self._options.annotator_delay_s, seed=i)
                            for i, u in enumerate(ui.annotators)]
        log.info("%d simulated annotators ranking at %s (oracle: %s)", len(ui.annotators), ui.url,
                 self._options.oracle)
        return bool(self._annotators)

    def run(self, stop: threading.Event) -> None:
        """Looks for pending records every 2 s while there is work, backing off to 10 s
        while there is none (every look is a search on the Argilla server)."""
        idle_s = 2.0
        while not stop.wait(idle_s):
            try:
                if not self._annotators and not self._connect():
                    continue  # Argilla not up yet
                ranked_now = 0
                for annotator in self._annotators:
                    for dataset_id in annotator_datasets(annotator, first=self._comparison_dataset):
                        ranked = annotator.annotate(dataset_id, limit=20)
                        if ranked:
                            self._on_ranked(ranked)
                            ranked_now += ranked
                        if stop.is_set():
                            return
                idle_s = 2.0 if ranked_now else min(10.0, idle_s * 1.5)
            except httpx.HTTPError as error:  # Argilla restarting: try again, reconnecting
                log.warning("simulated annotators paused: %r", error)
                self.close()
        self.close()

    def close(self) -> None:
        for annotator in self._annotators:
            annotator.close()
        self._annotators = []


def annotator_datasets(annotator: SimulatedAnnotator, first: str | None = None) -> list[str]:
    """The ids of the ready datasets this annotator may work on, the one named `first`
    (the comparison dataset) ahead of the rest."""
    response = annotator._http.get("/api/v1/me/datasets")  # noqa: SLF001 - the same session the UI uses
    response.raise_for_status()
    ready = [d for d in response.json()["items"] if d.get("status") == "ready"]
    return [d["id"] for d in sorted(ready, key=lambda d: d.get("name") != first)]
