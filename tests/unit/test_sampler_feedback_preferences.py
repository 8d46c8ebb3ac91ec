"""Users' edits and regenerates become preferences, on a real SQLite store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.sampler.feedback_preferences import (
    FeedbackPreferenceSettings,
    feedback_preferences,
)
from services.sampler.handlers import Sampler
from services.sampler.metrics import SamplerMetrics
from services.sampler.redaction import RedactionSettings, Redactor
from services.sampler.rules import OutputFilter, SamplingRule
from shared.contracts import (
    ModelOutput,
    Preference,
    RankingTask,
    UserFeedback,
    derived_id,
    feedback_preference_id_for,
)
from shared.topics import PREFERENCES, RANKING_TASKS
from tests import factories
from tests.unit.test_sampler import Clock, FailsOnceStore, make_sampler

NO_RULE = [SamplingRule(name="none", strategy="uniform", rate=0.0)]
NEGATIVE = [SamplingRule(name="neg", strategy="feedback", filter=OutputFilter(feedback_any=["edit", "regenerate"]))]
ACME = FeedbackPreferenceSettings(enabled_tenants=["acme"], edit_weight=2.0, regenerate_weight=0.25)


def with_feedback(request_id: str, feedback: list[UserFeedback], tenant: str | None = "acme", n: int = 2
                  ) -> ModelOutput:
    return factories.model_output(request_id, n=n).model_copy(update={"feedback": feedback, "tenant": tenant})


def edit(candidate_id: str | None, text: str) -> UserFeedback:
    return UserFeedback(kind="edit", candidate_id=candidate_id, edited_text=text)


def preferences_of(outgoing: list) -> list[Preference]:  # type: ignore[type-arg]
    return [o.event for o in outgoing if o.topic == PREFERENCES]


def counted(registry: CollectorRegistry, source: str) -> float | None:
    return registry.get_sample_value("rlhf_sampler_feedback_preferences_total", {"source": source})


def test_an_edit_becomes_one_preference_of_the_edited_text_over_the_original(tmp_path: Path) -> None:
    sampler, registry = make_sampler(tmp_path, NO_RULE, feedback_preferences=ACME)
    out = with_feedback("edited", [edit("c1", "a much better answer")])
    outgoing = sampler.handle(out, None)  # type: ignore[arg-type]
    [pref] = preferences_of(outgoing)
    assert [o.topic for o in outgoing] == [PREFERENCES]  # not sampled for ranking, still a preference
    original = out.candidates[1]
    assert pref.rejected == original
    assert pref.chosen.candidate_id == "c1-edited" and pref.chosen.text == "a much better answer"
    assert pref.chosen.model.name == "user-edit" and pref.chosen.model.version == original.model.version
    assert (pref.source, pref.weight, pref.margin, pref.guideline_version) == ("edit", 2.0, 1.0, "user-feedback")
    assert pref.preference_id == pref.event_id == feedback_preference_id_for(out.output_id, "edit", "c1-edited", "c1")
    assert pref.ranking_id == derived_id("feedback-ranking", out.output_id, "edit")
    assert pref.output_id == out.output_id and pref.prompt == list(out.conversation)
    assert counted(registry, "edit") == 1 and counted(registry, "regenerate") == 0


def test_a_redelivered_output_emits_the_same_preference_and_counts_it_once(tmp_path: Path) -> None:
    sampler, registry = make_sampler(tmp_path, NEGATIVE, feedback_preferences=ACME)
    out = with_feedback("twice", [edit("c0", "better")])
    first = sampler.handle(out, None)  # type: ignore[arg-type]
    again = sampler.handle(out, None)  # type: ignore[arg-type]
    assert [o.topic for o in first] == [RANKING_TASKS, PREFERENCES]  # sampled too: both go out
    assert [o.topic for o in again] == [RANKING_TASKS, PREFERENCES]
    assert [p.preference_id for p in preferences_of(first)] == [p.preference_id for p in preferences_of(again)]
    restarted, restarted_registry = make_sampler(tmp_path, NEGATIVE, feedback_preferences=ACME)
    [after_restart] = preferences_of(restarted.handle(out, None))  # type: ignore[arg-type]
    assert after_restart.preference_id == preferences_of(first)[0].preference_id
    assert counted(registry, "edit") == 1 and counted(restarted_registry, "edit") == 0


def test_a_rejected_output_counts_its_preference_once_too(tmp_path: Path) -> None:
    """Rejections store no decision: the preference's own mark tells the redelivery."""
    sampler, registry = make_sampler(tmp_path, NO_RULE, feedback_preferences=ACME)
    out = with_feedback("rejected", [edit("c0", "better")])
    for _ in range(3):
        assert len(preferences_of(sampler.handle(out, None))) == 1  # type: ignore[arg-type]
    assert counted(registry, "edit") == 1
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "no_rule"}) == 3


