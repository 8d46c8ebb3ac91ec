"""Revised rankings in the trainer's preference store (a real SQLite file).

An annotator who changes their ranking in Argilla produces a new revision of the
task's ranking: its pairs replace the older revision's, in the store, in every
training snapshot and in the count toward the training trigger. A redelivery of
either revision changes nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.trainer.store import PreferenceStore
from shared.contracts import Candidate, ChatMessage, ModelRef, Preference, preference_id_for, ranking_id_for

MODEL = ModelRef(name="tiny-llama", version="v0")
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
TEXTS = {"a": "answer a", "b": "answer b", "c": "answer c"}


def pref(revision: str, chosen: str, rejected: str, margin: float = 1.0, *, task: str = "task-1",
         at: datetime | None = None, schema1: bool = False) -> Preference:
    """One pair of `task`'s ranking at `revision` (updated `at`). `schema1`: as a
    producer before schema 2 sent it (pair-key id, no revision time)."""
    ranking_id = ranking_id_for(task, revision)
    pid = (preference_id_for(task, chosen, rejected) if schema1
           else preference_id_for(task, chosen, rejected, ranking_id))
    return Preference(
        event_id=pid, preference_id=pid, ranking_id=ranking_id, task_id=task, output_id=f"out-{task}",
        prompt=[ChatMessage(role="user", content=f"question of {task}")],
        chosen=Candidate(candidate_id=chosen, text=TEXTS[chosen], model=MODEL),
        rejected=Candidate(candidate_id=rejected, text=TEXTS[rejected], model=MODEL),
        margin=margin, guideline_version="v1",
        **({} if schema1 else {"revision_at": at or T0}),
        **({"created_at": at} if schema1 and at else {}),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PreferenceStore]:
    s = PreferenceStore(tmp_path / "store.sqlite")
    yield s
    s.close()


def pairs(store: PreferenceStore) -> set[tuple[str, str, float]]:
    """What a training snapshot taken now would contain."""
    return {(r.chosen, r.rejected, r.margin) for r in store.preferences_upto(store.max_seq())}


# ranking 1: a > b > c; ranking 2 (the annotator changed their mind): b > a > c
FIRST = [("a", "b", 1.0), ("a", "c", 2.0), ("b", "c", 1.0)]
SECOND = [("b", "a", 1.0), ("a", "c", 1.0), ("b", "c", 2.0)]


def revision(name: str, ranked: list[tuple[str, str, float]], at: datetime, **kwargs: object) -> list[Preference]:
    return [pref(name, c, r, m, at=at, **kwargs) for c, r, m in ranked]  # type: ignore[arg-type]


def test_a_revised_ranking_replaces_the_older_revisions_pairs(store: PreferenceStore) -> None:
    for p in revision("r1", FIRST, T0):
        store.add_preference(p)
    for p in revision("r2", SECOND, T0 + timedelta(minutes=5)):
        store.add_preference(p)
    assert pairs(store) == {("answer b", "answer a", 1.0), ("answer a", "answer c", 1.0),
                            ("answer b", "answer c", 2.0)}
    assert store.preference_count() == 3


def test_a_redelivered_revision_changes_nothing_and_a_late_older_one_is_ignored(store: PreferenceStore) -> None:
    first, second = revision("r1", FIRST, T0), revision("r2", SECOND, T0 + timedelta(minutes=5))
    for p in [*first, *second]:
        store.add_preference(p)
    snapshot = pairs(store)
    # the consumer crashed before committing: Kafka redelivers both revisions, in order
    assert not any(store.add_preference(p) for p in [*first, *second])
    assert pairs(store) == snapshot and store.preference_count() == 3


def test_a_supersede_counts_each_changed_pair_once_toward_the_trigger(store: PreferenceStore) -> None:
    for p in revision("r1", FIRST, T0):
        store.add_preference(p)
    store.create_run("run-1", "test", store.max_seq(), store.preference_count())
    store.set_run_state("run-1", "succeeded")
    assert store.new_since_last_training() == 0
    # revision 2 keeps b > c at margin 1 only if it is unchanged: here a > c drops
    # to 1, b > a flips, b > c stays as it was
    second = [("b", "a", 1.0), ("a", "c", 1.0), ("b", "c", 1.0)]
    news = [store.add_preference(p) for p in revision("r2", second, T0 + timedelta(minutes=5))]
    assert news == [True, True, False]  # the unchanged pair is not new training data
    assert store.new_since_last_training() == 2
    for p in [*revision("r2", second, T0 + timedelta(minutes=5)), *revision("r1", FIRST, T0)]:
        store.add_preference(p)  # redeliveries of either revision
    assert store.new_since_last_training() == 2
    assert pairs(store) == {("answer b", "answer a", 1.0), ("answer a", "answer c", 1.0),
                            ("answer b", "answer c", 1.0)}


def test_a_revision_that_ties_a_pair_removes_it(store: PreferenceStore) -> None:
    for p in revision("r1", FIRST, T0):
        store.add_preference(p)
    # revision 2: a and b tied at the top, so no a/b pair any more
    for p in revision("r2", [("a", "c", 1.0), ("b", "c", 1.0)], T0 + timedelta(minutes=1)):
        store.add_preference(p)
    assert pairs(store) == {("answer a", "answer c", 1.0), ("answer b", "answer c", 1.0)}


def test_schema1_events_of_a_revised_ranking_replace_by_pair(store: PreferenceStore) -> None:
    """A producer before schema 2: ids without the revision, no revision time (the
    event's creation time orders the revisions)."""
    for p in revision("r1", FIRST, T0, schema1=True):
        store.add_preference(p)
    for p in revision("r2", SECOND, T0 + timedelta(minutes=5), schema1=True):
        store.add_preference(p)
    assert pairs(store) == {("answer b", "answer a", 1.0), ("answer a", "answer c", 1.0),
                            ("answer b", "answer c", 2.0)}


def test_revisions_of_other_tasks_are_untouched(store: PreferenceStore) -> None:
    store.add_preference(pref("r1", "a", "b", task="task-1"))
    store.add_preference(pref("r1", "a", "b", task="task-2"))
    store.add_preference(pref("r2", "b", "a", task="task-2", at=T0 + timedelta(minutes=1)))
    rows = store.preferences_upto(store.max_seq())
    assert sorted((r.chosen, r.rejected) for r in rows) == [("answer a", "answer b"), ("answer b", "answer a")]


# The preferences table as stores written before revisions were tracked have it.
SCHEMA1_PREFERENCES = """
CREATE TABLE preferences (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    preference_id TEXT NOT NULL UNIQUE,
    ranking_id TEXT NOT NULL, task_id TEXT NOT NULL, output_id TEXT NOT NULL,
    prompt_json TEXT NOT NULL, prompt_hash TEXT NOT NULL,
    chosen TEXT NOT NULL, rejected TEXT NOT NULL,
    margin REAL NOT NULL, agreement REAL NOT NULL, annotator_count INTEGER NOT NULL,
    guideline_version TEXT NOT NULL, created_at TEXT NOT NULL, stored_at REAL NOT NULL
);
"""


def test_a_store_written_before_revisions_were_tracked_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA1_PREFERENCES)
        # the defect's leftovers: both directions of one pair, from two revisions
        for seq, (revision_name, chosen, rejected) in enumerate([("r1", "a", "b"), ("r2", "b", "a")], start=1):
            db.execute("INSERT INTO preferences VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (seq, preference_id_for("task-1", chosen, rejected), ranking_id_for("task-1", revision_name),
                        "task-1", "out-task-1", '[{"role": "user", "content": "q"}]', "h", TEXTS[chosen],
                        TEXTS[rejected], 1.0, 1.0, 1, "v1", (T0 + timedelta(minutes=seq)).isoformat(), 0.0))
    store = PreferenceStore(path)
    try:
        assert pairs(store) == {("answer b", "answer a", 1.0)}  # the newer revision's pair only
        assert store.add_preference(pref("r3", "a", "b", 2.0, at=T0 + timedelta(minutes=9)))
        assert pairs(store) == {("answer a", "answer b", 2.0)}
        again = PreferenceStore(path)  # a second opener (the training child) migrates nothing twice
        assert pairs(again) == {("answer a", "answer b", 2.0)}
        again.close()
    finally:
        store.close()
