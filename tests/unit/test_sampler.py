"""Sampling decisions, on a real SQLite store, with a controllable clock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.sampler.handlers import Sampler
from services.sampler.metrics import SamplerMetrics
from services.sampler.redaction import RedactionSettings, Redactor
from services.sampler.rules import Budget, OutputFilter, Quota, SamplingRule
from services.sampler.scoring import fraction_prefix, stable_fraction, stable_fraction_after
from services.sampler.store import SamplerStore
from shared.contracts import (
    ChatMessage,
    ModelOutput,
    RankingTask,
    UserFeedback,
    output_id_for,
    task_id_for,
)
from tests import factories


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def output(request_id: str, prompt: str | None = None, n: int = 2, app: str | None = None,
           feedback: str | None = None, tags: list[str] | None = None) -> ModelOutput:
    base = factories.model_output(request_id, n=n)
    oid = output_id_for(request_id)
    return base.model_copy(update={
        "conversation": [ChatMessage(role="user", content=prompt or f"question {request_id}")],
        "app": app,
        "tags": tags or [],
        "feedback": [UserFeedback(kind=feedback)] if feedback else [],  # type: ignore[arg-type]
        "output_id": oid, "event_id": oid,
    })


def make_sampler(tmp_path: Path, rules: list[SamplingRule], clock: Clock | None = None,
                 **kwargs: object) -> tuple[Sampler, CollectorRegistry]:
    registry = CollectorRegistry()
    sampler = Sampler(rules, SamplerStore(tmp_path / "sampler.db"), SamplerMetrics(registry),
                      dedupe_window_s=kwargs.pop("dedupe_window_s", 3600.0),  # type: ignore[arg-type]
                      clock=clock or Clock(), **kwargs)  # type: ignore[arg-type]
    return sampler, registry


def tasks_of(outgoing: list) -> list[RankingTask]:  # type: ignore[type-arg]
    return [o.event for o in outgoing]


def test_uniform_rate_is_close_to_the_rate_and_deterministic(tmp_path: Path) -> None:
    rule = SamplingRule(name="u10", strategy="uniform", rate=0.1)
    first, _ = make_sampler(tmp_path / "a", [rule])
    second, _ = make_sampler(tmp_path / "b", [rule])
    outputs = [output(f"r{i}") for i in range(1000)]
    picked_a = [o.output_id for o in outputs if first.handle(o, None)]  # type: ignore[arg-type]
    picked_b = [o.output_id for o in outputs if second.handle(o, None)]  # type: ignore[arg-type]
    assert 70 <= len(picked_a) <= 130
    assert picked_a == picked_b


def test_the_uniform_coin_is_the_rules_stable_fraction_of_the_output_id(tmp_path: Path) -> None:
    """The coin built from a per-rule prefix flips as `stable_fraction(rule, output_id)`
    always did: a sampler upgraded mid-stream picks what the old one would have."""
    sampler, _ = make_sampler(tmp_path, [SamplingRule(name="u10", strategy="uniform", rate=0.1)])
    outputs = [output(f"coin{i}") for i in range(500)]
    picked = {o.output_id for o in outputs if sampler.handle(o, None)}  # type: ignore[arg-type]
    assert picked == {o.output_id for o in outputs if stable_fraction("u10", o.output_id) < 0.1}
    for parts, last in [(("u10",), "x"), (("a", "b"), "c"), ((), "only"), (("ünïcode",), "\x1f")]:
        assert stable_fraction_after(fraction_prefix(*parts), last) == stable_fraction(*parts, last)


def test_a_rule_filter_is_checked_unless_it_has_no_condition(tmp_path: Path) -> None:
    assert OutputFilter().matches_everything()
    for conditioned in [OutputFilter(apps=["a"]), OutputFilter(tenants=["t"]), OutputFilter(tags_any=["x"]),
                        OutputFilter(sources=["s"]), OutputFilter(feedback_any=["edit"]),
                        OutputFilter(min_candidates=2)]:
        assert not conditioned.matches_everything()
    rules = [SamplingRule(name="chat-only", strategy="uniform", rate=1.0, filter=OutputFilter(apps=["chat"])),
             SamplingRule(name="pairs", strategy="uniform", rate=1.0, filter=OutputFilter(min_candidates=3))]
    sampler, _ = make_sampler(tmp_path, rules)
    chat, other, three = output("f1", app="chat"), output("f2", app="search"), output("f3", app="search", n=3)
    assert [t.sampling.rule for t in tasks_of(sampler.handle(chat, None))] == ["chat-only"]  # type: ignore[arg-type]
    assert sampler.handle(other, None) == []  # type: ignore[arg-type]
    assert [t.sampling.rule for t in tasks_of(sampler.handle(three, None))] == ["pairs"]  # type: ignore[arg-type]


def test_feedback_rule_takes_negative_feedback_and_records_rule_and_score(tmp_path: Path) -> None:
    rules = [SamplingRule(name="neg", strategy="feedback", filter=OutputFilter(feedback_any=["thumbs_down", "regenerate"]))]
    sampler, registry = make_sampler(tmp_path, rules)
    assert sampler.handle(output("happy", feedback="thumbs_up"), None) == []  # type: ignore[arg-type]
    [task] = tasks_of(sampler.handle(output("sad", feedback="thumbs_down"), None))  # type: ignore[arg-type]
    assert task.sampling.rule == "neg" and task.sampling.strategy == "feedback" and task.sampling.score == 1.0
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "neg"}) == 1
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "no_rule"}) == 1


def test_redelivery_reemits_the_same_task_and_counts_once(tmp_path: Path) -> None:
    sampler, registry = make_sampler(tmp_path, [SamplingRule(name="all", strategy="uniform", rate=1.0)])
    out = output("again")
    [first] = tasks_of(sampler.handle(out, None))  # type: ignore[arg-type]
    [second] = tasks_of(sampler.handle(out, None))  # type: ignore[arg-type]
    assert first == second and first.task_id == second.task_id
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "all"}) == 1
    # and a restart (same store on disk) remembers the decision too
    again, _ = make_sampler(tmp_path, [SamplingRule(name="all", strategy="uniform", rate=1.0)])
    assert tasks_of(again.handle(out, None)) == [first]  # type: ignore[arg-type]


def test_near_duplicate_prompts_are_suppressed_within_the_window(tmp_path: Path) -> None:
    clock = Clock()
    sampler, registry = make_sampler(tmp_path, [SamplingRule(name="all", strategy="uniform")], clock,
                                     dedupe_window_s=100.0)
    assert sampler.handle(output("a", "Hello, World!"), None)  # type: ignore[arg-type]
    assert sampler.handle(output("b", "  hello   world "), None) == []  # type: ignore[arg-type]
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "duplicate"}) == 1
    clock.now += 101
    assert sampler.handle(output("c", "HELLO world"), None)  # type: ignore[arg-type]


def test_budget_window_holds_then_emits_top_k_once(tmp_path: Path) -> None:
    clock = Clock(now=0.0)
    rule = SamplingRule(name="budget3", strategy="uniform", budget=Budget(max_tasks=3), window_s=60)
    sampler, registry = make_sampler(tmp_path, [rule], clock)
    for i in range(20):
        assert sampler.handle(output(f"w{i}"), None) == []  # type: ignore[arg-type]
    assert sampler.due() == []  # window still open
    clock.now = 61
    emitted = sampler.due()
    assert len(emitted) == 3
    sampler.delivered(emitted)
    assert sampler.due() == []
    assert registry.get_sample_value("rlhf_sampler_decisions_total", {"rule": "budget3", "decision": "held"}) == 20
    assert registry.get_sample_value("rlhf_sampler_decisions_total", {"rule": "budget3", "decision": "selected"}) == 3
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "budget"}) == 17


def test_an_undelivered_window_is_offered_again(tmp_path: Path) -> None:
    clock = Clock(now=0.0)
    rule = SamplingRule(name="b", strategy="uniform", budget=Budget(max_tasks=2), window_s=10)
    sampler, _ = make_sampler(tmp_path, [rule], clock)
    for i in range(5):
        sampler.handle(output(f"x{i}"), None)  # type: ignore[arg-type]
    clock.now = 11
    first = sampler.due()  # broker down: delivered() never called
    second = sampler.due()
    assert [o.event.task_id for o in first] == [o.event.task_id for o in second]


def test_budget_reservoir_does_not_favour_early_arrivals(tmp_path: Path) -> None:
    clock = Clock(now=0.0)
    rule = SamplingRule(name="res", strategy="uniform", budget=Budget(max_tasks=1), window_s=10)
    sampler, _ = make_sampler(tmp_path, [rule], clock)
    positions = []
    for window in range(300):
        clock.now = window * 10.0
        arrivals = [output(f"win{window}-pos{p}") for p in range(10)]
        for item in arrivals:
            sampler.handle(item, None)  # type: ignore[arg-type]
        clock.now = window * 10.0 + 10.0
        [chosen] = sampler.due()
        sampler.delivered([chosen])
        positions.append([a.output_id for a in arrivals].index(chosen.event.output_id))
    early = sum(1 for p in positions if p < 5)
    assert 0.4 < early / len(positions) < 0.6, positions


def test_quota_caps_one_app_but_not_another(tmp_path: Path) -> None:
    rule = SamplingRule(name="q", strategy="uniform", quota=Quota(by="app", max_per_window=2))
    sampler, registry = make_sampler(tmp_path, [rule])
    taken = [bool(sampler.handle(output(f"a{i}", app="busy"), None)) for i in range(4)]  # type: ignore[arg-type]
    assert taken == [True, True, False, False]
    assert sampler.handle(output("b0", app="quiet"), None)  # type: ignore[arg-type]
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "quota"}) == 2


def test_an_output_with_one_candidate_and_no_completion_is_dropped(tmp_path: Path) -> None:
    sampler, registry = make_sampler(tmp_path, [SamplingRule(name="all", strategy="uniform")])
    assert sampler.handle(output("lonely", n=1), None) == []  # type: ignore[arg-type]
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "too_few_candidates"}) == 1


def test_more_than_five_candidates_are_cut_to_five(tmp_path: Path) -> None:
    sampler, _ = make_sampler(tmp_path, [SamplingRule(name="all", strategy="uniform")])
    [task] = tasks_of(sampler.handle(output("many", n=8), None))  # type: ignore[arg-type]
    assert len(task.candidates) == 5


def test_redaction_is_consistent_across_prompt_and_answers(tmp_path: Path) -> None:
    redactor = Redactor.from_settings(RedactionSettings(enabled=True, extra_patterns={"ticket": r"TCK-\d+"}))
    sampler, registry = make_sampler(tmp_path, [SamplingRule(name="all", strategy="uniform")], redactor=redactor)
    base = output("pii", "mail me at jane.doe@example.com or call +44 20 7946 0958 about TCK-123")
    candidates = [
        base.candidates[0].model_copy(update={"text": "I wrote to jane.doe@example.com"}),
        base.candidates[1].model_copy(update={"text": "card 4111 1111 1111 1111 charged"}),
    ]
    [task] = tasks_of(sampler.handle(base.model_copy(update={"candidates": candidates}), None))  # type: ignore[arg-type]
    assert task.prompt[0].content == "mail me at [EMAIL] or call [PHONE] about [TICKET]"
    assert task.candidates[0].text == "I wrote to [EMAIL]"
    assert task.candidates[1].text == "card [CARD] charged"
    assert registry.get_sample_value("rlhf_sampler_redactions_total", {"kind": "email"}) == 2
    assert registry.get_sample_value("rlhf_sampler_redactions_total", {"kind": "card"}) == 1


def test_unknown_redaction_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown redaction kinds"):
        Redactor.from_settings(RedactionSettings(enabled=True, kinds=["email", "ssn"]))


def test_rules_need_unique_names(tmp_path: Path) -> None:
    rule = SamplingRule(name="same", strategy="uniform")
    with pytest.raises(ValueError, match="unique"):
        make_sampler(tmp_path, [rule, rule])


class FailsOnceStore(SamplerStore):
    """The real SQLite store, except that its first write of a decision fails the way
    "database is locked" (or a kill mid-decision) does. A temporary SQLite trigger on
    the store's own connection calls a function that raises once, so the failing
    write is a real statement inside the store's real transaction: nothing is mocked."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failures = 0

        def fail_once() -> int:
            if self.failures == 0:
                self.failures += 1
                raise sqlite3.OperationalError("database is locked")
            return 0

        self._db.create_function("fail_once", 0, fail_once)
        self._db.execute("CREATE TEMP TRIGGER decisions_fail_once BEFORE INSERT ON decisions "
                         "BEGIN SELECT fail_once(); END")


