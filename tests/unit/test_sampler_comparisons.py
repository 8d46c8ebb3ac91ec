"""Blind A/B comparison tasks: decided before the rules, on a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.sampler.comparisons import ComparisonSettings
from services.sampler.redaction import RedactionSettings, Redactor
from services.sampler.rules import SamplingRule
from shared.contracts import ChatMessage, ModelOutput, task_id_for
from tests import factories
from tests.unit.test_sampler import Clock, make_sampler, output, tasks_of

NO_RULE = [SamplingRule(name="none", strategy="uniform", rate=0.0)]
ALL = [SamplingRule(name="all", strategy="uniform", rate=1.0)]


def ab(request_id: str, prompt: str = "hi") -> ModelOutput:
    return factories.ab_output(request_id).model_copy(
        update={"conversation": [ChatMessage(role="user", content=prompt)]})


def test_an_ab_output_becomes_one_comparison_task_before_any_rule(tmp_path: Path) -> None:
    sampler, registry = make_sampler(tmp_path, NO_RULE)
    out = ab("ab-1")
    [task] = tasks_of(sampler.handle(out, None))  # type: ignore[arg-type]
    assert task.ab == out.ab and task.task_id == task_id_for(out.output_id)
    assert sorted(c.candidate_id for c in task.candidates) == sorted(c.candidate_id for c in out.candidates)
    assert {c.text for c in task.candidates} == {c.text for c in out.candidates}
    assert task.sampling.rule == "canary-ab" and task.sampling.strategy == "comparison"
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "canary-ab"}) == 1
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "no_rule"}) == 0


def test_the_order_is_random_across_outputs_and_stable_across_redeliveries(tmp_path: Path) -> None:
    sampler, registry = make_sampler(tmp_path, NO_RULE, dedupe_window_s=0.0)
    outputs = [ab(f"order-{i}") for i in range(200)]
    first = {o.output_id: [c.candidate_id for c in tasks_of(sampler.handle(o, None))[0].candidates]  # type: ignore[arg-type]
             for o in outputs}
    canary_first = sum(1 for o in outputs if first[o.output_id][0] == o.ab.canary_candidate_id)  # type: ignore[union-attr]
    assert 70 <= canary_first <= 130  # neither side has a fixed place
    for o in outputs[:20]:  # redelivered: the same task, same order, counted once
        [again] = tasks_of(sampler.handle(o, None))  # type: ignore[arg-type]
        assert [c.candidate_id for c in again.candidates] == first[o.output_id]
    restarted, _ = make_sampler(tmp_path, NO_RULE)
    for o in outputs[:5]:
        assert [c.candidate_id for c in tasks_of(restarted.handle(o, None))[0].candidates] == first[o.output_id]  # type: ignore[arg-type]
    # the order depends on the output id only, not on the store (a second sampler agrees)
    other, _ = make_sampler(tmp_path / "other", NO_RULE)
    assert [c.candidate_id for c in tasks_of(other.handle(outputs[7], None))[0].candidates] == \
        first[outputs[7].output_id]  # type: ignore[arg-type]
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "canary-ab"}) == 200


def test_a_comparison_bypasses_the_dedupe_and_does_not_feed_it(tmp_path: Path) -> None:
    sampler, registry = make_sampler(tmp_path, ALL, dedupe_window_s=3600.0)
    assert sampler.handle(output("plain-1", "What is RLHF?"), None)  # type: ignore[arg-type]
    # a repeated prompt: an ordinary output is a duplicate, a comparison is still evidence
    assert sampler.handle(output("plain-2", "what is rlhf"), None) == []  # type: ignore[arg-type]
    assert len(tasks_of(sampler.handle(ab("ab-dup-1", "What is RLHF?"), None))) == 1  # type: ignore[arg-type]
    assert len(tasks_of(sampler.handle(ab("ab-dup-2", "What is RLHF?"), None))) == 1  # type: ignore[arg-type]
    # and a comparison's prompt does not make a later ordinary output a duplicate
    assert len(tasks_of(sampler.handle(ab("ab-new", "A fresh prompt"), None))) == 1  # type: ignore[arg-type]
    [task] = tasks_of(sampler.handle(output("plain-3", "a fresh prompt!"), None))  # type: ignore[arg-type]
    assert task.ab is None and task.sampling.rule == "all"
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "duplicate"}) == 1


def test_over_the_quota_an_ab_output_falls_through_to_the_rules(tmp_path: Path) -> None:
    clock = Clock(now=0.0)
    settings = ComparisonSettings(max_per_window=2, window_s=100.0)
    sampler, registry = make_sampler(tmp_path, ALL, clock, comparisons=settings, dedupe_window_s=0.0)
    first = [tasks_of(sampler.handle(ab(f"q-{i}", f"prompt {i}"), None))[0] for i in range(4)]  # type: ignore[arg-type]
    assert [t.sampling.rule for t in first] == ["canary-ab", "canary-ab", "all", "all"]
    assert [t.ab is not None for t in first] == [True, True, False, False]
    # a redelivery of a comparison takes no second place
    sampler.handle(ab("q-0", "prompt 0"), None)  # type: ignore[arg-type]
    assert sampler._store.quota_count("canary-ab", 0.0, "-") == 2
    clock.now = 100.0  # a new window, room again
    assert tasks_of(sampler.handle(ab("q-4", "prompt 4"), None))[0].sampling.rule == "canary-ab"  # type: ignore[arg-type]
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "canary-ab"}) == 3


def test_over_the_quota_an_ab_output_meets_the_dedupe_and_rules_like_any_other(tmp_path: Path) -> None:
    sampler, registry = make_sampler(tmp_path, NO_RULE, comparisons=ComparisonSettings(max_per_window=1))
    assert sampler.handle(ab("x-0"), None)  # type: ignore[arg-type]
    assert sampler.handle(ab("x-1"), None) == []  # type: ignore[arg-type]
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "no_rule"}) == 1


def test_comparisons_can_be_turned_off(tmp_path: Path) -> None:
    sampler, _ = make_sampler(tmp_path, ALL, comparisons=ComparisonSettings(enabled=False))
    [task] = tasks_of(sampler.handle(ab("off"), None))  # type: ignore[arg-type]
    assert task.ab is None and task.sampling.rule == "all"


def test_a_comparison_task_is_redacted(tmp_path: Path) -> None:
    redactor = Redactor.from_settings(RedactionSettings(enabled=True))
    sampler, registry = make_sampler(tmp_path, NO_RULE, redactor=redactor)
    base = ab("pii", "mail jane.doe@example.com")
    candidates = [c.model_copy(update={"text": f"{c.text}, jane.doe@example.com"}) for c in base.candidates]
    [task] = tasks_of(sampler.handle(base.model_copy(update={"candidates": candidates}), None))  # type: ignore[arg-type]
    assert task.prompt[0].content == "mail [EMAIL]"
    assert all(c.text.endswith(", [EMAIL]") for c in task.candidates)
    assert task.ab == base.ab
    assert registry.get_sample_value("rlhf_sampler_redactions_total", {"kind": "email"}) == 3


def test_the_comparison_rule_name_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        make_sampler(tmp_path, [SamplingRule(name="canary-ab", strategy="uniform")])
