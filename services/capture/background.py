"""Captures written off the request path: a bounded queue and one writer thread.

The proxy must answer its caller whatever happens to capture, so it only hands a
builder (a closure that makes the event) to `offer`, which never blocks. The thread
builds events, sends them in batches and waits for the acks. Every capture that does
not make it is counted, by reason: `queue_full` (the broker is slower than traffic),
`invalid` (the exchange does not fit the contract), `broker` (not acknowledged in time;
it may still land later, under the same event id, so a retry downstream is harmless).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from shared.contracts import ModelOutput

from .metrics import CaptureMetrics
from .publisher import BrokerUnavailable, EventTooLarge, OutputPublisher

log = logging.getLogger(__name__)

Builder = Callable[[], ModelOutput]
_STOP = object()


class BackgroundCapture:
    def __init__(self, publisher: OutputPublisher, metrics: CaptureMetrics, maxsize: int,
                 batch_max: int = 256) -> None:
        self._publisher = publisher
        self._metrics = metrics
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self._batch_max = batch_max
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        metrics.proxy_queue.set_function(self._queue.qsize)

    def offer(self, build: Builder) -> None:
        try:
            self._queue.put_nowait(build)
        except queue.Full:
            self._metrics.proxy_failures.labels("queue_full").inc()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Write what is queued (within `timeout_s`), then end the thread."""
        if not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < self._batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [b for b in batch if b is not _STOP]
            self._write([b for b in batch if callable(b)])

    def _write(self, builders: list[Builder]) -> None:
        events = []
        for build in builders:
            try:
                events.append(build())
            except Exception as error:  # noqa: BLE001 - one odd exchange must not stop capture
                self._metrics.proxy_failures.labels("invalid").inc()
                log.warning("proxied exchange not captured: %s: %s", type(error).__name__, str(error)[:500])
        if not events:
            return
        try:
            errors = self._publisher.wait_all(self._publisher.send_all(events))
        except (BrokerUnavailable, EventTooLarge) as error:
            self._metrics.proxy_failures.labels("broker").inc(len(events))
            log.warning("%d proxied exchange(s) not captured: %s", len(events), error)
            return
        failed = sum(1 for e in errors if e is not None)
        if failed:
            self._metrics.proxy_failures.labels("broker").inc(failed)
            log.warning("%d proxied exchange(s) not acknowledged by the broker", failed)
        self._metrics.accepted.labels("proxy").inc(len(events) - failed)
