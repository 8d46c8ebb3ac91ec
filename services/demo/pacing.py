"""Lets the demo's own traffic step aside while a training run holds the CPU.

On a 2-core laptop the replayed traffic and the training job compete for the same
cores, and the job then takes twice as long. Real traffic never waits for training
(production runs them on different machines); the demo's replay and probe do, when
`pause_while_training` is on: they hold while the trainer's `rlhf_trainer_run_active`
is 1. If the trainer cannot be reached, nothing is paused.

With the same setting the replay also steps aside while the probe measures a newly
served version: otherwise the next cycle's traffic takes every idle minute, the probe
finishes only between runs, and the status line never shows the served version's
win rate. The probe's base answers at start-up are measured beside the traffic.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client.parser import text_string_to_metric_families


class TrainingWatch:
    def __init__(self, trainer_url: str, enabled: bool, refresh_s: float = 2.0) -> None:
        self._url = trainer_url.rstrip("/") + "/metrics" if trainer_url else ""
        self._enabled = enabled and bool(trainer_url)
        self._refresh_s = refresh_s
        self._checked_at = 0.0
        self._active = False
        self._lock = threading.Lock()
        self._probing = threading.Event()

    def training(self) -> bool:
        if not self._enabled:
            return False
        with self._lock:
            if time.monotonic() - self._checked_at >= self._refresh_s:
                self._checked_at = time.monotonic()
                self._active = self._read()
            return self._active

    def _read(self) -> bool:
        try:
            with urllib.request.urlopen(self._url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return False
        for family in text_string_to_metric_families(text):
            if family.name == "rlhf_trainer_run_active":
                return any(sample.value >= 1 for sample in family.samples)
        return False

    def wait_until_idle(self, stop: threading.Event) -> bool:
        """Block while a run trains; False if `stop` was set meanwhile."""
        return self._wait_while(self.training, stop)

    @contextmanager
    def probe_first(self) -> Iterator[None]:
        """While this is held, `wait_for_traffic_turn` holds the replay."""
        if self._enabled:
            self._probing.set()
        try:
            yield
        finally:
            self._probing.clear()

    def wait_for_traffic_turn(self, stop: threading.Event) -> bool:
        """Block while a run trains or the probe measures a new version; False if
        `stop` was set meanwhile."""
        return self._wait_while(lambda: self._probing.is_set() or self.training(), stop)

    def _wait_while(self, busy: Callable[[], bool], stop: threading.Event) -> bool:
        while busy():
            if stop.wait(self._refresh_s):
                return False
        return not stop.is_set()
