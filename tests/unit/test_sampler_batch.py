"""One store transaction per polled batch: decisions of a batch see each other, a
failed batch write leaves nothing (the redelivery is decided afresh and counts once),
and a restarted sampler's memory comes from the store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.sampler.handlers import Sampler
from services.sampler.metrics import SamplerMetrics
from services.sampler.rules import Quota, SamplingRule
from services.sampler.store import SamplerStore
from shared.contracts import task_id_for
from tests.unit.test_sampler import Clock, FailsOnceStore, output, tasks_of

ALL = SamplingRule(name="all", strategy="uniform", rate=1.0)
QUOTA2 = SamplingRule(name="q", strategy="uniform", quota=Quota(by="app", max_per_window=2), window_s=3600)


def sampler_on(store: SamplerStore, rules: list[SamplingRule], clock: Clock) -> tuple[Sampler, CollectorRegistry]:
    registry = CollectorRegistry()
    return Sampler(rules, store, SamplerMetrics(registry), dedupe_window_s=3600.0, clock=clock), registry


def run_batch(sampler: Sampler, outputs: list) -> list:  # type: ignore[type-arg]
    """What the consumer loop does with a batch: every handler, the flush, the sends."""
    for item in outputs:
        assert sampler.collect(item, None) == []  # type: ignore[arg-type]  # nothing leaves before the flush
    sampler.flush()
    return sampler.emitted()


def test_the_same_prompt_twice_in_one_batch_makes_the_second_a_duplicate(tmp_path: Path) -> None:
    sampler, registry = sampler_on(SamplerStore(tmp_path / "s.db"), [ALL], Clock())
    first, second = output("one", "Same question?"), output("two", "same QUESTION")
    assert [t.output_id for t in tasks_of(run_batch(sampler, [first, second]))] == [first.output_id]
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "duplicate"}) == 1
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "all"}) == 1


def test_an_output_twice_in_one_batch_reemits_its_task_and_counts_once(tmp_path: Path) -> None:
    sampler, registry = sampler_on(SamplerStore(tmp_path / "s.db"), [QUOTA2], Clock())
    out = output("twice", app="busy")
    first, again = tasks_of(run_batch(sampler, [out, out]))
    assert first == again and first.task_id == task_id_for(out.output_id)
    assert sampler._store.quota_count("q", (Clock().now // 3600) * 3600, "busy") == 1
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "q"}) == 1


def test_a_failed_batch_write_is_redelivered_one_task_each_and_the_quota_counted_once(tmp_path: Path) -> None:
    clock = Clock()
    store = FailsOnceStore(tmp_path / "s.db")
    sampler, registry = sampler_on(store, [QUOTA2], clock)
    batch = [output("a", app="busy"), output("b", app="busy"), output("c", app="busy")]
    for item in batch:
        sampler.collect(item, None)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.OperationalError):
        sampler.flush()
    assert sampler.emitted() == []  # nothing produced for a batch that was not stored
    window = (clock.now // 3600) * 3600
    assert store.quota_count("q", window, "busy") == 0 and store.decision(batch[0].output_id) is None
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "q"}) is None  # nothing counted
    clock.now += 1.0  # the loop redelivers the batch: decided afresh, no output a duplicate of itself
    tasks = tasks_of(run_batch(sampler, batch))
    assert [t.output_id for t in tasks] == [batch[0].output_id, batch[1].output_id]  # the quota's 2 places
    assert store.quota_count("q", window, "busy") == 2
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "q"}) == 2
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "quota"}) == 1
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "duplicate"}) == 0
    # and again after success: the same tasks, nothing counted twice
    assert tasks_of(run_batch(sampler, batch)) == tasks
    assert store.quota_count("q", window, "busy") == 2
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "q"}) == 2


def test_a_restarted_sampler_reads_decisions_prompts_and_quotas_from_the_store(tmp_path: Path) -> None:
    clock = Clock()
    rule = SamplingRule(name="q1", strategy="uniform", quota=Quota(by="app", max_per_window=1), window_s=3600)
    before, _ = sampler_on(SamplerStore(tmp_path / "s.db"), [rule], clock)
    out = output("kept", "Remember me", app="busy")
    [task] = tasks_of(run_batch(before, [out]))
    before.close()
    clock.now += 1.0
    after, registry = sampler_on(SamplerStore(tmp_path / "s.db"), [rule], clock)
    assert tasks_of(run_batch(after, [out])) == [task]  # the stored decision, re-emitted
    assert run_batch(after, [output("echo", "remember ME!", app="quiet")]) == []  # its prompt hash
    assert run_batch(after, [output("late", "something else", app="busy")]) == []  # its quota place
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "duplicate"}) == 1
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "quota"}) == 1
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "q1"}) is None


def test_feedback_preferences_of_an_output_twice_in_one_batch_are_emitted_twice_and_counted_once(
        tmp_path: Path) -> None:
    from services.sampler.feedback_preferences import FeedbackPreferenceSettings
    from shared.contracts import UserFeedback

    registry = CollectorRegistry()
    sampler = Sampler([SamplingRule(name="none", strategy="uniform", rate=0.0)], SamplerStore(tmp_path / "s.db"),
                      SamplerMetrics(registry), dedupe_window_s=3600.0, clock=Clock(),
                      feedback_preferences=FeedbackPreferenceSettings(enabled_tenants=["*"]))
    out = output("edited").model_copy(update={
        "feedback": [UserFeedback(kind="edit", candidate_id=output("edited").candidates[0].candidate_id,
                                  edited_text="a better answer")]})
    emitted = run_batch(sampler, [out, out])
    assert len(emitted) == 2 and emitted[0].event.preference_id == emitted[1].event.preference_id
    assert registry.get_sample_value("rlhf_sampler_feedback_preferences_total", {"source": "edit"}) == 1


def test_duplicate_counts_only_outputs_a_rule_would_take_and_a_model_rule_never_scores_one(tmp_path: Path) -> None:
    """The dedupe check runs once a rule accepts (or before a rule that costs a model
    call): a repeated prompt no rule takes is no_rule, and an uncertainty rule is not
    asked about a prompt it would only reject as a duplicate."""
    from services.sampler.rules import OutputFilter

    only_chat = SamplingRule(name="chat", strategy="uniform", rate=1.0, filter=OutputFilter(apps=["chat"]))
    uncertain = SamplingRule(name="unc", strategy="uncertainty", max_margin=0.5, fallback_rate=1.0,
                             filter=OutputFilter(apps=["search"]))
    sampler, registry = sampler_on(SamplerStore(tmp_path / "s.db"), [only_chat, uncertain], Clock())
    run_batch(sampler, [output("first", "Same question?", app="chat")])
    run_batch(sampler, [output("mail", "same question", app="mail"),  # no rule matches
                        output("chat-again", "SAME question!", app="chat"),  # would be taken
                        output("search", "same question.", app="search")])  # the model rule's turn
    rejections = {reason: registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": reason})
                  for reason in ("no_rule", "duplicate")}
    assert rejections == {"no_rule": 1, "duplicate": 2}
    # the uncertainty rule never judged it (it would have counted a fallback: no reward model)
    assert registry.get_sample_value("rlhf_sampler_uncertainty_fallbacks_total") in (None, 0)
