"""An annotator edits a ranking they already submitted (real argilla-server, embedded
broker, the trainer's real SQLite store).

What argilla-server 2.8.0 does on such an edit (measured, and asserted below): the
response's `updated_at` moves, the record's `updated_at` does not, the dataset's
`last_activity_at` moves, and the rq worker delivers `response.updated`,
`record.updated` and `record.completed` (all naming the record). The collector pages
records by the record's `updated_at`, so an edit of a record already behind its
watermark (minus the overlap) is invisible to that walk: it is caught by the webhook
(the record id of a verified delivery, re-read from Argilla) and, without webhooks,
by the rescan of completed records that runs when the dataset's activity moved.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import argilla as rg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.annotation.argilla_api import ArgillaRest
from services.annotation.collector import Collector
from services.annotation.rankings import parse_time
from services.annotation.schema import dataset_name
from services.annotation.settings import AnnotationSettings
from services.annotation.state import EPOCH, CollectorState
from services.trainer.store import PreferenceStore
from shared.contracts import Preference, RankingResult, RankingTask
from shared.embedded.argilla import EmbeddedArgilla
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.conftest import wait_for

from .argilla_fixtures import argilla, argilla_client, dataset_prefix  # noqa: F401  (fixtures)
from .test_annotation import Setup, annotator, events, make_setup, make_task, options  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

OVERLAP_S = 1.0
# The oracle ranks c0 > c1 > c2 (qualities 3, 2, 1); the annotator later reverses it.
REVERSED = [{"value": "answer_1", "rank": 3}, {"value": "answer_2", "rank": 2}, {"value": "answer_3", "rank": 1}]
FIRST_PAIRS = {("c0", "c1", 1.0), ("c0", "c2", 2.0), ("c1", "c2", 1.0)}
REVERSED_PAIRS = {("c2", "c1", 1.0), ("c2", "c0", 2.0), ("c1", "c0", 1.0)}


class CountingRest(ArgillaRest):
    """The real REST client, counting the record walks it starts."""

    def __init__(self, url: str, api_key: str) -> None:
        super().__init__(url, api_key)
        self.walks = 0

    def completed_since(self, *args: Any, **kwargs: Any) -> Any:
        self.walks += 1
        return super().completed_since(*args, **kwargs)


def collector_for(setup: Setup, rest: ArgillaRest, state: CollectorState | None = None,
                  rankings: Topic | None = None, preferences: Topic | None = None) -> Collector:
    """The collector as the service builds it, with a short overlap and a rescan that is
    due on every poll (still gated on the dataset's activity)."""
    return Collector(setup.datasets, rest, setup.producer, state or setup.state, setup.metrics,
                     guideline_version="v1", overlap_s=OVERLAP_S, rescan_interval_s=0.0,
                     rankings_topic=rankings or setup.collector._rankings_topic,
                     preferences_topic=preferences or setup.collector._preferences_topic)


def rank_one(setup: Setup, argilla: EmbeddedArgilla, task: RankingTask) -> None:  # noqa: F811
    setup.pusher.push(task)
    with annotator(argilla) as person:
        assert person.annotate(str(setup.datasets.ensure(len(task.candidates)).id)) == 1


def record_of(rest: ArgillaRest, dataset_id: str, task: RankingTask) -> dict[str, Any]:
    [record] = [r for r in rest.completed_since(dataset_id, EPOCH) if r["external_id"] == task.task_id]
    return record


def edit(argilla: EmbeddedArgilla, record: dict[str, Any], ranking: list[dict[str, Any]]) -> None:  # noqa: F811
    """What Argilla's UI sends when an annotator changes a submitted ranking and submits again."""
    [response] = record["responses"]
    user = argilla.annotators[0]
    httpx.put(f"{argilla.url}/api/v1/responses/{response['id']}", headers={"X-Argilla-Api-Key": user.api_key},
              json={"values": {"rank": {"value": ranking}}, "status": "submitted"}).raise_for_status()


def live_pairs(store: PreferenceStore, task: RankingTask) -> set[tuple[str, str, float]]:
    """The task's pairs in a training snapshot taken now, by candidate id."""
    texts = {c.text: c.candidate_id for c in task.candidates}
    return {(texts[r.chosen], texts[r.rejected], r.margin) for r in store.preferences_upto(store.max_seq())
            if r.chosen in texts}


def of_task(preferences: list[Preference], task: RankingTask) -> list[Preference]:
    return [p for p in preferences if p.task_id == task.task_id]


def direction(preferences: list[Preference]) -> set[tuple[str, str, float]]:
    return {(p.chosen.candidate_id, p.rejected.candidate_id, p.margin) for p in preferences}


def test_an_edited_ranking_is_recollected_without_webhooks_and_supersedes_in_the_trainers_store(
    argilla: EmbeddedArgilla, dataset_prefix: str, make_setup: Callable[..., Setup],  # noqa: F811
    make_topic: Callable[..., Topic], kafka: KafkaSettings, tmp_path: Path,
) -> None:
    setup = make_setup(options(dataset_prefix))
    rest = CountingRest(argilla.url, argilla.api_key)
    collector = collector_for(setup, rest)
    edited = make_task(f"edited-{dataset_prefix}", [3, 2, 1])
    later = make_task(f"later-{dataset_prefix}", [3, 2, 1])
    try:
        rank_one(setup, argilla, edited)
        time.sleep(OVERLAP_S + 0.3)  # the annotator goes on ranking: the watermark moves past `edited`
        rank_one(setup, argilla, later)
        assert collector.poll() == 2
        dataset_id = str(setup.datasets.ensure(3).id)
        before = record_of(rest, dataset_id, edited)
        assert parse_time(before["updated_at"]) < setup.state.watermark(setup.datasets.name(3)) - \
            collector._overlap, "precondition: the edited record is behind the watermark and its overlap"

        edit(argilla, before, REVERSED)
        after = record_of(rest, dataset_id, edited)
        # measured: Argilla moves the response's time, not the record's
        assert after["updated_at"] == before["updated_at"]
        assert after["responses"][0]["updated_at"] > before["responses"][0]["updated_at"]

        assert collector.poll() == 1  # the revision, found by the rescan
        assert collector.poll() == 0
    finally:
        rest.close()
    rankings = events(kafka, collector._rankings_topic, 4, timeout_s=3)
    published = events(kafka, collector._preferences_topic, 10, timeout_s=3)
    assert len(rankings) == 3 and len(published) == 9
    mine = of_task(published, edited)
    first, second = mine[:3], mine[3:]
    assert direction(first) == FIRST_PAIRS and direction(second) == REVERSED_PAIRS
    assert max(p.revision_at for p in first) < min(p.revision_at for p in second)  # type: ignore[type-var]
    assert min(p.revision_at for p in second) == parse_time(after["responses"][0]["updated_at"])  # type: ignore[type-var]

    store = PreferenceStore(tmp_path / "trainer.sqlite")
    try:
        assert sum(store.add_preference(p) for p in published) == 9
        assert live_pairs(store, edited) == REVERSED_PAIRS  # only the new direction
        assert live_pairs(store, later) == FIRST_PAIRS

        # The same edit collected again by another collector that never saw it (a
        # restart without state, or webhook + poll): the same ids, nothing new stored.
        again_rankings, again_preferences = make_topic(RankingResult), make_topic(Preference)
        fresh = collector_for(setup, ArgillaRest(argilla.url, argilla.api_key),
                              CollectorState(tmp_path / "fresh" / "collector.sqlite"),
                              again_rankings, again_preferences)
        assert fresh.poll() == 2
        repeated = events(kafka, again_preferences, 7, timeout_s=3)
        assert {p.preference_id for p in of_task(repeated, edited)} == {p.preference_id for p in second}
        assert not any(store.add_preference(p) for p in repeated)
        assert live_pairs(store, edited) == REVERSED_PAIRS
    finally:
        store.close()


def test_a_collection_pass_with_no_edits_publishes_nothing_new(
    argilla: EmbeddedArgilla, dataset_prefix: str, make_setup: Callable[..., Setup],  # noqa: F811
    kafka: KafkaSettings,
) -> None:
    setup = make_setup(options(dataset_prefix))
    rest = CountingRest(argilla.url, argilla.api_key)
    collector = collector_for(setup, rest)
    tasks = [make_task(f"still-{dataset_prefix}-{i}", [3, 2, 1]) for i in range(2)]
    try:
        for task in tasks:
            rank_one(setup, argilla, task)
        assert collector.poll() == 2
        walks = rest.walks
        assert collector.poll() == 0
        assert rest.walks == walks + 1  # nothing happened in the dataset: no rescan, one incremental walk

        # Activity that changes no submitted ranking: a second annotator saves a draft on
        # a completed record, a new task waits for its ranking. The rescan runs, finds
        # every completed record at the revision already published, and sends nothing.
        dataset_id = str(setup.datasets.ensure(3).id)
        record = record_of(rest, dataset_id, tasks[0])
        with annotator(argilla, 1) as other:
            other.submit(record["id"], REVERSED, status="draft")
        setup.pusher.push(make_task(f"still-{dataset_prefix}-pending", [1, 2, 3]))
        # a webhook naming a record that does not exist, or no record at all, is dropped
        collector.hint([str(uuid.uuid4()), "../datasets", record["id"]])
        walks = rest.walks
        assert collector.poll() == 0
        assert rest.walks == walks + 2  # the incremental walk and the rescan
        assert collector.poll() == 0
    finally:
        rest.close()
    assert len(events(kafka, collector._rankings_topic, 3, timeout_s=3)) == 2
    assert len(events(kafka, collector._preferences_topic, 7, timeout_s=3)) == 6


def test_an_edit_is_collected_within_seconds_through_the_webhook(
    argilla: EmbeddedArgilla, dataset_prefix: str, kafka: KafkaSettings, tmp_path: Path,  # noqa: F811
    make_topic: Callable[..., Topic],
) -> None:
    """`main` as `rlhf-loop run annotation` runs it. The poll interval is long and the
    service's rescan is not due again within the test, so the revision arriving within
    seconds proves the webhook path: Argilla's `response.updated` delivery -> the record
    it names, re-read from Argilla -> the new revision on the topic."""
    from services.annotation.service import main
    from shared.bus import EventProducer
    from shared.topics import PREFERENCES, RANKING_TASKS

    settings = AnnotationSettings(
        kafka=kafka, data_dir=str(tmp_path), http={"host": "127.0.0.1", "port": 0},
        annotation={"argilla_url": argilla.url, "api_key": argilla.api_key, "dataset": dataset_prefix,
                    "group_id": f"annotation-{dataset_prefix}", "poll_interval_s": 120,
                    "poll_overlap_s": OVERLAP_S},
    )
    edited = make_task(f"hook-edited-{dataset_prefix}", [3, 2, 1])
    later = make_task(f"hook-later-{dataset_prefix}", [3, 2, 1])
    stop = threading.Event()
    service = threading.Thread(target=main, args=(stop, settings, CollectorRegistry()), daemon=True)
    service.start()
    client = rg.Argilla(api_url=argilla.url, api_key=argilla.api_key)
    name = dataset_name(dataset_prefix, 3)

    def records() -> int:
        """How many of this test's tasks are records (the shared task topic may hold
        other tests' tasks too; the service pushes those into this dataset as well)."""
        dataset = client.datasets(name=name, workspace="rlhf")
        ours = {edited.task_id, later.task_id}
        return 0 if dataset is None else sum(r.id in ours for r in dataset.records)

    def mine(task: RankingTask) -> list[Preference]:
        return of_task(events(kafka, PREFERENCES, 10_000, timeout_s=1.0), task)

    producer = EventProducer(kafka)
    try:
        for n, task in enumerate((edited, later), start=1):
            producer.publish(RANKING_TASKS, task)
            assert wait_for(lambda: records() == n, timeout_s=60, interval_s=0.5)  # noqa: B023
            dataset = client.datasets(name=name, workspace="rlhf")
            with annotator(argilla) as person:
                assert person.annotate(str(dataset.id)) >= 1
            assert wait_for(lambda: len(mine(task)) == 3, timeout_s=30, interval_s=0.3)  # noqa: B023
            time.sleep(OVERLAP_S + 0.3)
        dataset_id = str(client.datasets(name=name, workspace="rlhf").id)
        rest = ArgillaRest(argilla.url, argilla.api_key)
        try:
            edit(argilla, record_of(rest, dataset_id, edited), REVERSED)
        finally:
            rest.close()
        edited_at = time.monotonic()
        assert wait_for(lambda: len(mine(edited)) == 6, timeout_s=30, interval_s=0.3), \
            "the edit never reached the topic"
        print(f"edit -> revised preferences on the topic: {time.monotonic() - edited_at:.2f}s")
    finally:
        producer.close()
        stop.set()
        service.join(30)
    assert not service.is_alive(), "the service did not stop"
    published = mine(edited)
    first, second = published[:3], published[3:]
    assert direction(first) == FIRST_PAIRS and direction(second) == REVERSED_PAIRS
    assert max(p.revision_at for p in first) < min(p.revision_at for p in second)  # type: ignore[type-var]
    store = PreferenceStore(tmp_path / "trainer.sqlite")
    try:
        for p in published:
            store.add_preference(p)
        assert live_pairs(store, edited) == REVERSED_PAIRS
    finally:
        store.close()
