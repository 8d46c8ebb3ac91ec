"""Pushes ranking tasks into Argilla, one record per task, idempotently."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import httpx
from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import Outgoing, PoisonMessage
from shared.contracts import RankingTask

from .argilla_api import ArgillaRest
from .datasets import RankingDatasets
from .metrics import AnnotationMetrics
from .records import task_to_record


class Pusher:
    """The consumer's handler. The record id is the task id, so a redelivered task
    (a crash before the commit, a replay) updates the same record. An outage raises
    `DependencyUnavailable`: the loop backs off and redelivers, nothing is skipped.
    A task Argilla refuses as invalid (400/422) can never succeed: dead-lettered.

    With `batched`, the handler only collects the batch's tasks and `flush` (the
    loop's BatchSink hook, called before the commit) writes them in one bulk request
    per dataset; a refused bulk is retried record by record to single out the bad one."""

    def __init__(self, datasets: RankingDatasets, rest: ArgillaRest, guideline_version: str,
                 metrics: AnnotationMetrics, *, batched: bool = False,
                 suggest: Callable[[RankingTask], dict[str, Any] | None] | None = None) -> None:
        self._datasets = datasets
        self._suggest = suggest
        self._rest = rest
        self._version = guideline_version
        self._metrics = metrics
        self._batched = batched
        self._buffer: dict[str, tuple[RankingTask, ConsumerRecord]] = {}

    def push(self, task: RankingTask) -> None:
        k = len(task.candidates)
        dataset = self._datasets.ensure(k)
        try:
            self._rest.upsert_records(str(dataset.id), [self._record(task)])
        except httpx.HTTPStatusError as error:
            if error.response.status_code in (400, 422):
                raise PoisonMessage(f"task {task.task_id} rejected by Argilla: {error.response.text[:500]}") from error
            raise
        self._metrics.pushed.labels(str(k)).inc()

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
        by_size: dict[int, list[tuple[RankingTask, ConsumerRecord]]] = {}
        for task, record in buffered:
            by_size.setdefault(len(task.candidates), []).append((task, record))
        refused: list[tuple[ConsumerRecord, str]] = []
        for k, items in by_size.items():
            dataset_id = str(self._datasets.ensure(k).id)
            try:
                self._rest.upsert_records(dataset_id, [self._record(t) for t, _ in items])
                self._metrics.pushed.labels(str(k)).inc(len(items))
            except httpx.HTTPStatusError as error:
                if error.response.status_code not in (400, 422):
                    raise
                for task, record in items:  # find the one Argilla refuses
                    try:
                        self.push(task)
                    except PoisonMessage as poison:
                        refused.append((record, poison.reason))
        return refused
