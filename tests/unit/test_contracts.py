from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from shared.contracts import (
    ABPair,
    CanaryComparison,
    CanaryDecision,
    Event,
    ModelOutput,
    ModelUpdate,
    Preference,
    RankingResult,
    RankingTask,
    TrainingRunStatus,
    derived_id,
    output_id_for,
    preference_id_for,
    task_id_for,
)
from shared.topics import LOOP_TOPICS, by_name, dead_letter_topic
from tests import factories


def all_events() -> list[Event]:
    output = factories.model_output(n=3)
    task = factories.ranking_task(output)
    result = factories.ranking_result(task)
    return [
        output,
        task,
        result,
        factories.preference(result, task),
        factories.training_status(),
        factories.model_update(),
        factories.ab_output(),
        factories.canary_comparison(),
    ]


@pytest.mark.parametrize("event", all_events(), ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_json(event: Event) -> None:
    again = type(event).model_validate_json(event.to_json_bytes())
    assert again == event
    payload = json.loads(event.to_json_bytes())
    assert payload["schema_version"] == type(event).SCHEMA_VERSION
    assert payload["event_id"] == event.event_id
    assert payload["created_at"].endswith("Z") or "+00:00" in payload["created_at"]


def test_every_topic_has_a_contract_and_unique_name() -> None:
    names = [t.name for t in LOOP_TOPICS]
    assert len(set(names)) == len(names)
    expected = {ModelOutput, RankingTask, RankingResult, Preference, TrainingRunStatus, ModelUpdate,
                CanaryComparison}
    assert {t.contract for t in LOOP_TOPICS} == expected
    assert by_name("rlhf.preferences").contract is Preference
    assert dead_letter_topic("sampler") == "rlhf.dlq.sampler"
    with pytest.raises(KeyError, match="unknown topic"):
        by_name("rlhf.nope")


def test_validation_error_names_the_field() -> None:
    payload = json.loads(factories.model_output().to_json_bytes())
    payload["candidates"] = []
    with pytest.raises(ValidationError) as caught:
        ModelOutput.model_validate(payload)
    assert caught.value.errors()[0]["loc"] == ("candidates",)

    payload = json.loads(factories.model_output().to_json_bytes())
    payload["conversation"][0]["role"] = "robot"
    with pytest.raises(ValidationError) as caught:
        ModelOutput.model_validate(payload)
    assert caught.value.errors()[0]["loc"] == ("conversation", 0, "role")


def test_unknown_fields_are_rejected_not_dropped() -> None:
    payload = json.loads(factories.model_output().to_json_bytes())
    payload["candidatez"] = []
    with pytest.raises(ValidationError, match="candidatez"):
        ModelOutput.model_validate(payload)


def test_newer_schema_version_is_refused() -> None:
    payload = json.loads(factories.model_output().to_json_bytes())
    payload["schema_version"] = ModelOutput.SCHEMA_VERSION + 1
    with pytest.raises(ValidationError, match="newer than this reader"):
        ModelOutput.model_validate(payload)


@pytest.mark.parametrize("event", all_events(), ids=lambda e: type(e).__name__)
def test_an_event_without_schema_version_is_its_own_classes_version(event: Event) -> None:
    """Each contract pins its own version (2 or 3 for some): a producer that omits it, or
    a payload without it, gets that class's version, not the base's 1."""
    kind = type(event)
    fields = event.model_dump(exclude={"schema_version"})
    assert kind(**fields).schema_version == kind.SCHEMA_VERSION
    payload = json.loads(event.to_json_bytes())
    del payload["schema_version"]
    assert kind.model_validate_json(json.dumps(payload)).schema_version == kind.SCHEMA_VERSION


def test_events_are_immutable() -> None:
    output = factories.model_output()
    with pytest.raises(ValidationError):
        output.output_id = "other"  # type: ignore[misc]


def test_ids_are_deterministic_and_kind_scoped() -> None:
    assert output_id_for("req-1") == output_id_for("req-1")
    assert output_id_for("req-1") != output_id_for("req-2")
    # same parts, different kind: different ids
    assert derived_id("output", "x") != derived_id("task", "x")
    assert task_id_for("o1") == task_id_for("o1")
    assert preference_id_for("t", "a", "b") != preference_id_for("t", "b", "a")
    with pytest.raises(ValueError):
        derived_id("output")


def test_derived_ids_are_the_uuid5s_they_always_were() -> None:
    """Ids stored by earlier versions (decisions, preferences, Argilla records) must
    still match: derived_id is uuid5 in the loop's namespace, byte for byte."""
    import random
    import string
    import uuid

    from shared.contracts.ids import LOOP_NAMESPACE

    rng = random.Random(7)
    alphabet = string.printable.replace("\x1f", "") + "éü漢😀"
    for _ in range(2000):
        kind = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        parts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(rng.randint(1, 4))]
        expected = str(uuid.uuid5(LOOP_NAMESPACE, kind + "\x1f" + "\x1f".join(parts)))
        assert derived_id(kind, *parts) == expected
    assert output_id_for("req-1") == str(uuid.uuid5(LOOP_NAMESPACE, "output\x1freq-1"))


def test_event_id_must_match_the_domain_id() -> None:
    output = factories.model_output()
    payload = json.loads(output.to_json_bytes())
    payload["event_id"] = "something-else"
    with pytest.raises(ValidationError, match="event_id must equal output_id"):
        ModelOutput.model_validate(payload)


