"""Blind A/B answers while a canary serves: the trainer's canary judge decides from them.

For `share` of the requests that can be compared (captured, asking the served name
while a canary is live) the version that did not answer, canary or stable, answers the
same prompt with the same sampling parameters. The user gets only the routed answer and
never waits for the other: it is generated afterwards on one worker thread of its own
(one at a time: it joins the users' batches, and a thread of the event loop's default
pool held by an A/B generation would be one a user's request cannot have), from a bounded queue
(a pick beyond it is shed: the extra load of A/B can never grow without bound). The
pair is captured as one output; when the other answer fails or is shed, the served one
is captured alone, as for any request: A/B never costs the loop a captured answer. A
request for n > 1 answers is captured whole as always, and its first answer is paired
with one answer of the other version in an output of its own (`separate`).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .capture import Capture
from .metrics import PolicyServerMetrics
from .models import Generation
from .routing import Routes

if TYPE_CHECKING:
    from .api import ChatRequest

log = logging.getLogger(__name__)

Generate = Callable[["ChatRequest", str], list[Generation]]


@dataclass(frozen=True)
class ABPick:
    """The other side of a picked request: who answers too, and which side is the canary."""

    other: str
    canary: str


@dataclass(frozen=True)
class ABJob:
    request: ChatRequest
    completion_id: str
    served: str
    answer: Generation
    pick: ABPick
    separate: bool = False  # the served answers are captured already; the pair is an output of its own


class ABSampler:
    """The seedable draw. Its own random stream (seeded apart from the canary draw's):
    the same seed for both would pick mostly the canary's requests."""

    def __init__(self, share: float, seed: int | None = None) -> None:
        self.share = share
        self._random = random.Random(f"ab:{seed}") if seed is not None else random.Random()
        self._lock = threading.Lock()

    def pick(self, served: str, routes: Routes) -> ABPick | None:
        """The other side for a request `served` by a version of `routes`, or None: no
        live canary, or not drawn. Only a routed request (the served name) is passed."""
        if routes.canary is None or self.share <= 0 or served not in (routes.canary, routes.stable) \
                or routes.canary == routes.stable:
            return None
        with self._lock:
            drawn = self._random.random() < self.share
        if not drawn:
            return None
        return ABPick(other=routes.stable if served == routes.canary else routes.canary, canary=routes.canary)


class ABWorker:
    """Generates the other answers one at a time, after the responses, and captures."""

    def __init__(self, generate: Generate, capture: Capture, metrics: PolicyServerMetrics,
                 max_pending: int = 32) -> None:
        self._generate = generate
        self._capture = capture
        self._metrics = metrics
        self._jobs: queue.Queue[ABJob | None] = queue.Queue(maxsize=max_pending)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, job: ABJob) -> None:
        """Queue the other answer; never blocks. Shed (served answer captured alone)
        when the queue is full or the worker is closing."""
        if not self._closing.is_set():
            self._ensure_started()
            try:
                self._jobs.put_nowait(job)
                return
            except queue.Full:
                log.warning("A/B queue full: %s captured without its other answer", job.completion_id)
        self._alone(job)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop generating: queued picks are captured alone, the one in progress gets
        `timeout_s` (the pool's own close stops it at its next token)."""
        self._closing.set()
        try:
            self._jobs.put_nowait(None)
        except queue.Full:
            pass  # the worker sees `_closing` after its current job
        if self._thread is not None:
            self._thread.join(timeout_s)
        while True:  # whatever the worker did not reach (it never started, or timed out)
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._alone(job)

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="policy-ab", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._closing.is_set():
                self._alone(job)
                continue
            self._answer(job)

    def _answer(self, job: ABJob) -> None:
        try:
            one = job.request if job.request.n == 1 else job.request.model_copy(update={"n": 1})
            [other_answer] = self._generate(one, job.pick.other)
        except Exception:  # noqa: BLE001 - unloaded since, shutting down, failed: the served answer still counts
            log.warning("A/B answer of %s for %s failed; captured alone", job.pick.other, job.completion_id,
                        exc_info=True)
            self._alone(job)
            return
        try:
            self._capture.send_pair(job.request, job.completion_id, job.served, job.answer, job.pick.other,
                                    other_answer, job.pick.canary, separate=job.separate)
        except Exception:  # noqa: BLE001 - e.g. a pair the contract refuses: never lose the served answer
            log.exception("A/B capture of %s failed; captured alone", job.completion_id)
            self._alone(job)
            return
        self._metrics.ab_pairs.labels("ok").inc()

    def _alone(self, job: ABJob) -> None:
        self._metrics.ab_pairs.labels("error").inc()
        if not job.separate:
            self._capture.send(job.request, job.completion_id, job.served, [job.answer])
