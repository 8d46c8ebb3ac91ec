"""Pure parts of the annotation service: aggregation, parsing, layout checks, ranks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.annotation.preferences import (
    agreement,
    borda_scores,
    mean_pairwise_agreement,
    preferences_for,
)
from services.annotation.rankings import collect, revision_of
from services.annotation.records import task_from_metadata, task_to_record
from services.annotation.schema import Layout
from services.annotation.settings import AnnotationOptions
from shared.contracts import AnnotatorRanking, CandidateRank, RankingResult, ranking_id_for
from tests import factories

NOW = datetime(2026, 11, 29, tzinfo=timezone.utc)


def ranking(annotator: str, ranks: dict[str, int]) -> AnnotatorRanking:
    return AnnotatorRanking(annotator_id=annotator, submitted_at=NOW,
                            ranks=[CandidateRank(candidate_id=c, rank=r) for c, r in ranks.items()])


def result_for(task, *annotations: AnnotatorRanking, revision: str = "rev") -> RankingResult:  # type: ignore[no-untyped-def]
    rid = ranking_id_for(task.task_id, revision)
    return RankingResult(event_id=rid, ranking_id=rid, task_id=task.task_id, output_id=task.output_id,
                         record_id="r", guideline_version="v1", annotations=list(annotations), completed_at=NOW)


def test_borda_gives_rank_distance_for_one_annotator_and_keeps_ties() -> None:
    assert borda_scores([ranking("a", {"x": 1, "y": 2, "z": 3})]) == {"x": 2, "y": 1, "z": 0}
    assert borda_scores([ranking("a", {"x": 1, "y": 1, "z": 3})]) == {"x": 2, "y": 2, "z": 0}


def test_every_ordered_pair_becomes_one_preference_and_ties_none() -> None:
    task = factories.ranking_task(factories.model_output("u1", n=4))
    prefs = preferences_for(result_for(task, ranking("a", {"c0": 2, "c1": 1, "c2": 2, "c3": 4})), task)
    pairs = {(p.chosen.candidate_id, p.rejected.candidate_id): p.margin for p in prefs}
    assert pairs == {("c1", "c0"): 1, ("c1", "c2"): 1, ("c1", "c3"): 3, ("c0", "c3"): 2, ("c2", "c3"): 2}
    assert len({p.preference_id for p in prefs}) == 5


def test_disagreeing_annotators_lower_agreement_and_can_cancel_out() -> None:
    task = factories.ranking_task(factories.model_output("u2", n=2))
    a, b, c = ranking("a", {"c0": 1, "c1": 2}), ranking("b", {"c0": 1, "c1": 2}), ranking("c", {"c0": 2, "c1": 1})
    [pref] = preferences_for(result_for(task, a, b, c), task)
    assert (pref.chosen.candidate_id, pref.annotator_count) == ("c0", 3)
    assert pref.agreement == pytest.approx(2 / 3)
    assert pref.margin == pytest.approx(1 / 3)
    assert preferences_for(result_for(task, a, c), task) == []  # 1:1 is a tie
    assert agreement([a, c], "c0", "c1") == 0.5
    assert mean_pairwise_agreement([a, b]) == 1.0 and mean_pairwise_agreement([a, c]) == 0.0
    assert mean_pairwise_agreement([a]) is None


def test_preference_ids_repeat_for_a_revision_and_change_with_a_new_one() -> None:
    task = factories.ranking_task(factories.model_output("u3", n=2))
    first = preferences_for(result_for(task, ranking("a", {"c0": 1, "c1": 2})), task)
    repolled = preferences_for(result_for(task, ranking("a", {"c0": 1, "c1": 2})), task)
    assert [p.preference_id for p in first] == [p.preference_id for p in repolled]  # a re-poll: duplicates
    revised = preferences_for(result_for(task, ranking("a", {"c0": 1, "c1": 2}), revision="rev-2"), task,
                              revision_at=NOW + timedelta(minutes=1))
    assert first[0].preference_id != revised[0].preference_id  # one id never stands for two margins
    assert first[0].pair_key == revised[0].pair_key  # the pair the trainer's store matches on
    assert (first[0].revision_at, revised[0].revision_at) == (NOW, NOW + timedelta(minutes=1))


def test_the_revision_time_is_the_latest_change_of_the_record_or_its_responses() -> None:
    """Argilla keeps a completed record's updated_at when an annotator edits their
    response, so the responses' times are what move on a re-ranking."""
    task = factories.ranking_task(factories.model_output("u6", n=2))
    ranked = [{"value": "answer_1", "rank": 1}, {"value": "answer_2", "rank": 2}]
    edited = {**response("u-1", ranked), "updated_at": "2026-11-29T00:05:00"}
    discarded = {**response("u-2", None, status="discarded"), "updated_at": "2026-11-29T00:07:00"}
    assert collect(record_json(task, [response("u-1", ranked)]), "v1").revision_at == datetime(
        2026, 11, 29, 0, 0, 1, tzinfo=timezone.utc)
    assert collect(record_json(task, [edited, discarded]), "v1").revision_at == datetime(
        2026, 11, 29, 0, 7, tzinfo=timezone.utc)


