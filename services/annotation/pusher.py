"""Pushes ranking tasks into Argilla, one record per task, idempotently.

A blind comparison task (`task.ab` set) goes to the comparison dataset as a record
that names no version; its task is stored in the collector's state first (see
state.py), so a record the collector finds always has its task there.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

import httpx
from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import DependencyUnavailable, Outgoing, PoisonMessage
from shared.contracts import RankingTask

from .argilla_api import ArgillaRest, is_transient
from .datasets import COMPARISON, DatasetKey, RankingDatasets, key_for
from .metrics import AnnotationMetrics
from .records import comparison_to_record, task_to_record
from .state import CollectorState

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
    per dataset.

    `task_store`: where comparison tasks are kept (the collector's state); without
    one, a comparison task is refused (dead-lettered, replayable) rather than pushed
    with no way back to its versions."""

    def __init__(self, datasets: RankingDatasets, rest: ArgillaRest, guideline_version: str,
                 metrics: AnnotationMetrics, *, batched: bool = False,
                 suggest: Callable[[RankingTask], dict[str, Any] | None] | None = None,
                 task_store: CollectorState | None = None) -> None:
        self._datasets = datasets
        self._suggest = suggest
        self._task_store = task_store
        self._rest = rest
        self._version = guideline_version
        self._metrics = metrics
        self._batched = batched
        self._buffer: dict[str, tuple[RankingTask, ConsumerRecord | None]] = {}

    def push(self, task: RankingTask) -> None:
        """Write one task now; PoisonMessage if Argilla will never take it."""
        refused = self._write(key_for(task), [(task, None)])
        if refused:
            raise PoisonMessage(refused[0][1])

    def _record(self, task: RankingTask) -> dict[str, Any]:
        if task.ab is not None:
            return comparison_to_record(task, self._datasets.guidelines(COMPARISON)[1])
        return task_to_record(task, self._version, self._suggest(task) if self._suggest else None)

    def _store_tasks(self, tasks: list[RankingTask]) -> None:
        """Keep comparison tasks where the collector finds them, before their records
        exist (a crash in between leaves a stored task and no record: the redelivery
        pushes it)."""
        assert self._task_store is not None
        try:
            self._task_store.put_tasks({t.task_id: t.model_dump_json() for t in tasks})
        except sqlite3.Error as error:
            raise DependencyUnavailable(f"storing {len(tasks)} comparison tasks failed: {error}") from error

    def __call__(self, task: RankingTask, record: ConsumerRecord) -> Iterable[Outgoing]:
        if self._batched:
            self._buffer[task.task_id] = (task, record)  # a repeat in one batch is one record
        else:
            self.push(task)
        return ()

    def flush(self) -> list[tuple[ConsumerRecord, str]]:
        buffered, self._buffer = list(self._buffer.values()), {}
        by_size: dict[DatasetKey, list[tuple[RankingTask, ConsumerRecord | None]]] = {}
        for task, record in buffered:
            by_size.setdefault(key_for(task), []).append((task, record))
        refused: list[tuple[ConsumerRecord, str]] = []
        for k, items in by_size.items():
            refused.extend((record, reason) for record, reason in self._write(k, items) if record is not None)
        return refused

    def _write(self, k: DatasetKey, items: list[tuple[RankingTask, ConsumerRecord | None]],
               dataset_retried: bool = False) -> list[tuple[ConsumerRecord | None, str]]:
        """Upsert `items` into the dataset for k candidates (or the comparison dataset);
        returns the ones Argilla will never accept, with the reason. Raises
        DependencyUnavailable to have the whole batch redelivered later."""
        if k == COMPARISON:
            if self._task_store is None:
                return [(record, f"task {task.task_id} is an A/B comparison and this pusher has no task store")
                        for task, record in items]
            self._store_tasks([task for task, _ in items])
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
        self._metrics.pushed.labels(str(len(items[0][0].candidates))).inc(len(items))
        return []
