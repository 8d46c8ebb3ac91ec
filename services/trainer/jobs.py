"""The training trigger: an APScheduler job that starts a run once enough new
preferences arrived and the minimum interval since the last run has passed.

"New" counts preferences above the watermark of the last *finished* training
(succeeded or gated), so a failed run leaves them to be counted again; the interval
(measured from the last run's start, whatever its end) stops a failing run from
being retried in a tight loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


from .metrics import TrainerMetrics
from .runs import RunCoordinator, RunRejected
from .settings import TrainerOptions
from .store import PreferenceStore

log = logging.getLogger(__name__)


def should_trigger(new_preferences: int, threshold: int, last_run_at: float | None, min_interval_s: float,
                   now: float, busy: bool) -> bool:
    if busy or new_preferences < threshold:
        return False
    return last_run_at is None or now - last_run_at >= min_interval_s


class TriggerJob:
    def __init__(self, store: PreferenceStore, coordinator: RunCoordinator, options: TrainerOptions,
                 metrics: TrainerMetrics, clock: Callable[[], float] = time.time) -> None:
        self.store, self.coordinator, self.options, self.metrics, self.clock = (
            store, coordinator, options, metrics, clock)

    def check(self) -> str | None:
        """One look; returns the run id if it started one."""
        new = self.store.new_since_last_training()
        self.metrics.new_preferences.set(new)
        if not should_trigger(new, self.options.threshold, self.store.last_run_started_at(),
                              self.options.min_interval_s, self.clock(), self.coordinator.active_run() is not None):
            return None
        try:
            return self.coordinator.start_run(f"threshold: {new} new preferences >= {self.options.threshold}")
        except RunRejected as error:
            log.info("trigger: no run (%s)", error)
            return None