def test_a_failed_decision_re_emits_the_preference_without_counting_it_again(tmp_path: Path) -> None:
    store = FailsOnceStore(tmp_path / "sampler.db")
    registry = CollectorRegistry()
    sampler = Sampler(NEGATIVE, store, SamplerMetrics(registry), dedupe_window_s=3600.0,
                      feedback_preferences=ACME, clock=Clock())
    out = with_feedback("flaky", [edit("c0", "better")])
    with pytest.raises(sqlite3.OperationalError):
        sampler.handle(out, None)  # type: ignore[arg-type]
    outgoing = sampler.handle(out, None)  # type: ignore[arg-type]
    assert [o.topic for o in outgoing] == [RANKING_TASKS, PREFERENCES]
    assert counted(registry, "edit") == 1


def test_a_tenant_that_has_not_opted_in_gets_none(tmp_path: Path) -> None:
    sampler, registry = make_sampler(tmp_path, NEGATIVE, feedback_preferences=ACME)
    for tenant in ("globex", None):
        outgoing = sampler.handle(with_feedback(f"other-{tenant}", [edit("c0", "better")], tenant=tenant), None)  # type: ignore[arg-type]
        assert [o.topic for o in outgoing] == [RANKING_TASKS]
    off, _ = make_sampler(tmp_path / "default", NEGATIVE)  # the default: off
    assert preferences_of(off.handle(with_feedback("default", [edit("c0", "better")]), None)) == []  # type: ignore[arg-type]
    assert counted(registry, "edit") == 0


def test_every_tenant_with_a_star() -> None:
    everyone = FeedbackPreferenceSettings(enabled_tenants=["*"])
    for tenant in ("globex", None):
        assert len(feedback_preferences(with_feedback(f"star-{tenant}", [edit("c0", "x")], tenant=tenant),
                                        everyone)) == 1


def test_edits_that_say_nothing_are_no_preference() -> None:
    out = with_feedback("empty", [edit("c0", "   "), edit("c1", " answer 1\n"), edit(None, "ambiguous"),
                                  UserFeedback(kind="edit", candidate_id="c0")])
    assert feedback_preferences(out, ACME) == []
    single = with_feedback("single", [edit(None, "the only answer, edited")], n=1)
    [pref] = feedback_preferences(single, ACME)
    assert pref.rejected.candidate_id == "c0" and pref.chosen.candidate_id == "c0-edited"


def test_two_different_edits_of_one_answer_get_two_ids() -> None:
    out = with_feedback("two-edits", [edit("c0", "first try"), edit("c0", "second try"), edit("c0", "first try")])
    prefs = feedback_preferences(out, ACME)
    assert [p.chosen.candidate_id for p in prefs] == ["c0-edited", "c0-edited-2"]
    assert len({p.preference_id for p in prefs}) == 2


