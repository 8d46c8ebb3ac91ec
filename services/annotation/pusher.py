"""Pushes ranking tasks into Argilla, one record per task, idempotently."""

from __future__ import annotations

from collections.abc import Iterable

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
    A task Argilla refuses as invalid (400/422) can never succeed: dead-lettered."""

    def __init__(self, datasets: RankingDatasets, rest: ArgillaRest, guideline_version: str,
                 metrics: AnnotationMetrics) -> None:
        self._datasets = datasets
        self._rest = rest
        self._version = guideline_version
        self._metrics = metrics

    def push(self, task: RankingTask) -> None:
        k = len(task.candidates)
        dataset = self._datasets.ensure(k)
        try:
            self._rest.upsert_records(str(dataset.id), [task_to_record(task, self._version)])
        except httpx.HTTPStatusError as error:
            if error.response.status_code in (400, 422):
                raise PoisonMessage(f"task {task.task_id} rejected by Argilla: {error.response.text[:500]}") from error
            raise
        self._metrics.pushed.labels(str(k)).inc()

    def __call__(self, task: RankingTask, record: ConsumerRecord) -> Iterable[Outgoing]:
        self.push(task)
        return ()
