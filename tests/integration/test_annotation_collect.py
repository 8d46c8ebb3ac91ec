"""Collecting from the real Argilla while records change under the collector: records
updated during a page walk, and an annotator who revises a ranking after it was
collected (real argilla-server, embedded broker, the trainer's real SQLite store)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.annotation.argilla_api import ArgillaRest
from services.annotation.collector import Collector
from services.annotation.records import task_to_record
from services.annotation.state import EPOCH
from services.trainer.store import PreferenceStore
from shared.contracts import RankingTask
from shared.embedded.argilla import EmbeddedArgilla
from shared.settings import KafkaSettings

from .argilla_fixtures import argilla, argilla_client, dataset_prefix  # noqa: F401  (fixtures)
from .test_annotation import Setup, annotator, events, make_setup, make_task, options  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def completed(setup: Setup, argilla: EmbeddedArgilla, prefix: str, n: int) -> tuple[str, list[RankingTask]]:  # noqa: F811
    """`n` tasks pushed and ranked by one annotator: (dataset id, tasks)."""
    tasks = [make_task(f"walk-{prefix}-{i}", [1, 2]) for i in range(n)]
    for task in tasks:
        setup.pusher.push(task)
    dataset_id = str(setup.datasets.ensure(2).id)
    with annotator(argilla) as person:
        assert person.annotate(dataset_id) == n
    return dataset_id, tasks


def touch(rest: ArgillaRest, dataset_id: str, task: RankingTask) -> None:
    """Update a record the way a redelivered task pushed under new guidelines does:
    Argilla moves its updated_at to now, i.e. to the end of the collector's order."""
    rest.upsert_records(dataset_id, [task_to_record(task, "v1-touched")])


def test_records_updated_during_a_page_walk_are_all_returned(
    argilla: EmbeddedArgilla, dataset_prefix: str, make_setup: Callable[..., Setup],  # noqa: F811
) -> None:
    setup = make_setup(options(dataset_prefix))
    dataset_id, tasks = completed(setup, argilla, dataset_prefix, 6)
    by_id = {t.task_id: t for t in tasks}
    walk = setup.rest.completed_since(dataset_id, EPOCH, page_size=2)
    first = [next(walk), next(walk)]  # the first page
    # While the walk is under way, records it has already returned are updated; with
    # offset paging every later record moves up one place and one is skipped.
    for record in first:
        touch(setup.rest, dataset_id, by_id[record["external_id"]])
    rest = list(walk)
    returned = [r["external_id"] for r in first + rest]
    assert set(returned) == set(by_id), f"missed {set(by_id) - set(returned)}"
    assert len(returned) == 8  # the two touched records come again at their new place


class UpdatedMidWalk(ArgillaRest):
    """The real REST client, with one thing made deterministic: right after the first
    search page of a poll comes back, the first record on it is updated on the server
    (as a concurrent re-push would), before the collector asks for the next page."""

    def __init__(self, url: str, api_key: str, dataset_id: str, tasks: dict[str, RankingTask]) -> None:
        super().__init__(url, api_key)
        self._dataset_id, self._tasks, self.touched = dataset_id, tasks, 0

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = super()._request(method, path, **kwargs)
        if path.endswith("/records/search") and not self.touched and answer.get("items"):
            self.touched += 1
            touch(self, self._dataset_id, self._tasks[answer["items"][0]["record"]["external_id"]])
        return answer


def test_the_collector_never_moves_its_watermark_past_a_record_it_has_not_seen(
    argilla: EmbeddedArgilla, dataset_prefix: str, make_setup: Callable[..., Setup],  # noqa: F811
    kafka: KafkaSettings,
) -> None:
    setup = make_setup(options(dataset_prefix))
    dataset_id, tasks = completed(setup, argilla, dataset_prefix, 6)
    rest = UpdatedMidWalk(argilla.url, argilla.api_key, dataset_id, {t.task_id: t for t in tasks})
    try:
        # no overlap: the watermark alone decides what the next poll reads again
        collector = Collector(setup.datasets, rest, setup.producer, setup.state, setup.metrics,
                              guideline_version="v1", overlap_s=0.0, page_size=2,
                              rankings_topic=setup.collector._rankings_topic,
                              preferences_topic=setup.collector._preferences_topic)
        collector.poll()
        collector.poll()
    finally:
        rest.close()
    assert rest.touched == 1
    rankings = events(kafka, collector._rankings_topic, 7, timeout_s=3)
    assert sorted(r.task_id for r in rankings) == sorted(t.task_id for t in tasks)  # each exactly once


def test_a_revised_ranking_supersedes_the_collected_one_in_the_trainers_store(
    argilla: EmbeddedArgilla, dataset_prefix: str, make_setup: Callable[..., Setup],  # noqa: F811
    kafka: KafkaSettings, tmp_path: Path,
) -> None:
    """The annotator changes their mind in Argilla after the ranking was collected:
    the revision is collected too, and in the trainer's store (fed the topic in order,
    then redelivered in full) only the revised pairs remain, counted once."""
    setup = make_setup(options(dataset_prefix))
    task = make_task(f"revise-{dataset_prefix}", [3, 2, 1])  # the oracle ranks c0 > c1 > c2
    setup.pusher.push(task)
    dataset_id = str(setup.datasets.ensure(3).id)
    with annotator(argilla) as person:
        assert person.annotate(dataset_id) == 1
    assert setup.collector.poll() == 1
    [record] = list(setup.rest.completed_since(dataset_id, EPOCH))
    [response] = record["responses"]
    revised = [{"value": "answer_1", "rank": 2}, {"value": "answer_2", "rank": 1}, {"value": "answer_3", "rank": 3}]
    user = argilla.annotators[0]
    httpx.put(f"{argilla.url}/api/v1/responses/{response['id']}", headers={"X-Argilla-Api-Key": user.api_key},
              json={"values": {"rank": {"value": revised}}, "status": "submitted"}).raise_for_status()
    assert setup.collector.poll() == 1  # the new revision
    assert setup.collector.poll() == 0
    rankings = events(kafka, setup.collector._rankings_topic, 2)
    published = events(kafka, setup.collector._preferences_topic, 6)
    assert len(rankings) == 2 and len(published) == 6
    store = PreferenceStore(tmp_path / "trainer.sqlite")
    try:
        news = [store.add_preference(p) for p in published]
        assert not any(store.add_preference(p) for p in published)  # a full redelivery
        rows = store.preferences_upto(store.max_seq())
        texts = {c.text: c.candidate_id for c in task.candidates}
        assert {(texts[r.chosen], texts[r.rejected], r.margin) for r in rows} == {
            ("c1", "c0", 1.0), ("c1", "c2", 2.0), ("c0", "c2", 1.0)}
        # every pair changed (c0 > c1 flipped, both margins to c2 moved): each counts once
        assert sum(news) == 6 and store.new_since_last_training() == 3
    finally:
        store.close()
    first, second = [p for p in published if p.ranking_id == rankings[0].ranking_id], \
        [p for p in published if p.ranking_id == rankings[1].ranking_id]
    assert first and second and max(p.revision_at for p in first) < min(p.revision_at for p in second)  # type: ignore[type-var]