def test_thumbs_down_regenerate_thumbs_up_prefers_the_new_answer(tmp_path: Path) -> None:
    sampler, registry = make_sampler(tmp_path, NO_RULE, feedback_preferences=ACME)
    out = with_feedback("regen", [UserFeedback(kind="thumbs_down", candidate_id="c0"),
                                  UserFeedback(kind="regenerate", candidate_id="c0"),
                                  UserFeedback(kind="thumbs_up", candidate_id="c1")])
    [pref] = preferences_of(sampler.handle(out, None))  # type: ignore[arg-type]
    assert (pref.chosen.candidate_id, pref.rejected.candidate_id) == ("c1", "c0")
    assert (pref.source, pref.weight) == ("regenerate", 0.25)
    assert pref.preference_id == feedback_preference_id_for(out.output_id, "regenerate", "c1", "c0")
    sampler.handle(out, None)  # type: ignore[arg-type]
    assert counted(registry, "regenerate") == 1


def test_regenerate_needs_all_three_signals() -> None:
    down, up = UserFeedback(kind="thumbs_down", candidate_id="c0"), UserFeedback(kind="thumbs_up", candidate_id="c1")
    regen = UserFeedback(kind="regenerate")
    assert feedback_preferences(with_feedback("no-regen", [down, up]), ACME) == []
    assert feedback_preferences(with_feedback("no-up", [down, regen]), ACME) == []
    assert feedback_preferences(with_feedback("no-down", [regen, up]), ACME) == []
    # a regenerate of the liked answer is no evidence against the disliked one
    assert feedback_preferences(with_feedback("other-regen", [down, UserFeedback(kind="regenerate", candidate_id="c1"),
                                                              up]), ACME) == []
    # an answer voted both ways says nothing
    both = [down, regen, up, UserFeedback(kind="thumbs_up", candidate_id="c0")]
    assert feedback_preferences(with_feedback("both", both), ACME) == []
    [pref] = feedback_preferences(with_feedback("unattributed", [down, regen, up]), ACME)
    assert pref.source == "regenerate"


def test_an_edit_and_a_regenerate_on_one_output_are_separate_tasks() -> None:
    """The trainer keeps one ranking revision per task: sharing a task, one source's
    pairs would supersede the other's."""
    out = with_feedback("both-sources", [UserFeedback(kind="thumbs_down", candidate_id="c0"),
                                         UserFeedback(kind="regenerate"),
                                         UserFeedback(kind="thumbs_up", candidate_id="c1"),
                                         edit("c0", "what I wanted")], n=2)
    edit_pref, regen_pref = feedback_preferences(out, ACME)
    assert (edit_pref.source, regen_pref.source) == ("edit", "regenerate")
    assert edit_pref.task_id != regen_pref.task_id and edit_pref.ranking_id != regen_pref.ranking_id
    assert edit_pref.revision_at == regen_pref.revision_at == out.captured_at


def test_preferences_are_redacted_like_tasks(tmp_path: Path) -> None:
    redactor = Redactor.from_settings(RedactionSettings(enabled=True))
    sampler, _ = make_sampler(tmp_path, NO_RULE, feedback_preferences=ACME, redactor=redactor)
    base = with_feedback("pii", [edit("c0", "write to jane.doe@example.com"),
                                 edit("c1", "answer 1 bob@example.com")])
    out = base.model_copy(update={"candidates": [base.candidates[0],
                                                 base.candidates[1].model_copy(update={"text": "answer 1 x@y.io"})]})
    [pref] = preferences_of(sampler.handle(out, None))  # type: ignore[arg-type]
    assert pref.chosen.text == "write to [EMAIL]"
    # the second edit only changed an e-mail address: redacted, nothing is left to prefer


def test_the_task_is_unchanged_by_feedback_preferences(tmp_path: Path) -> None:
    plain, _ = make_sampler(tmp_path / "a", NEGATIVE)
    opted, _ = make_sampler(tmp_path / "b", NEGATIVE, feedback_preferences=ACME)
    out = with_feedback("same-task", [edit("c0", "better")])
    [task_a] = [o.event for o in plain.handle(out, None) if o.topic == RANKING_TASKS]  # type: ignore[arg-type]
    [task_b] = [o.event for o in opted.handle(out, None) if o.topic == RANKING_TASKS]  # type: ignore[arg-type]
    assert isinstance(task_a, RankingTask)
    assert task_a.model_dump(exclude={"created_at"}) == task_b.model_dump(exclude={"created_at"})
