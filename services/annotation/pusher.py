"""Pushes ranking tasks into Argilla, one record per task, idempotently."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

import httpx
from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import DependencyUnavailable, Outgoing, PoisonMessage
from shared.contracts import RankingTask

from .argilla_api import ArgillaRest, is_transient
from .datasets import RankingDatasets
from .metrics import AnnotationMetrics
from .records import task_to_record

log = logging.getLogger(__name__)


class Refusal(Enum):
    """What an HTTP error from Argilla means for the records of a push."""

    RETRY = "retry"  # the records are fine, Argilla is not ready for them now
    DATASET_GONE = "dataset_gone"  # the cached dataset was deleted: look it up again, retry
    TOO_LARGE = "too_large"  # the request body is too big: split the batch
    INVALID = "invalid"  # one of the records will never be accepted: single it out


def classify(status: int) -> Refusal:
    if is_transient(status):
        return Refusal.RETRY
    if status == 404:
        return Refusal.DATASET_GONE
    if status == 413:
        return Refusal.TOO_LARGE
    return Refusal.INVALID


class Pusher:
    """The consumer's handler. The record id is the task id, so a redelivered task
    (a crash before the commit, a replay) updates the same record.

    Every Argilla error is classified (`classify`), never re-raised to the loop:
    an outage, a rotated key, a rate limit or a write conflict raise
    `DependencyUnavailable` (the loop backs off and redelivers; nothing is skipped);
    a deleted dataset is looked up (or created) again and the push retried; a bulk
    too large is split in halves; a record Argilla refuses as such (400, 422, or a
    single record too large) is dead-lettered with Argilla's reason.

    With `batched`, the handler only collects the batch's tasks and `flush` (the
    loop's BatchSink hook, called before the commit) writes them in one bulk request
    per dataset."""

    def __init__(self, datasets: RankingDatasets, rest: ArgillaRest, guideline_version: str,
                 metrics: AnnotationMetrics, *, batched: bool = False,
                 suggest: Callable[[RankingTask], dict[str, Any] | None] | None = None) -> None:
        self._datasets = datasets
        self._suggest = suggest
        self._rest = rest
        self._version = guideline_version
        self._metrics = metrics
        self._batched = batched
        self._buffer: dict[str, tuple[RankingTask, ConsumerRecord | None]] = {}

    def push(self, task: RankingTask) -> None:
        """Write one task now; PoisonMessage if Argilla will never take it."""
        refused = self._write(len(task.candidates), [(task, None)])
        if refused:
            raise PoisonMessage(refused[0][1])

    def _record(self, task: RankingTask) -> dict[str, Any]:
        return task_to_record(task, self._version, self._suggest(task) if self._suggest else None)

    def __call__(self, task: RankingTask, record: ConsumerRecord) -> Iterable[Outgoing]:
        if self._batched:
            self._buffer[task.task_id] = (task, record)  # a repeat in one batch is one record
        else:
            self.push(task)
        return ()

    def flush(self) -> list[tuple[ConsumerRecord, str]]:
        buffered, self._buffer = list(self._buffer.values()), {}
        by_size: dict[int, list[tuple[RankingTask, ConsumerRecord | None]]] = {}
        for task, record in buffered:
            by_size.setdefault(len(task.candidates), []).append((task, record))
        refused: list[tuple[ConsumerRecord, str]] = []
        for k, items in by_size.items():
            refused.extend((record, reason) for record, reason in self._write(k, items) if record is not None)
        return refused

    def _write(self, k: int, items: list[tuple[RankingTask, ConsumerRecord | None]],
               dataset_retried: bool = False) -> list[tuple[ConsumerRecord | None, str]]:
        """Upsert `items` into the dataset for k candidates; returns the ones Argilla
        will never accept, with the reason. Raises DependencyUnavailable to have the
        whole batch redelivered later."""
        dataset_id = str(self._datasets.ensure(k).id)
        try:
            self._rest.upsert_records(dataset_id, [self._record(task) for task, _ in items])
        except httpx.HTTPStatusError as error:
            status = error.response.status_code
            detail = error.response.text[:500]
            refusal = classify(status)
            if refusal is Refusal.DATASET_GONE and not dataset_retried:
                self._metrics.push_errors.labels(str(status), "retry").inc()
                log.warning("Argilla answered 404 for dataset %s (deleted?): looking it up again", dataset_id)
                self._datasets.forget(k)
                return self._write(k, items, dataset_retried=True)
            if refusal in (Refusal.RETRY, Refusal.DATASET_GONE):
                self._metrics.push_errors.labels(str(status), "retry").inc()
                hint = " (check RLHF_ANNOTATION__API_KEY)" if status in (401, 403) else ""
                raise DependencyUnavailable(f"Argilla answered {status} to a push of {len(items)} "
                                            f"records{hint}: {detail}") from error
            if len(items) > 1:  # split: a smaller bulk fits, or the bad record is singled out
                self._metrics.push_errors.labels(str(status), "split").inc()
                half = len(items) // 2
                return self._write(k, items[:half]) + self._write(k, items[half:])
            self._metrics.push_errors.labels(str(status), "dead_letter").inc()
            task = items[0][0]
            return [(items[0][1], f"task {task.task_id} refused by Argilla ({status}): {detail}")]
        self._metrics.pushed.labels(str(k)).inc(len(items))
        return []
