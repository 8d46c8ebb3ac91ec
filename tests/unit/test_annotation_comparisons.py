"""Pure parts of the blind canary comparisons: votes and outcome, the blind record,
the task kept in the collector's state, the settings."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from services.annotation.comparisons import comparison_for, outcome_of, votes
from services.annotation.preferences import preferences_for
from services.annotation.rankings import collect
from services.annotation.records import comparison_to_record, task_from_json
from services.annotation.schema import COMPARISON_METADATA, Layout
from services.annotation.settings import AnnotationOptions
from services.annotation.state import CollectorState
from shared.contracts import (
    AnnotatorRanking,
    CandidateRank,
    RankingResult,
    RankingTask,
    SamplingDecision,
    comparison_id_for,
    ranking_id_for,
    task_id_for,
)
from tests import factories

NOW = datetime(2026, 12, 2, tzinfo=timezone.utc)


def ab_task(app: str | None = None) -> RankingTask:
    output = factories.ab_output("ab-unit")
    tid = task_id_for(output.output_id)
    return RankingTask(event_id=tid, task_id=tid, output_id=output.output_id, prompt=list(output.conversation),
                       candidates=list(reversed(output.candidates)), app=app,
                       sampling=SamplingDecision(rule="canary-ab", strategy="ab", score=1.0), ab=output.ab)


def judged(task: RankingTask, *canary_stable_ranks: tuple[int, int]) -> RankingResult:
    assert task.ab is not None
    annotations = [AnnotatorRanking(annotator_id=f"a{i}", submitted_at=NOW, ranks=[
        CandidateRank(candidate_id=task.ab.canary_candidate_id, rank=c),
        CandidateRank(candidate_id=task.ab.stable_candidate_id, rank=s)]) for i, (c, s) in enumerate(canary_stable_ranks)]
    rid = ranking_id_for(task.task_id, "rev")
    return RankingResult(event_id=rid, ranking_id=rid, task_id=task.task_id, output_id=task.output_id, record_id="r",
                         guideline_version="comparison-v1", annotations=annotations, completed_at=NOW)


def test_the_outcome_is_the_majority_of_canary_and_stable_votes_and_even_counts_tie() -> None:
    task = ab_task()
    assert votes(judged(task, (1, 2), (1, 1), (2, 1)).annotations, "choice-0", "ab-1") == (1, 1, 1)
    assert outcome_of(2, 1) == "canary" and outcome_of(0, 1) == "stable"
    assert outcome_of(1, 1) == "tie" and outcome_of(0, 0) == "tie"
    comparison = comparison_for(judged(task, (1, 2), (1, 1)), task, NOW)
    assert (comparison.outcome, comparison.canary_votes, comparison.tie_votes) == ("canary", 1, 1)
    assert comparison.comparison_id == comparison_id_for(comparison.ranking_id)
    assert (comparison.canary_version, comparison.stable_version) == ("policy-v0002", "policy-v0001")
    assert comparison.guideline_version == "comparison-v1" and comparison.judged_at == NOW
    with pytest.raises(ValueError):
        comparison_for(judged(task, (1, 2)), factories.ranking_task(factories.model_output()), NOW)


@pytest.mark.parametrize("ranks", [[(1, 2)], [(1, 1)], [(2, 1), (1, 2)], [(1, 2), (1, 1)], [(2, 1), (1, 1), (2, 1)]])
def test_a_comparison_and_its_preference_never_disagree(ranks: list[tuple[int, int]]) -> None:
    task = ab_task()
    result = judged(task, *ranks)
    outcome = comparison_for(result, task, NOW).outcome
    preferences = preferences_for(result, task, source="comparison")
    if outcome == "tie":
        assert preferences == []
    else:
        [preference] = preferences
        assert preference.source == "comparison"
        winner = task.ab.canary_candidate_id if outcome == "canary" else task.ab.stable_candidate_id  # type: ignore[union-attr]
        assert preference.chosen.candidate_id == winner


def test_a_comparison_record_names_no_version() -> None:
    task = ab_task(app="support-bot")
    record = comparison_to_record(task, "comparison-v1")
    text = json.dumps(record)
    assert "policy-v0002" not in text and "policy-v0001" not in text
    assert record["external_id"] == task.task_id
    assert record["metadata"] == {"sampling_rule": "canary-ab", "app": "support-bot",
                                  "guideline_version": "comparison-v1"}
    assert record["fields"]["answer_1"] == task.candidates[0].text  # the task's order, not canary first
    assert "suggestions" not in record
    # a value that happens to name a version is left out rather than shown
    leaky = comparison_to_record(ab_task(app="app-for-policy-v0002"), "comparison-v1")
    assert "app" not in leaky["metadata"] and "policy-v0002" not in json.dumps(leaky)
    assert set(record["metadata"]) <= set(COMPARISON_METADATA)


def test_the_comparison_layout_declares_only_non_revealing_metadata_and_no_extra() -> None:
    layout = Layout.comparison(rationale=True, min_submitted=3)
    assert (layout.k, layout.rating_axes, layout.extra_metadata) == (2, (), False)
    assert layout.terms_metadata == COMPARISON_METADATA and layout.float_metadata == ()
    assert "model_versions" not in layout.terms_metadata


def test_the_state_keeps_one_task_per_id_and_the_collector_reads_it_back(tmp_path: Path) -> None:
    state = CollectorState(tmp_path / "collector.sqlite")
    try:
        task = ab_task()
        state.put_tasks({task.task_id: task.model_dump_json()})
        state.put_tasks({task.task_id: task.model_dump_json()})  # a redelivery
        assert task_from_json(state.task(task.task_id)) == task
        assert state.task("nope") is None
        count = state._db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]  # noqa: SLF001
        assert count == 1
    finally:
        state.close()
    reopened = CollectorState(tmp_path / "collector.sqlite")  # it survives a restart
    try:
        assert task_from_json(reopened.task(task.task_id)) == task
    finally:
        reopened.close()


def test_collect_takes_a_comparison_task_from_the_lookup_and_discards_an_unknown_one() -> None:
    task = ab_task()
    record = {"id": "00000000-0000-0000-0000-000000000002", "external_id": task.task_id,
              "metadata": comparison_to_record(task, "comparison-v1")["metadata"],
              "updated_at": "2026-12-02T00:00:01", "inserted_at": "2026-12-02T00:00:00",
              "responses": [{"user_id": "u-1", "status": "submitted", "updated_at": "2026-12-02T00:00:05",
                             "values": {"rank": {"value": [{"value": "answer_1", "rank": 2},
                                                           {"value": "answer_2", "rank": 1}]}}}]}
    collected = collect(record, "comparison-v0", task_lookup={task.task_id: task}.get)
    assert collected.result is not None and collected.task == task
    assert collected.result.guideline_version == "comparison-v1"  # stamped on the record at push
    comparison = comparison_for(collected.result, task, collected.revision_at or NOW)
    assert comparison.outcome == "canary"  # answer_2 is the canary's (the task lists the stable first)
    assert collect(record, "comparison-v1", task_lookup=lambda _: None).discarded == "unknown_task"
    assert collect(record, "comparison-v1").discarded == "not_a_task"  # the record alone names no task


def test_the_comparison_guidelines_have_their_own_version_and_dataset() -> None:
    options = AnnotationOptions()
    assert options.comparison_dataset == "rlhf-canary-ab"
    assert options.comparison_version == "comparison-v1" and options.comparison_guidelines_path.exists()
    assert AnnotationOptions(comparison_guideline_version="ab-2").comparison_version == "ab-2"
    with pytest.raises(ValueError):
        AnnotationOptions(dataset="x", comparison_dataset="x-2")  # a ranking dataset's name
