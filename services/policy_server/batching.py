"""Dynamic batching: which queued requests are generated together, and when.

A batched forward pass costs little more than one row's on this hardware (the weights
are read once per step for every row), so concurrent users are served together
instead of in line. One scheduler thread takes the oldest queued request and waits up
to `window_s` from its arrival for others to join, but no longer than `gap_s` after
the latest arrival: company that is coming arrives in a burst, and a lone user should
not wait out the whole window for nobody (25 ms on a tiny model's 50 ms answer).
While fewer rows of its version wait than the last batch of that version had plus
those that waited through it, the batch waits for that company: the users a batch
just answered send their next requests as each finishes reading its answer, spread
over more than a gap on a busy machine. Until they are back, the window runs from the
end of the last batch (not from the oldest arrival, which may have waited through it)
and the gap does not cut it short. Starting at the first pause had left the rest for a
batch of their own: 4 batches instead of 2 for 8 clients, 0.63 of raw static batches.
A lone user is the exception: once a one-row batch was followed by the same user's
next request alone (it came back within the window and nobody came with it), its
requests start at once, without the gap, until company shows up. The gap was 3 ms of
a tiny model's 32 ms answer on every request (0.77 of raw generate through the HTTP
API); a burst that starts while a lone user is served loses one batch to it.
Requests that arrive while a batch runs are simply queued: the next batch starts
without waiting once the window has passed. A batch is one version's: the pool sets
one adapter on the model per batch (see models.py for why not PEFT's mixed-adapter
batches), so requests for another version wait for a batch of their own. A batch
holds at most `max_rows` rows (a request is n rows); a request larger than that runs
alone. Requests later in the queue that fit fill the batch; the oldest always goes
first, so none is starved.

The scheduler knows nothing of models: `run` (the pool's) generates one batch and
returns every request's answers in order, or raises, which fails the whole batch (a
version unloaded while its requests queued: KeyError; the pool closed: ShuttingDown).
A request whose future was cancelled before its batch is dropped from it.

The same thread is the pool's model thread: anything else that touches the model (a
stream, loading or unloading an adapter) is queued as a task (`call`) and runs there
alone, at the next moment the model is free, before queued requests (whose window
goes on), as it did when it took the model's lock on a thread of its own; an adapter
unloaded while requests for it wait thus fails them over at once (KeyError). Why one
thread: torch's CPU kernels run on OpenMP, and GNU libgomp gives every thread that
enters a parallel region a team of its own; with more such threads than cores its
workers spin only briefly between kernels and then sleep (libgomp's throttled spin
count, as we read it), so each small kernel pays a wake-up. Measured on the 2-core
dev machine: once a second long-lived thread had run torch, 32 greedy tokens took
82 ms instead of 50 on the tiny model and 2.4 s instead of 1.5 s on SmolLM2-135M, on
every thread, for the rest of the process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .batch_decode import Generation, Sampling

log = logging.getLogger(__name__)


@dataclass
class Job:
    version: str
    sampling: Sampling
    future: Future[list[Generation]] = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class Task:
    """Work on the model thread that is not a request (`Batcher.call`): runs alone."""

    run: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


RunBatch = Callable[[str, list[Sampling]], list[list[Generation]]]
T = TypeVar("T")


class Batcher:
    def __init__(self, run: RunBatch, max_rows: int, window_s: float, gap_s: float | None = None) -> None:
        """`gap_s`: None, the window alone decides (tests that need batches to be
        deterministic); otherwise a batch also starts once nobody arrived for gap_s."""
        self._run = run
        self.max_rows = max(1, max_rows)  # read at each batch: may be changed live
        self.window_s = max(0.0, window_s)  # read at each batch: may be changed live
        self.gap_s = gap_s
        self._last_arrival = 0.0
        self._expected: tuple[str, int] = ("", 1)  # a version's company to expect (module doc)
        self._lone_user = False  # the last two batches were one user's, one row each (module doc)
        self._last_batch_end = 0.0
        self._queue: deque[Job] = deque()
        self._tasks: deque[Task] = deque()
        self._cond = threading.Condition()
        self._closed: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, version: str, sampling: Sampling) -> Future[list[Generation]]:
        job = Job(version, sampling)
        self._enqueue(job)
        return job.future

    def call(self, run: Callable[[], T]) -> Future[T]:
        """Run `run` on this thread, alone, once the model is free (module doc)."""
        task = Task(run)
        self._enqueue(task)
        return task.future

    def _enqueue(self, item: Job | Task) -> None:
        with self._cond:
            if self._closed is not None:
                raise self._closed
            if isinstance(item, Task):
                self._tasks.append(item)
            else:
                self._queue.append(item)
                self._last_arrival = item.arrived
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="policy-batcher", daemon=True)
                self._thread.start()
            self._cond.notify()

    def queued(self) -> int:
        """Requests waiting for a batch (not counting the one generating)."""
        with self._cond:
            return len(self._queue)

    def close(self, error: BaseException) -> None:
        """Fail every queued request with `error` and refuse new ones (the batch that is
        generating is the pool's to stop)."""
        with self._cond:
            self._closed = error
            queued = [*self._tasks, *self._queue]
            self._queue.clear()
            self._tasks.clear()
            self._cond.notify_all()
        for job in queued:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            if isinstance(batch, Task):
                self._run_task(batch)
                continue
            jobs = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            try:
                answers = self._run(jobs[0].version, [job.sampling for job in jobs])
            except BaseException as error:  # noqa: BLE001 - every request of the batch gets it
                for job in jobs:
                    job.future.set_exception(error)
                continue
            with self._cond:  # its users come back, beside those that waited through it
                version = jobs[0].version
                expected = (version, sum(job.sampling.n for job in jobs) + self._rows(version))
                self._lone_user = (expected == self._expected == (version, 1)
                                   and jobs[0].arrived <= self._last_batch_end + self.window_s)
                self._expected = expected
                self._last_batch_end = time.monotonic()
            for job, answer in zip(jobs, answers, strict=True):
                job.future.set_result(answer)

    @staticmethod
    def _run_task(task: Task) -> None:
        if not task.future.set_running_or_notify_cancel():
            return
        try:
            task.future.set_result(task.run())
        except BaseException as error:  # noqa: BLE001 - the caller's future carries it
            task.future.set_exception(error)

    def _next_batch(self) -> list[Job] | Task | None:
        with self._cond:
            while not self._queue and not self._tasks and self._closed is None:
                self._cond.wait()
            if self._closed is not None:
                return None
            if self._tasks:  # a task waits for nobody and runs alone
                return self._tasks.popleft()
            oldest = self._queue[0]
            while self._closed is None and not self._tasks and (rows := self._rows(oldest.version)) < self.max_rows:
                expected_version, expected_rows = self._expected
                if oldest.version == expected_version and rows < min(expected_rows, self.max_rows):  # coming back
                    until = max(oldest.arrived, self._last_batch_end) + self.window_s
                elif (self._lone_user and oldest.version == expected_version
                      and oldest.arrived <= self._last_batch_end + self.window_s):
                    break  # a lone user back again: nobody came with it the last two times
                else:
                    until = oldest.arrived + self.window_s
                    if self.gap_s is not None:
                        until = min(until, self._last_arrival + self.gap_s)
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed is not None:
                return None
            if self._tasks:  # the requests keep their place and their window
                return self._tasks.popleft()
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
            if batch and rows + job.sampling.n > self.max_rows:
                continue
            batch.append(job)
            rows += job.sampling.n
            self._queue.remove(job)
            if rows >= self.max_rows:
                break
        return batch
