"""Collects completed records into `rlhf.rankings` and `rlhf.preferences`, and the
blind canary comparisons also into `rlhf.comparisons`.

Each poll, per ranking dataset: read completed records updated since the watermark
(minus an overlap), skip those already published at the same revision, publish one
RankingResult and its preference pairs per new record, wait for the broker's
acknowledgement, then persist the watermark and the published revisions. A record
collected twice (overlap, restart, webhook + poll) yields the same ids, and the state
stops it from being sent twice in the first place. Records that yield nothing
(discarded, malformed, not ours) are counted once and marked, never retried.

Edits: when an annotator changes a ranking they already submitted, Argilla moves the
response's `updated_at` but not the record's (measured on argilla-server 2.8.0), and
its search can neither filter nor sort by a response's time; so the watermark walk
never sees an edit of a record behind it. Two ways catch it instead:
- hints: the records named by verified webhook deliveries (`response.updated`,
  `record.completed`; see webhooks.py), each re-read by id from Argilla, checked to be
  a completed record of one of our datasets, and collected like any other;
- the rescan, which needs no webhook: every `rescan_interval_s`, if the dataset's
  `last_activity_at` (which Argilla moves on every response change) moved since the
  last rescan, every completed record updated within `rescan_window_s` is read again.
A changed ranking is a new revision (new ids, `revision_at` = the edit's time, which
the trainer's store lets supersede the old pairs); an unchanged one is skipped.

The comparison dataset is polled the same way. Its records carry no task (they must
not name the versions), so the task is read back from the state by the record's
external id (the pusher stored it there before the push). Each new revision of a
comparison record yields its RankingResult, its preference (source "comparison";
none for a tie) and one CanaryComparison (comparisons.py), all acknowledged by the
broker before the revision is marked published.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from shared.bus import DependencyUnavailable, EventProducer
from shared.contracts import RankingTask
from shared.topics import COMPARISONS, PREFERENCES, RANKINGS, Topic

from .argilla_api import ArgillaRest
from .comparisons import comparison_for
from .datasets import COMPARISON, RankingDatasets
from .metrics import AnnotationMetrics
from .preferences import mean_pairwise_agreement, preferences_for
from .rankings import Collected, collect, parse_time
from .records import task_from_json
from .state import EPOCH, CollectorState

log = logging.getLogger(__name__)

RESCAN_INTERVAL_S = 300.0  # how often an active dataset's completed records are read again
RESCAN_WINDOW_S = 7 * 24 * 3600.0  # records completed (or updated) this far back; 0 = all
MAX_HINTS = 10_000  # record ids from webhooks waiting for the next poll; beyond, the rescan covers


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
        comparisons_topic: Topic = COMPARISONS,
        rescan_interval_s: float = RESCAN_INTERVAL_S,
        rescan_window_s: float = RESCAN_WINDOW_S,
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
        self._comparisons_topic = comparisons_topic
        self._comparison_version = datasets.guidelines(COMPARISON)[1]
        self._lock = threading.Lock()  # scheduler and webhook paths never interleave
        self._rescan_interval = rescan_interval_s
        self._rescan_window = timedelta(seconds=rescan_window_s) if rescan_window_s > 0 else None
        self._next_rescan: dict[str, float] = {}  # dataset id -> monotonic time; absent = due now
        self._rescanned_activity: dict[str, str] = {}  # dataset id -> last_activity_at at its last rescan
        self._hints: set[str] = set()
        self._hints_lock = threading.Lock()

    def hint(self, record_ids: Iterable[str]) -> None:
        """Records to read again by id on the next poll (from webhook deliveries). Only
        ids are kept, and only UUIDs: what a record holds is always read from Argilla."""
        with self._hints_lock:
            for record_id in record_ids:
                try:
                    normalised = str(UUID(str(record_id)))
                except ValueError:
                    continue
                if len(self._hints) >= MAX_HINTS:
                    log.warning("more than %d records hinted by webhooks; the rescan will find the rest", MAX_HINTS)
                    self._next_rescan.clear()
                    break
                self._hints.add(normalised)

    def poll(self) -> int:
        """One pass: the hinted records, then every dataset's new records and,
        when due, its rescan; returns how many rankings it published. Raises
        DependencyUnavailable (Argilla) or KafkaError (broker): nothing is marked then
        (hints are kept), so the next poll does the same work again."""
        with self._lock:
            published = pending = 0
            datasets = {str(d.id): d.name for d in self._datasets.existing().values()}
            published += self._collect_hinted(datasets)
            for dataset_id, name in datasets.items():
                published += self._poll_dataset(name, dataset_id)
                published += self._rescan_if_due(name, dataset_id)
                pending += self._rest.pending_count(dataset_id)
            self._metrics.pending.set(pending)
            self._metrics.last_poll.set(time.time())
            return published

    def poll_safely(self, hinted: Callable[[], Iterable[str]] | None = None) -> None:
        """The scheduled job: an outage is logged and counted, the next poll retries.
        `hinted`: where the record ids of webhook deliveries are taken from (jobs.py)."""
        try:
            if hinted is not None:
                self.hint(hinted())
            self.poll()
        except (DependencyUnavailable, KafkaError) as error:
            self._metrics.poll_errors.inc()
            log.warning("collector poll failed, retrying next poll: %s", error)

    def _poll_dataset(self, name: str, dataset_id: str) -> int:
        watermark = self._state.watermark(name)
        records = self._rest.completed_since(dataset_id, watermark - self._overlap, self._page_size)
        return self._collect(name, records, watermark)

    def _collect_hinted(self, datasets: dict[str, str]) -> int:
        """The records webhooks named, each read again from Argilla: collected only if
        it is a completed record of one of our datasets (a delivery says which record
        to look at, never what it holds). Never moves a watermark."""
        with self._hints_lock:
            record_ids = sorted(self._hints)
        published = 0
        for record_id in record_ids:
            record = self._rest.record(record_id)
            name = datasets.get(str((record or {}).get("dataset_id")))
            if record is not None and name is not None and record.get("status") == "completed":
                published += self._collect(name, [record])
            with self._hints_lock:
                self._hints.discard(record_id)
        return published

    def _rescan_if_due(self, name: str, dataset_id: str) -> int:
        """Read the dataset's recent completed records again, if the rescan is due and
        the dataset saw any response activity since the last one. The activity is read
        before the walk: a change during the walk triggers the next rescan."""
        now = time.monotonic()
        if now < self._next_rescan.get(dataset_id, 0.0):
            return 0
        activity = self._rest.last_activity(dataset_id)
        published = 0
        if activity != self._rescanned_activity.get(dataset_id):
            cutoff = EPOCH if self._rescan_window is None else datetime.now(timezone.utc) - self._rescan_window
            published = self._collect(name, self._rest.completed_since(dataset_id, cutoff, self._page_size))
            self._rescanned_activity[dataset_id] = activity
            if published:
                log.info("rescan of %s found %d revised rankings", name, published)
        self._next_rescan[dataset_id] = now + self._rescan_interval
        return published

    def _collect(self, name: str, records: Iterable[dict[str, Any]], watermark: datetime | None = None) -> int:
        """Publish the records not yet published at their revision. `watermark`: this is
        the incremental walk that started there (in (updated_at, id) order), so the
        newest time it saw becomes the new watermark; None leaves it alone."""
        newest = watermark
        done: list[tuple[str, str]] = []
        futures: list[FutureRecordMetadata] = []
        rankings = 0
        outcomes: list[str] = []  # counted once the broker has them
        seen: set[tuple[str, str]] = set()
        for record in records:
            if newest is not None:
                # The walk returns every record in (updated_at, id) order, so the newest
                # time it saw is a safe watermark: nothing at or before it was left behind.
                newest = max(newest, parse_time(str(record.get("updated_at") or record["inserted_at"])))
            collected = self._collected(name, record)
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
            comparison = self._is_comparison(name)  # and so the task is an A/B pair (_stored_comparison)
            preferences = preferences_for(collected.result, collected.task, collected.revision_at,
                                          source="comparison" if comparison else "ranking")
            futures.append(self._producer.send(self._rankings_topic, collected.result))
            futures.extend(self._producer.send(self._preferences_topic, p) for p in preferences)
            if comparison:
                verdict = comparison_for(collected.result, collected.task,
                                         collected.revision_at or collected.result.completed_at)
                futures.append(self._producer.send(self._comparisons_topic, verdict))
                outcomes.append(verdict.outcome)
            rankings += 1
            self._count(collected.result.annotations, len(collected.task.candidates), len(preferences))
        if futures:
            self._producer.flush()
            for future in futures:
                future.get(timeout=30)  # raises KafkaError if the broker did not take it
        for outcome in outcomes:
            self._metrics.comparisons.labels(outcome).inc()
        moved = newest is not None and watermark is not None and newest > watermark
        if done or moved:
            self._state.mark(name, done, newest if moved else None)
            if moved:
                self._metrics.watermark.set(newest.timestamp())  # type: ignore[union-attr]
        if rankings:
            log.info("collected %d rankings from %s", rankings, name)
        return rankings

    def _collected(self, name: str, record: dict[str, Any]) -> Collected:
        """What a record yields; a comparison record's task comes from the state."""
        if not self._is_comparison(name):
            return collect(record, self._version)
        return collect(record, self._comparison_version, task_lookup=self._stored_comparison)

    def _is_comparison(self, name: str) -> bool:
        return name == self._datasets.name(COMPARISON)

    def _stored_comparison(self, task_id: str) -> RankingTask | None:
        task = task_from_json(self._state.task(task_id))
        return task if task is not None and task.ab is not None and task.task_id == task_id else None

    def _count(self, annotations: list, k: int, preference_count: int) -> None:  # type: ignore[type-arg]
        self._metrics.collected.inc()
        self._metrics.preferences.inc(preference_count)
        self._metrics.ties.inc(k * (k - 1) // 2 - preference_count)
        agreement = mean_pairwise_agreement(annotations)
        if agreement is not None:
            self._metrics.agreement.observe(agreement)
