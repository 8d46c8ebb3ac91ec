"""The sampler's uncertainty margin is the trainer's own score difference.

A reward model is trained by the trainer's real job code (TrainingRun on a real store
and registry, tiny models, `max_length` 64 as in TINY_HYPER) and promoted. The
sampler, wired as its service wires it (the registry under DATA_DIR, the promoted
pointer), scores a captured output with two candidates; the trainer scores the same
two answers for the prompt the preference would carry, through the code it computes
accuracy and live agreement with. The two must agree, also on a conversation longer
than the token cap (the text each side keeps is decided by the rendering: template,
truncation side, cap) and on one whose last turn is the assistant's (the prompt each
side renders): a scorer that renders differently from training gives another margin.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.sampler.rules import SamplingRule
from services.sampler.service import build_sampler
from services.sampler.settings import SamplerSettings
from services.trainer.pipeline import TrainingRun
from services.trainer.registry import ModelRegistry
from services.trainer.reporting import RunReporter
from services.trainer.reward_model import load_version, preference_features
from services.trainer.store import PreferenceStore
from shared.contracts import (
    Candidate,
    ChatMessage,
    ModelOutput,
    Preference,
    RankingTask,
    output_id_for,
    preference_id_for,
)
from tests.trainer_support import MODEL, TINY_HYPER, make_preference, trainer_settings

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:var\\(\\):UserWarning")]

# Far past TINY_HYPER's 64-token cap with the tiny byte-level tokenizer: the trainer
# keeps only the end of this conversation.
LONG_QUESTION = ("My sourdough starter smells of acetone after feeding it twice a day for a fortnight, "
                 "the kitchen sits near nineteen degrees Celsius, and the loaves come out dense and flat. "
                 "Which of these matters most, and what should I change first?")


def train_and_promote(tmp_path: Path, models: tuple[Path, Path]) -> tuple[TrainingRun, ModelRegistry]:
    """One run of the trainer's job pipeline in this process (as test_trainer_loop
    does); LENIENT_GATES promote the reward model it trains."""
    settings = trainer_settings(tmp_path, None, models)
    store = PreferenceStore(tmp_path / "trainer" / "store.sqlite")
    registry = ModelRegistry(tmp_path / "registry")
    reporter = RunReporter(store, lambda _topic, _event: None)
    for i in range(24):
        store.add_preference(make_preference(i))
    run_id = f"run-{time.monotonic_ns()}"
    store.create_run(run_id, "test", store.max_seq(), store.preference_count())
    store.try_lock(run_id, 60)
    run = TrainingRun(run_id=run_id, watermark=store.max_seq(), options=settings.trainer, store=store,
                      registry=registry, reporter=reporter, work_dir=tmp_path / "trainer")
    try:
        run.execute()
    finally:
        store.release_lock(run_id)
        store.close()
    assert registry.pointer("reward", "promoted") == "rm-v0001"
    return run, registry


def captured(request_id: str, turns: list[tuple[str, str]], answers: tuple[str, str]) -> ModelOutput:
    oid = output_id_for(request_id)
    return ModelOutput(
        event_id=oid, output_id=oid,
        conversation=[ChatMessage(role="system", content="You are a patient baking assistant."),
                      *(ChatMessage(role=role, content=text) for role, text in turns)],  # type: ignore[arg-type]
        candidates=[Candidate(candidate_id=f"c{i}", text=text, model=MODEL) for i, text in enumerate(answers)])


def as_preference(task: RankingTask) -> Preference:
    """The preference an annotator's ranking of `task` becomes (first candidate chosen)."""
    chosen, rejected = task.candidates[0], task.candidates[1]
    pid = preference_id_for(task.task_id, chosen.candidate_id, rejected.candidate_id)
    return Preference(event_id=pid, preference_id=pid, ranking_id=f"rank-{task.task_id}", task_id=task.task_id,
                      output_id=task.output_id, prompt=list(task.prompt), chosen=chosen, rejected=rejected,
                      margin=1.0, guideline_version="g1")


def test_the_sampler_margin_equals_the_trainer_score_difference_for_the_same_pair(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    run, registry = train_and_promote(tmp_path, tiny_models)
    rule = SamplingRule(name="unc", strategy="uncertainty", rate=1.0)
    sampler = build_sampler(SamplerSettings(data_dir=str(tmp_path), sampler={"rules": [rule]}), CollectorRegistry())
    trainer_store = PreferenceStore(tmp_path / "pairs.sqlite")
    promoted = load_version(registry.path("reward", "rm-v0001"), run._backbone(), run.device,
                            TINY_HYPER["max_length"])  # the trainer's own reading of its promoted version
    try:
        cases = {
            "short": captured("short", [("user", "how do I reset my password?")],
                              ("open settings and choose reset password.", "I am sorry, I cannot help")),
            "long": captured("long", [("user", LONG_QUESTION)],
                             ("here is a helpful answer with an example", "I am sorry, I cannot help")),
            # the task (so the preference, so training) carries the whole conversation
            "ends-with-assistant": captured("assistant-last", [("user", "where is the settings page?"),
                                                               ("assistant", "open the menu.")],
                                            ("here is a helpful answer 3", "I am sorry, I cannot help")),
        }
        margins: dict[str, tuple[float, float]] = {}  # case -> (sampler margin, trainer difference)
        for name, output in cases.items():
            [out] = sampler.handle(output, None)  # type: ignore[arg-type]
            task = out.event
            assert isinstance(task, RankingTask) and task.sampling.strategy == "uncertainty"
            trainer_store.add_preference(as_preference(task))
            row = max(trainer_store.preferences_upto(trainer_store.max_seq()), key=lambda r: r.seq)
            chosen, rejected = preference_features(promoted, [row], None)
            difference = promoted.scores_of(chosen)[0] - promoted.scores_of(rejected)[0]
            assert abs(difference) > 1e-4, f"{name}: the trained model cannot tell these answers apart"
            margins[name] = (task.sampling.score, abs(difference))
        disagree = {name: pair for name, pair in margins.items() if abs(pair[0] - pair[1]) > 1e-5}
        assert not disagree, f"sampler margin vs trainer score difference: {disagree}"
    finally:
        trainer_store.close()
        sampler.close()