def test_candidate_ids_unique_and_feedback_refers_to_known_candidates() -> None:
    payload = json.loads(factories.model_output(n=2).to_json_bytes())
    payload["candidates"][1]["candidate_id"] = payload["candidates"][0]["candidate_id"]
    with pytest.raises(ValidationError, match="candidate_id values must be unique"):
        ModelOutput.model_validate(payload)
    payload = json.loads(factories.model_output(n=2).to_json_bytes())
    payload["feedback"] = [{"kind": "thumbs_down", "candidate_id": "c9"}]
    with pytest.raises(ValidationError, match="unknown candidate_id"):
        ModelOutput.model_validate(payload)


def test_ranking_task_holds_two_to_five_candidates() -> None:
    task = factories.ranking_task(factories.model_output(n=5))
    assert len(task.candidates) == 5
    for n in (1, 6):
        payload = json.loads(task.to_json_bytes())
        payload["candidates"] = [dict(payload["candidates"][0], candidate_id=f"x{i}") for i in range(n)]
        with pytest.raises(ValidationError) as caught:
            RankingTask.model_validate(payload)
        assert caught.value.errors()[0]["loc"] == ("candidates",)


def test_ties_are_allowed_but_a_candidate_is_ranked_once() -> None:
    result = factories.ranking_result(factories.ranking_task(factories.model_output(n=3)))
    payload = json.loads(result.to_json_bytes())
    ranks = payload["annotations"][0]["ranks"]
    ranks[1]["rank"] = ranks[0]["rank"]  # a tie
    assert RankingResult.model_validate(payload).annotations[0].ranks[1].rank == ranks[0]["rank"]
    ranks[1]["candidate_id"] = ranks[0]["candidate_id"]
    with pytest.raises(ValidationError, match="each candidate may be ranked once"):
        RankingResult.model_validate(payload)


def test_preference_needs_two_different_candidates_and_nonnegative_margin() -> None:
    task = factories.ranking_task(factories.model_output())
    pref = factories.preference(factories.ranking_result(task), task)
    payload = json.loads(pref.to_json_bytes())
    payload["margin"] = -1
    with pytest.raises(ValidationError) as caught:
        Preference.model_validate(payload)
    assert caught.value.errors()[0]["loc"] == ("margin",)
    payload = json.loads(pref.to_json_bytes())
    payload["rejected"] = payload["chosen"]
    with pytest.raises(ValidationError, match="rejected: must differ"):
        Preference.model_validate(payload)


def test_partition_key_keeps_a_conversation_together() -> None:
    a = factories.model_output("r1", conversation_id="conv-7")
    b = factories.model_output("r2", conversation_id="conv-7")
    assert a.partition_key == b.partition_key == "conv-7"
    task = factories.ranking_task(factories.model_output("r3"))
    assert task.partition_key == task.output_id


def test_model_update_canary_fraction_bounded() -> None:
    payload = json.loads(factories.model_update().to_json_bytes())
    payload["canary_fraction"] = 1.5
    with pytest.raises(ValidationError) as caught:
        ModelUpdate.model_validate(payload)
    assert caught.value.errors()[0]["loc"] == ("canary_fraction",)


def test_terminal_training_states() -> None:
    assert factories.training_status(state="failed").is_terminal
    assert not factories.training_status(state="started").is_terminal


def test_an_ab_output_names_exactly_its_two_candidates() -> None:
    output = factories.ab_output()
    payload = output.model_dump()
    payload["ab"]["stable_candidate_id"] = "no-such-candidate"
    with pytest.raises(ValidationError, match="ab: an A/B comparison has exactly the candidates"):
        ModelOutput.model_validate(payload)
    with pytest.raises(ValidationError, match="stable_version: must differ"):
        ABPair(canary_version="policy-v0002", stable_version="policy-v0002", canary_candidate_id="a",
               stable_candidate_id="b")


def test_older_payloads_still_read_with_the_new_fields_defaulted() -> None:
    """Schema 2 preferences (no source, no weight) and schema 1 model updates come from
    producers deployed before this release: they read as annotator rankings of weight 1."""
    task = factories.ranking_task(factories.model_output(n=2))
    pref = factories.preference(factories.ranking_result(task), task)
    old = json.loads(pref.to_json_bytes())
    old["schema_version"] = 2
    del old["source"], old["weight"]
    again = Preference.model_validate(old)
    assert (again.source, again.weight) == ("ranking", 1.0)
    update = json.loads(factories.model_update().to_json_bytes())
    update["schema_version"] = 1
    del update["decision"]
    assert ModelUpdate.model_validate(update).decision is None


def test_a_comparison_needs_a_vote_and_a_decision_flattens_to_numbers() -> None:
    payload = factories.canary_comparison().model_dump()
    payload.update(canary_votes=0, stable_votes=0, tie_votes=0)
    with pytest.raises(ValidationError, match="at least one vote"):
        CanaryComparison.model_validate(payload)
    decision = CanaryDecision(outcome="graduate", reason="evidence", canary_version="policy-v0002",
                              stable_version="base", wins=9, losses=2, ties=1, log_likelihood_ratio=3.1,
                              graduate_at=2.94, rollback_at=-2.94, posterior_win_rate=0.75, prob_not_worse=0.99,
                              canary_age_s=120.0)
    assert decision.numbers()["ab_wins"] == 9.0 and decision.numbers()["ab_llr"] == 3.1
