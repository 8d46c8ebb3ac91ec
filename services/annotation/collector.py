"""Collects completed records into `rlhf.rankings` and `rlhf.preferences`.

Each poll, per ranking dataset: read completed records updated since the watermark
(minus an overlap), skip those already published at the same revision, publish one
RankingResult and its preference pairs per new record, wait for the broker's
acknowledgement, then persist the watermark and the published revisions. A record
collected twice (overlap, restart, webhook + poll) yields the same ids, and the state
stops it from being sent twice in the first place. Records that yield nothing
(discarded, malformed, not ours) are counted once and marked, never retried.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from shared.bus import DependencyUnavailable, EventProducer
from shared.topics import PREFERENCES, RANKINGS, Topic

from .argilla_api import ArgillaRest
from .datasets import RankingDatasets
from .metrics import AnnotationMetrics
from .preferences import mean_pairwise_agreement, preferences_for
from .rankings import collect, parse_time
from .state import CollectorState

log = logging.getLogger(__name__)


class Collector:
    def __init__(
        self,
        datasets: RankingDatasets,
        rest: ArgillaRest,
        producer: EventProducer,
        state: CollectorState,
        metrics: AnnotationMetrics,
        *,
        guideline_version: str,
        overlap_s: float = 10.0,
        page_size: int = 200,
        rankings_topic: Topic = RANKINGS,
        preferences_topic: Topic = PREFERENCES,
    ) -> None:
        self._datasets = datasets
        self._rest = rest
        self._producer = producer
        self._state = state
        self._metrics = metrics
        self._version = guideline_version
        self._overlap = timedelta(seconds=overlap_s)
        self._page_size = page_size
        self._rankings_topic = rankings_topic
        self._preferences_topic = preferences_topic
        self._lock = threading.Lock()  # scheduler and webhook paths never interleave

    def poll(self) -> int:
        """One pass over every ranking dataset; returns how many rankings it published.
        Raises DependencyUnavailable (Argilla) or KafkaError (broker): nothing is marked
        then, so the next poll does the same work again."""
        with self._lock:
            published = pending = 0
            for dataset in self._datasets.existing().values():
                published += self._poll_dataset(dataset.name, str(dataset.id))
                pending += self._rest.pending_count(str(dataset.id))
            self._metrics.pending.set(pending)
            self._metrics.last_poll.set(time.time())
            return published

    def poll_safely(self) -> None:
        """The scheduled job: an outage is logged and counted, the next poll retries."""
        try:
            self.poll()
        except (DependencyUnavailable, KafkaError) as error:
            self._metrics.poll_errors.inc()
            log.warning("collector poll failed, retrying next poll: %s", error)

    def _poll_dataset(self, name: str, dataset_id: str) -> int:
        watermark = self._state.watermark(name)
        newest: datetime = watermark
        done: list[tuple[str, str]] = []
        futures: list[FutureRecordMetadata] = []
        rankings = 0
        seen: set[tuple[str, str]] = set()
        for record in self._rest.completed_since(dataset_id, watermark - self._overlap, self._page_size):
            # The walk returns every record in (updated_at, id) order, so the newest time
            # it saw is a safe watermark: nothing at or before it was left behind.
            newest = max(newest, parse_time(str(record.get("updated_at") or record["inserted_at"])))
            collected = collect(record, self._version)
            key = (collected.record_id, collected.revision)
            # a record updated during the walk comes again at its new place; the same
            # revision twice in one poll is published once
            if key in seen or self._state.is_published(*key):
                continue
            seen.add(key)
            done.append(key)
            if collected.malformed:
                self._metrics.malformed_responses.inc(collected.malformed)
            if collected.result is None or collected.task is None:
                self._metrics.discarded.labels(collected.discarded or "unknown").inc()
                log.warning("record %s discarded: %s", collected.record_id, collected.discarded)
                continue
            preferences = preferences_for(collected.result, collected.task, collected.revision_at)
            futures.append(self._producer.send(self._rankings_topic, collected.result))
            futures.extend(self._producer.send(self._preferences_topic, p) for p in preferences)
            rankings += 1
            self._count(collected.result.annotations, len(collected.task.candidates), len(preferences))
        if futures:
            self._producer.flush()
            for future in futures:
                future.get(timeout=30)  # raises KafkaError if the broker did not take it
        if done or newest > watermark:
            self._state.mark(name, done, newest)
            self._metrics.watermark.set(newest.timestamp())
        if rankings:
            log.info("collected %d rankings from %s", rankings, name)
        return rankings

    def _count(self, annotations: list, k: int, preference_count: int) -> None:  # type: ignore[type-arg]
        self._metrics.collected.inc()
        self._metrics.preferences.inc(preference_count)
        self._metrics.ties.inc(k * (k - 1) // 2 - preference_count)
        agreement = mean_pairwise_agreement(annotations)
        if agreement is not None:
            self._metrics.agreement.observe(agreement)
