"""Strategies that need a model or an endpoint: uncertainty (a tiny reward head saved
like a registry entry), novelty (the real offline MiniLM encoder) and candidate
completion (a local OpenAI-compatible server)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from services.sampler.completion import (
    CandidateCompleter,
    CompletionEndpoint,
    CompletionSettings,
)
from services.sampler.handlers import Sampler
from services.sampler.metrics import SamplerMetrics
from services.sampler.novelty import MiniLMEncoder, NoveltyMemory
from services.sampler.rules import Budget, SamplingRule
from shared.models.reward_scorer import RewardScorer, directory_locator
from tests.helpers.openai_stub import create_stub_app, serve
from tests.unit.test_sampler import (
    Clock,
    FailsOnceStore,
    make_sampler,
    output,
    tasks_of,
)


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reward head over a tiny Llama backbone, saved as the trainer's registry saves one."""
    from services.trainer.tiny_models import build_tiny_policy
    from shared.models.reward import RewardModel

    root = tmp_path_factory.mktemp("registry")
    backbone = RewardModel.frozen_backbone(build_tiny_policy(root / "base"))
    torch.manual_seed(0)
    path = root / "rm-v1"
    backbone.save_head(path, torch.randn(backbone.head.hidden_size))
    return path


def test_uncertainty_falls_back_cleanly_without_a_reward_model(tmp_path: Path) -> None:
    rule = SamplingRule(name="unc", strategy="uncertainty", max_margin=0.5, fallback_rate=0.0)
    scorer = RewardScorer(directory_locator(str(tmp_path / "nothing-published-yet")))
    sampler, registry = make_sampler(tmp_path, [rule], reward_scorer=scorer)
    assert sampler.handle(output("no-rm"), None) == []  # type: ignore[arg-type]
    assert registry.get_sample_value("rlhf_sampler_uncertainty_fallbacks_total") == 1

    everything = SamplingRule(name="unc-all", strategy="uncertainty", fallback_rate=1.0)
    sampler, _ = make_sampler(tmp_path / "b", [everything], reward_scorer=scorer)
    [task] = tasks_of(sampler.handle(output("no-rm-2"), None))  # type: ignore[arg-type]
    assert task.sampling.strategy == "uncertainty"


def test_uncertainty_prefers_small_reward_margins(tmp_path: Path, tiny_reward_model: Path) -> None:
    scorer = RewardScorer(directory_locator(str(tiny_reward_model)))
    outputs = [output(f"u{i}", n=3) for i in range(12)]
    margins = {}
    for o in outputs:
        rewards = scorer.rewards([{"role": "user", "content": o.conversation[0].content}],
                                 [c.text for c in o.candidates])
        assert rewards is not None and len(rewards) == 3
        top = sorted(rewards, reverse=True)
        margins[o.output_id] = top[0] - top[1]
    clock = Clock(now=0.0)
    rule = SamplingRule(name="unc-top3", strategy="uncertainty", budget=Budget(max_tasks=3), window_s=60)
    sampler, _ = make_sampler(tmp_path, [rule], clock, reward_scorer=scorer)
    for o in outputs:
        sampler.handle(o, None)  # type: ignore[arg-type]
    clock.now = 61
    chosen = {o.event.output_id for o in sampler.due()}
    assert chosen == set(sorted(margins, key=margins.get)[:3])  # type: ignore[arg-type]


