"""Dynamic batching: which queued requests are generated together, and when.

A batched forward pass costs little more than one row's on this hardware (the weights
are read once per step for every row), so concurrent users are served together
instead of in line. One scheduler thread takes the oldest queued request, waits up to
`window_s` from its arrival for others to join (requests that arrive while a batch
runs are simply queued: the next batch starts without waiting once the window has
passed), and runs one batch of the oldest request's version: the pool sets one adapter on the
model per batch (see models.py for why not PEFT's mixed-adapter batches), so requests
for another version wait for a batch of their own. A batch holds at most `max_rows` rows (a request is n
rows); a request larger than that runs alone. Requests later in the queue that fit
fill the batch; the oldest always goes first, so none is starved.

The scheduler knows nothing of models: `run` (the pool's) generates one batch and
returns every request's answers in order, or raises, which fails the whole batch (a
version unloaded while its requests queued: KeyError; the pool closed: ShuttingDown).
A request whose future was cancelled before its batch is dropped from it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from .batch_decode import Generation, Sampling

log = logging.getLogger(__name__)


@dataclass
class Job:
    version: str
    sampling: Sampling
    future: Future[list[Generation]] = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


RunBatch = Callable[[str, list[Sampling]], list[list[Generation]]]


class Batcher:
    def __init__(self, run: RunBatch, max_rows: int, window_s: float) -> None:
        self._run = run
        self._max_rows = max(1, max_rows)
        self.window_s = max(0.0, window_s)  # read at each batch: may be changed live
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, version: str, sampling: Sampling) -> Future[list[Generation]]:
        job = Job(version, sampling)
        with self._cond:
            if self._closed is not None:
                raise self._closed
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="policy-batcher", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job.future

    def queued(self) -> int:
        """Requests waiting for a batch (not counting the one generating)."""
        with self._cond:
            return len(self._queue)

    def close(self, error: BaseException) -> None:
        """Fail every queued request with `error` and refuse new ones (the batch that is
        generating is the pool's to stop)."""
        with self._cond:
            self._closed = error
            queued = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in queued:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            jobs = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            try:
                answers = self._run(jobs[0].version, [job.sampling for job in jobs])
            except BaseException as error:  # noqa: BLE001 - every request of the batch gets it
                for job in jobs:
                    job.future.set_exception(error)
                continue
            for job, answer in zip(jobs, answers, strict=True):
                job.future.set_result(answer)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and self._closed is None:
                self._cond.wait()
            if self._closed is not None:
                return None
            oldest = self._queue[0]
            deadline = oldest.arrived + self.window_s
            while self._closed is None and self._rows(oldest.version) < self._max_rows:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed is not None:
                return None
            return self._take(oldest.version)

    def _rows(self, version: str) -> int:
        return sum(job.sampling.n for job in self._queue if job.version == version)

    def _take(self, version: str) -> list[Job]:
        """The oldest request, then every later one of its version that still fits."""
        batch: list[Job] = []
        rows = 0
        for job in list(self._queue):
            if job.version != version:
                continue
            if batch and rows + job.sampling.n > self._max_rows:
                continue
            batch.append(job)
            rows += job.sampling.n
            self._queue.remove(job)
            if rows >= self._max_rows:
                break
        return batch