def test_a_failed_decision_write_is_decided_afresh_on_redelivery(tmp_path: Path) -> None:
    store = FailsOnceStore(tmp_path / "sampler.db")
    registry = CollectorRegistry()
    sampler = Sampler([SamplingRule(name="all", strategy="uniform", rate=1.0)], store, SamplerMetrics(registry),
                      dedupe_window_s=3600.0, clock=Clock())
    out = output("flaky")
    with pytest.raises(sqlite3.OperationalError):
        sampler.handle(out, None)  # type: ignore[arg-type]
    assert store.failures == 1
    # Kafka redelivers the uncommitted offset: the output is not a duplicate of itself
    [task] = tasks_of(sampler.handle(out, None))  # type: ignore[arg-type]
    assert task.task_id == task_id_for(out.output_id)
    assert store.decision(out.output_id).status == "selected"  # type: ignore[union-attr]
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "all"}) == 1
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "duplicate"}) == 0  # never counted


def test_a_failed_decision_write_leaves_no_quota_count_behind(tmp_path: Path) -> None:
    clock = Clock()
    store = FailsOnceStore(tmp_path / "sampler.db")
    rule = SamplingRule(name="q", strategy="uniform", quota=Quota(by="app", max_per_window=2), window_s=3600)
    sampler = Sampler([rule], store, SamplerMetrics(CollectorRegistry()), dedupe_window_s=0.5, clock=clock)
    out = output("flaky-quota", app="busy")
    with pytest.raises(sqlite3.OperationalError):
        sampler.handle(out, None)  # type: ignore[arg-type]
    clock.now += 1.0  # the redelivery comes later
    assert len(tasks_of(sampler.handle(out, None))) == 1  # type: ignore[arg-type]
    window = (clock.now // 3600) * 3600
    assert store.quota_count("q", window, "busy") == 1
    assert sampler.handle(output("second", app="busy"), None)  # type: ignore[arg-type]  # the quota's 2nd place


def test_a_redelivery_after_success_reemits_the_same_task_and_counts_the_quota_once(tmp_path: Path) -> None:
    clock = Clock()
    rule = SamplingRule(name="q", strategy="uniform", quota=Quota(by="app", max_per_window=2), window_s=3600)
    sampler, registry = make_sampler(tmp_path, [rule], clock)
    out = output("twice", app="busy")
    [first] = tasks_of(sampler.handle(out, None))  # type: ignore[arg-type]
    clock.now += 1.0
    [again] = tasks_of(sampler.handle(out, None))  # type: ignore[arg-type]
    assert again.task_id == first.task_id and again == first
    assert sampler._store.quota_count("q", (clock.now // 3600) * 3600, "busy") == 1
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "q"}) == 1
    assert sampler.handle(output("other", app="busy"), None)  # type: ignore[arg-type]  # one place was left


def test_an_undelivered_window_counts_its_quota_once(tmp_path: Path) -> None:
    clock = Clock(now=0.0)
    rule = SamplingRule(name="bq", strategy="uniform", budget=Budget(max_tasks=2), window_s=10,
                        quota=Quota(by="app", max_per_window=5))
    sampler, _ = make_sampler(tmp_path, [rule], clock)
    for i in range(3):
        sampler.handle(output(f"bq{i}", app="busy"), None)  # type: ignore[arg-type]
    clock.now = 11
    first = sampler.due()  # broker down: delivered() never called
    second = sampler.due()
    assert [o.event.task_id for o in first] == [o.event.task_id for o in second]
    sampler.delivered(second)
    assert sampler._store.quota_count("bq", 0.0, "busy") == 2