def test_uncertainty_is_scored_on_the_redacted_text_the_task_carries(tmp_path: Path,
                                                                      tiny_reward_model: Path) -> None:
    """With redaction on, annotators rank (and the reward model trains on) the redacted
    text, so the margin that picks a task must be computed on it too."""
    from services.sampler.redaction import RedactionSettings, Redactor

    scorer = RewardScorer(directory_locator(str(tiny_reward_model)))
    rule = SamplingRule(name="unc-all", strategy="uncertainty")
    sampler, registry = make_sampler(tmp_path, [rule], reward_scorer=scorer,
                                     redactor=Redactor.from_settings(RedactionSettings(enabled=True)))
    raw = output("pii", "Write to jane.doe@example.com about my card", n=2)
    raw = raw.model_copy(update={"candidates": [
        raw.candidates[0].model_copy(update={"text": "Sure, I will mail jane.doe@example.com today."}),
        raw.candidates[1].model_copy(update={"text": "No."})]})
    [task] = tasks_of(sampler.handle(raw, None))  # type: ignore[arg-type]
    assert "[EMAIL]" in task.prompt[0].content and "[EMAIL]" in task.candidates[0].text
    rewards = scorer.rewards([{"role": m.role, "content": m.content} for m in task.prompt],
                             [c.text for c in task.candidates])
    unredacted = scorer.rewards([{"role": "user", "content": raw.conversation[0].content}],
                                [c.text for c in raw.candidates])
    assert rewards is not None and unredacted is not None
    assert task.sampling.score == pytest.approx(abs(rewards[0] - rewards[1]), abs=1e-6)
    assert abs(unredacted[0] - unredacted[1]) != pytest.approx(task.sampling.score, abs=1e-6)
    assert registry.get_sample_value("rlhf_sampler_redactions_total", {"kind": "email"}) == 2  # counted once


def test_novelty_with_minilm_suppresses_paraphrases_not_new_topics(tmp_path: Path) -> None:
    rule = SamplingRule(name="novel", strategy="novelty", min_score=0.25)
    sampler, _ = make_sampler(tmp_path, [rule], novelty=NoveltyMemory(MiniLMEncoder()), dedupe_window_s=0)
    assert sampler.handle(output("n1", "How do I bake sourdough bread at home?"), None)  # type: ignore[arg-type]
    assert sampler.handle(output("n2", "How can I bake sourdough bread at home?"), None) == []  # type: ignore[arg-type]
    [task] = tasks_of(sampler.handle(output("n3", "What is the capital city of Australia?"), None))  # type: ignore[arg-type]
    assert task.sampling.score > 0.25



def test_novelty_remembers_a_prompt_only_once_its_decision_is_stored(tmp_path: Path) -> None:
    """A failed decision write must not leave the prompt in the novelty memory: the
    redelivered output would look like a paraphrase of itself and be rejected."""
    clock = Clock()
    store = FailsOnceStore(tmp_path / "sampler.db")
    rule = SamplingRule(name="novel", strategy="novelty", min_score=0.25)
    sampler = Sampler([rule], store, SamplerMetrics(CollectorRegistry()), dedupe_window_s=0.5, clock=clock,
                      novelty=NoveltyMemory(MiniLMEncoder()))
    out = output("n-flaky", "How do I bake sourdough bread at home?")
    with pytest.raises(sqlite3.OperationalError):
        sampler.handle(out, None)  # type: ignore[arg-type]
    clock.now += 1.0
    [task] = tasks_of(sampler.handle(out, None))  # type: ignore[arg-type]
    assert task.sampling.score == pytest.approx(1.0)  # as novel as on the first try
    assert sampler.handle(output("n-para", "How can I bake sourdough bread at home?"), None) == []  # type: ignore[arg-type]

def test_completion_fills_up_to_n_from_endpoints_and_survives_errors(tmp_path: Path) -> None:
    with serve(create_stub_app()) as good, serve(create_stub_app(mode="error")) as bad:
        settings = CompletionSettings(target_candidates=4, endpoints=[
            CompletionEndpoint(name="policy", base_url=good, model="policy", model_version="v7"),
            CompletionEndpoint(name="baseline", base_url=bad, model="baseline"),
        ])
        outcomes: list[tuple[str, str]] = []
        completer = CandidateCompleter(settings, on_outcome=lambda e, o: outcomes.append((e, o)))
        sampler, _ = make_sampler(tmp_path, [SamplingRule(name="all", strategy="uniform")], completer=completer)
        [task] = tasks_of(sampler.handle(output("short", n=1), None))  # type: ignore[arg-type]
        completer.close()
    # 3 missing: 2 asked of the good endpoint, 1 of the failing one
    assert len(task.candidates) == 3
    assert [c.model.version for c in task.candidates[1:]] == ["v7", "v7"]
    assert sorted(outcomes) == [("baseline", "error"), ("policy", "ok"), ("policy", "ok")]
    assert len({c.candidate_id for c in task.candidates}) == 3


