"""Process lifecycle: logging set-up and a stop event set by SIGTERM/SIGINT.

Kubernetes sends SIGTERM, then SIGKILL after the grace period; a terminal sends SIGINT.
Both only set the stop event: the service stops polling, finishes the record in hand,
commits and closes on its own thread of control. A second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)
    # kafka-python logs every reconnect at WARNING/ERROR; the loop reports what matters.
    logging.getLogger("kafka").setLevel(max(logging.getLevelName(level), logging.ERROR))
    # APScheduler logs every run of every periodic job at INFO (two lines each, every
    # few seconds); its warnings (a missed or failed job) still come through.
    logging.getLogger("apscheduler").setLevel(max(logging.getLevelName(level), logging.WARNING))


def install_stop_signals(stop: threading.Event, on_second: Callable[[], None] | None = None) -> None:
    """Set `stop` on the first SIGTERM/SIGINT; on the second run `on_second` (e.g. kill
    child processes, so none is orphaned) and exit immediately."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            logging.getLogger(__name__).warning("second %s: exiting now", signal.Signals(signum).name)
            if on_second is not None:
                on_second()
            os._exit(128 + signum)
        logging.getLogger(__name__).info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