def record_json(task, responses: list[dict]) -> dict:  # type: ignore[no-untyped-def, type-arg]
    rec = task_to_record(task, "v1")
    return {"id": "00000000-0000-0000-0000-000000000001", "external_id": task.task_id,
            "metadata": rec["metadata"], "responses": responses,
            "updated_at": "2026-11-29T00:00:01", "inserted_at": "2026-11-29T00:00:00"}


def response(user: str, value: object, status: str = "submitted") -> dict:  # type: ignore[type-arg]
    return {"user_id": user, "status": status, "values": {"rank": {"value": value}},
            "updated_at": "2026-11-29T00:00:01", "inserted_at": "2026-11-29T00:00:00"}


def test_collect_reads_ranks_with_ties_and_skips_malformed_and_unfinished_responses() -> None:
    task = factories.ranking_task(factories.model_output("u4", n=3))
    good = response("u-1", [{"value": "answer_1", "rank": 1}, {"value": "answer_2", "rank": 1},
                            {"value": "answer_3", "rank": 3}])
    missing = response("u-2", [{"value": "answer_1", "rank": 1}])
    unknown = response("u-3", [{"value": "answer_9", "rank": 1}, {"value": "answer_2", "rank": 2},
                               {"value": "answer_3", "rank": 3}])
    draft = response("u-4", None, status="draft")
    collected = collect(record_json(task, [good, missing, unknown, draft]), "v0")
    assert collected.result is not None and collected.malformed == 2
    assert [(r.candidate_id, r.rank) for r in collected.result.annotations[0].ranks] == [
        ("c0", 1), ("c1", 1), ("c2", 3)]
    assert collected.result.guideline_version == "v1"  # from the record, not the default
    assert collect(record_json(task, [missing]), "v1").discarded == "malformed"
    assert collect(record_json(task, [draft]), "v1").discarded == "no_submitted_response"
    assert collect({"id": "x", "metadata": {"task": "nope"}, "responses": [good]}, "v1").discarded == "not_a_task"


def test_the_revision_changes_with_an_edit_and_not_with_order() -> None:
    a, b = response("u-1", []), response("u-2", [])
    assert revision_of([a, b]) == revision_of([b, a])
    assert revision_of([a]) != revision_of([{**a, "updated_at": "2026-11-29T00:00:09"}])


def test_a_task_survives_the_round_trip_through_record_metadata() -> None:
    task = factories.ranking_task(factories.model_output("u5", n=2))
    record = task_to_record(task, "v1")
    assert record["external_id"] == task.task_id
    assert task_from_metadata(record["metadata"]) == task
    assert record["fields"]["prompt"].startswith("**user:**")


def test_settings_default_the_guideline_version_to_the_file_stem() -> None:
    options = AnnotationOptions()
    assert options.version == "v1" and options.guidelines_path.exists()
    with pytest.raises(ValueError):
        AnnotationOptions(rating_axes=["Bad Axis"])
    assert Layout(3, (), True, 1).answer_fields == ["answer_1", "answer_2", "answer_3"]


def test_webhook_signatures_are_verified_the_standard_webhooks_way() -> None:
    import base64
    import hashlib
    import hmac

    from services.annotation.webhooks import verify

    key = b"0123456789abcdef0123456789abcdef"
    secret = "whsec_" + base64.b64encode(key).decode()
    body = b'{"type":"record.completed"}'
    signature = base64.b64encode(hmac.new(key, b"msg-1.1000." + body, hashlib.sha256).digest()).decode()
    headers = {"webhook-id": "msg-1", "webhook-timestamp": "1000", "webhook-signature": f"v1,{signature}"}
    assert verify(secret, headers, body, now=1010)
    assert not verify(secret, headers, body + b" ", now=1010)  # tampered body
    assert not verify(secret, headers, body, now=1000 + 3600)  # replayed an hour later
    assert not verify(secret, {**headers, "webhook-signature": "v1,AAAA"}, body, now=1010)
    assert not verify(secret, {}, body)