def test_completion_respects_its_deadline_and_drops_when_too_few(tmp_path: Path) -> None:
    with serve(create_stub_app(delay_s=3.0)) as slow:
        settings = CompletionSettings(target_candidates=2, deadline_s=0.5, endpoints=[
            CompletionEndpoint(name="slow", base_url=slow, model="slow", timeout_s=5.0)])
        outcomes: list[tuple[str, str]] = []
        completer = CandidateCompleter(settings, on_outcome=lambda e, o: outcomes.append((e, o)))
        sampler, registry = make_sampler(tmp_path, [SamplingRule(name="all", strategy="uniform")],
                                         completer=completer)
        started = time.monotonic()
        assert sampler.handle(output("alone", n=1), None) == []  # type: ignore[arg-type]
        elapsed = time.monotonic() - started
        completer.close()
    assert elapsed < 2.5, "a slow endpoint blocked the sampler past its deadline"
    assert outcomes == [("slow", "deadline")]
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "too_few_candidates"}) == 1


def test_a_budget_window_completes_its_tasks_together_within_one_deadline(tmp_path: Path) -> None:
    """Closing a window runs inside the consumer loop's tick: four held tasks that each
    wait 1 s for a candidate took 4 s one after another (N deadlines for N tasks, up to
    20 s each); asked together they take about one answer's time."""
    with serve(create_stub_app(delay_s=1.0, parallel=True)) as slow:
        settings = CompletionSettings(target_candidates=2, deadline_s=3.0, max_concurrency=4, endpoints=[
            CompletionEndpoint(name="slow", base_url=slow, model="slow", timeout_s=5.0)])
        completer = CandidateCompleter(settings)
        clock = Clock(now=0.0)
        rule = SamplingRule(name="window", strategy="uniform", budget=Budget(max_tasks=4), window_s=60)
        sampler, registry = make_sampler(tmp_path, [rule], clock, completer=completer)
        for i in range(6):
            assert sampler.handle(output(f"held-{i}", n=1), None) == []  # type: ignore[arg-type]
        clock.now = 61
        started = time.monotonic()
        emitted = sampler.due()
        elapsed = time.monotonic() - started
        sampler.delivered(emitted)
        completer.close()
    assert len(emitted) == 4 and all(len(t.candidates) == 2 for t in tasks_of(emitted))
    assert elapsed < 2.0, f"the window's completions ran one after another ({elapsed:.1f} s)"
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "budget"}) == 2


def test_completion_timeout_per_endpoint(tmp_path: Path) -> None:
    with serve(create_stub_app(delay_s=2.0)) as slow:
        settings = CompletionSettings(target_candidates=3, deadline_s=10, endpoints=[
            CompletionEndpoint(name="slow", base_url=slow, model="slow", timeout_s=0.3)])
        outcomes: list[tuple[str, str]] = []
        completer = CandidateCompleter(settings, on_outcome=lambda e, o: outcomes.append((e, o)))
        sampler, _ = make_sampler(tmp_path, [SamplingRule(name="all", strategy="uniform")], completer=completer)
        [task] = tasks_of(sampler.handle(output("two", n=2), None))  # type: ignore[arg-type]
        completer.close()
    assert len(task.candidates) == 2  # goes out with what it has
    assert outcomes == [("slow", "error")]


def test_registry_locator_follows_the_promoted_pointer(tmp_path: Path, tiny_reward_model: Path) -> None:
    import json
    import shutil

    from shared.models.reward_scorer import registry_locator

    locate = registry_locator(tmp_path)
    assert locate() is None  # nothing promoted yet
    (tmp_path / "reward").mkdir()
    shutil.copytree(tiny_reward_model, tmp_path / "reward" / "rm-v0001")
    (tmp_path / "reward" / "rm-v0001" / "manifest.json").write_text("{}")
    (tmp_path / "reward" / "promoted.json").write_text(json.dumps({"version": "rm-v0001"}))
    assert locate() == tmp_path / "reward" / "rm-v0001"
