"""The loop's learning mechanics with tiny models, in the job's own code path
(TrainingRun) on a real store, registry and feature cache: policies continue from the
promoted adapter, an adapter that changes nothing is gated, the reward model's live
agreement is measured on rankings it never trained on, a rollback is where the next
run continues from, and every optimiser trains only the adapter."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from kafka.errors import KafkaTimeoutError

from services.trainer.announcer import PromotionAnnouncer
from services.trainer.evaluate import evaluate_policy
from services.trainer.features import FeatureCache
from services.trainer.gates import policy_gate
from services.trainer.handlers import make_store_handler
from services.trainer.judge import FoldEnsembleJudge
from services.trainer.pipeline import TrainingRun
from services.trainer.policy.base import PolicyData, PolicyTrainConfig, get_optimizer
from services.trainer.policy.init import load_policy
from services.trainer.registry import ModelRegistry
from services.trainer.reporting import RunReporter
from services.trainer.reward_model import accuracy, pair_rows
from services.trainer.settings import GateThresholds, Hyperparameters, TrainerSettings
from services.trainer.store import PreferenceStore
from shared.contracts import (Candidate, ChatMessage, Event, ModelUpdate, Preference, model_update_id_for,
                              preference_id_for)
from shared.models.reward import RewardModel
from tests.trainer_support import MODEL, TINY_HYPER, make_preference, trainer_settings

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:var\\(\\):UserWarning")]


class Loop:
    """The trainer's job pipeline, one run after another, in this process."""

    def __init__(self, tmp_path: Path, models: tuple[Path, Path], **options: Any) -> None:
        self.settings: TrainerSettings = trainer_settings(tmp_path, None, models, **options)
        self.store = PreferenceStore(tmp_path / "trainer" / "store.sqlite")
        self.registry = ModelRegistry(tmp_path / "registry")
        self.events: list[Event] = []
        self.reporter = RunReporter(self.store, lambda _topic, event: self.events.append(event))
        self.work_dir = tmp_path / "trainer"

    def add(self, prefs: list[Preference]) -> None:
        for pref in prefs:
            self.store.add_preference(pref)

    def run(self) -> tuple[str, TrainingRun]:
        run_id = f"run-{time.monotonic_ns()}"
        self.store.create_run(run_id, "test", self.store.max_seq(), self.store.preference_count())
        self.store.try_lock(run_id, 60)
        run = TrainingRun(run_id=run_id, watermark=self.store.max_seq(), options=self.settings.trainer,
                          store=self.store, registry=self.registry, reporter=self.reporter, work_dir=self.work_dir)
        try:
            state = run.execute()
        finally:
            self.store.release_lock(run_id)
        self.store.set_run_state(run_id, state)
        return state, run


def flipped(i: int) -> Preference:
    """The opposite of make_preference's labels, on a prompt of its own."""
    pid = preference_id_for(f"flipped-{i}", "bad", "good")
    return Preference(
        event_id=pid, preference_id=pid, ranking_id=f"frank-{i}", task_id=f"flipped-{i}", output_id=f"fout-{i}",
        prompt=[ChatMessage(role="user", content=f"another question {i}?")],
        chosen=Candidate(candidate_id="bad", text="I am sorry, I cannot help", model=MODEL),
        rejected=Candidate(candidate_id="good", text=f"here is a helpful answer {i}", model=MODEL),
        margin=1.0, guideline_version="g1")


def adapter_weights(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def test_a_candidate_starts_from_the_promoted_adapter_and_carries_its_lineage(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    from safetensors.torch import load_file

    loop = Loop(tmp_path, tiny_models)
    loop.add([make_preference(i) for i in range(24)])
    assert loop.run()[0] == "succeeded"
    v1 = loop.registry.path("policy", "policy-v0001")
    saved = load_file(str(v1 / "adapter_model.safetensors"))
    assert any(float(w.abs().sum()) > 0 for name, w in saved.items() if "lora_B" in name)  # v1 learned something

    start = load_policy(PolicyTrainConfig(base_model=str(tiny_models[0]), reward_model="", output_dir=tmp_path / "x",
                                          hyper=Hyperparameters(**TINY_HYPER), init_adapter=str(v1)))
    loaded = adapter_weights(start.model)
    assert start.init == "continued" and len(loaded) == len(saved)
    for name, weight in saved.items():  # the very weights of the promoted version, trainable
        key = next(k for k in loaded if k.replace(".default", "").endswith(name.removeprefix("base_model.model.")))
        assert torch.equal(loaded[key], weight)
    assert all(p.requires_grad for n, p in start.model.named_parameters() if "lora_" in n)

    loop.add([make_preference(i) for i in range(24, 36)])
    assert loop.run()[0] == "succeeded"
    manifest = loop.registry.manifest("policy", "policy-v0002")
    assert manifest["init"]["from"] == "policy-v0001" and manifest["init"]["kind"] == "continued"
    assert manifest["parent_version"] == "policy-v0001" and manifest["lineage"] == ["policy-v0001"]
    v2 = load_file(str(loop.registry.path("policy", "policy-v0002") / "adapter_model.safetensors"))
    assert any(not torch.equal(v2[k], saved[k]) for k in saved)  # and kept training
    loop.add([make_preference(i) for i in range(36, 48)])
    loop.run()
    assert loop.registry.manifest("policy", "policy-v0003")["lineage"] == ["policy-v0001", "policy-v0002"]


def test_a_lora_shape_change_starts_a_fresh_adapter_and_says_why(tmp_path: Path,
                                                                 tiny_models: tuple[Path, Path]) -> None:
    loop = Loop(tmp_path, tiny_models)
    loop.add([make_preference(i) for i in range(24)])
    loop.run()
    loop.settings.trainer.hyper.lora_r = 4
    loop.settings.trainer.hyper.lora_alpha = 8
    loop.add([make_preference(i) for i in range(24, 36)])
    loop.run()
    init = loop.registry.manifest("policy", "policy-v0002")["init"]
    assert init["kind"] == "fresh" and "r=8" in init["note"] and init["from"] is None


def test_an_adapter_that_changes_nothing_is_gated(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    """A real LoRA adapter, freshly initialised (B = 0), against the base: the same
    seeded answers, all ties, no evidence."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from services.trainer.policy.base import lora_config

    unchanged = tmp_path / "unchanged"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models[0]),
                   lora_config(Hyperparameters(**TINY_HYPER))).save_pretrained(unchanged)
    prefs = [make_preference(i) for i in range(24)]
    store = PreferenceStore(tmp_path / "s.sqlite")
    for pref in prefs:
        store.add_preference(pref)
    rows = store.preferences_upto(store.max_seq())
    backbone = RewardModel.frozen_backbone(tiny_models[0], max_length=64)
    judge = FoldEnsembleJudge.fit(backbone, rows, folds=3, l2=1.0, cache=FeatureCache(tmp_path / "f.sqlite"))
    prompts = [r.prompt for r in rows]
    evaluation = evaluate_policy(base_model=str(tiny_models[0]), candidate_adapter=unchanged, incumbent=None,
                                 incumbent_adapter=None, reference="base", judge=judge, prompts=prompts,
                                 max_new_tokens=8, temperature=1.0)
    result = evaluation.result
    assert (result.wins, result.losses, result.ties) == (0, 0, len(prompts))
    assert result.p_value == 1.0 and result.kl == 0.0
    gate = policy_gate(result, GateThresholds(min_eval_prompts=len(prompts)))
    assert not gate.passed and any("no evidence" in reason for reason in gate.reasons)


def test_live_agreement_is_measured_only_on_rankings_the_promoted_model_never_saw(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    loop = Loop(tmp_path, tiny_models)
    loop.add([make_preference(i) for i in range(24)])
    loop.run()
    assert loop.registry.pointer("reward", "promoted") == "rm-v0001"
    assert loop.registry.trained_upto("reward", "rm-v0001") == 24
    fresh = [flipped(i) for i in range(12)]  # annotators now prefer the opposite
    loop.add(fresh)
    _state, run = loop.run()
    assert run.metrics["rm_live_pairs"] == 12
    rows = [r for r in loop.store.preferences_upto(loop.store.max_seq()) if r.seq > 24]
    promoted = RewardModel.load(loop.registry.path("reward", "rm-v0001"), max_length=64)
    assert run.metrics["rm_live_agreement"] == accuracy(promoted, rows)  # exactly those 12, scored as trained
    trained_on = loop.store.preferences_upto(24)
    assert accuracy(promoted, trained_on) > 0.9 > run.metrics["rm_live_agreement"]  # seen vs unseen
    rm_manifest = loop.registry.manifest("reward", "rm-v0002")
    assert rm_manifest["metrics"]["rm_live_agreement"] == run.metrics["rm_live_agreement"]
    terminal = [e for e in loop.events if getattr(e, "is_terminal", False)][-1]
    assert terminal.metrics["rm_live_agreement"] == run.metrics["rm_live_agreement"]  # type: ignore[attr-defined]


def test_a_rollback_returns_to_the_last_good_version_and_the_next_run_continues_from_it(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    loop = Loop(tmp_path, tiny_models)
    for start in (0, 24):
        loop.add([make_preference(i) for i in range(start, start + 24)])
        loop.run()
    assert loop.registry.pointer("policy", "promoted") == "policy-v0002"
    assert loop.registry.rollback("policy", "policy-v0002") == "policy-v0001"
    assert loop.registry.rollback("policy", "policy-v0002") == "policy-v0001"  # heard twice: no change
    loop.add([make_preference(i) for i in range(48, 60)])
    loop.run()
    manifest = loop.registry.manifest("policy", "policy-v0003")
    assert manifest["init"]["from"] == "policy-v0001" and manifest["lineage"] == ["policy-v0001"]
    assert loop.registry.rollback("policy", "policy-v0003") == "policy-v0001"  # skips the rolled-back v2
    assert loop.registry.rollback("policy", "policy-v0001") is None  # back to the base
    assert loop.registry.pointer("policy", "promoted") is None


class UnackedPromotions:
    """Publishes as the job's producer does (back once the broker acknowledged), except
    that the next `unacked` promoted events are never acknowledged: they fail as
    `EventProducer.publish` fails then."""

    def __init__(self, events: list[Event], unacked: int) -> None:
        self.events, self.unacked, self.refused = events, unacked, 0

    def __call__(self, _topic: str, event: Event) -> None:
        if isinstance(event, ModelUpdate) and event.action == "promoted" and self.unacked > 0:
            self.unacked -= 1
            self.refused += 1
            raise KafkaTimeoutError("no acknowledgement from the broker")
        self.events.append(event)


def test_a_promotion_the_broker_does_not_acknowledge_is_retried_and_never_fails_the_run(
        tmp_path: Path, tiny_models: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    """The pointer has moved before the event is sent: the promotion happened. The send
    is retried a few times; if it never goes through the run still succeeds with the
    promotion recorded, and says so (policy servers heal by reconciling with the registry)."""
    loop = Loop(tmp_path, tiny_models)
    broker = UnackedPromotions(loop.events, unacked=2)
    loop.reporter = RunReporter(loop.store, broker)
    loop.add([make_preference(i) for i in range(24)])
    state, run = loop.run()
    assert state == "succeeded" and loop.registry.pointer("policy", "promoted") == "policy-v0001"
    promoted = [e for e in loop.events if isinstance(e, ModelUpdate) and e.action == "promoted"]
    assert [e.model_version for e in promoted] == ["policy-v0001"] and broker.refused == 2  # the third try
    assert run.metrics["promotion_announced"] == 1

    broker.unacked = 1_000  # the broker stays away
    loop.add([make_preference(i) for i in range(24, 36)])
    with caplog.at_level(logging.ERROR, logger="services.trainer.pipeline"):
        state, run = loop.run()
    assert state == "succeeded" and loop.registry.pointer("policy", "promoted") == "policy-v0002"
    assert broker.refused == 2 + 3  # bounded
    terminal = [e for e in loop.events if getattr(e, "is_terminal", False)][-1]
    assert terminal.state == "succeeded" and terminal.model_version == "policy-v0002"  # type: ignore[attr-defined]
    assert terminal.metrics["promotion_announced"] == 0  # type: ignore[attr-defined]
    assert any("policy-v0002" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_a_promotion_whose_event_was_lost_is_announced_again_from_the_registry(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    """The pointer is the outbox: the trainer service reads `promoted` events back from
    the topic, and sends one again for a promoted version the topic never showed (a
    consumer that only follows events, the vLLM deployer, would never load it), once,
    and not while a run may still be sending its own."""
    loop = Loop(tmp_path, tiny_models)
    broker = UnackedPromotions(loop.events, unacked=1_000)  # the job's tries all fail
    loop.reporter = RunReporter(loop.store, broker)
    loop.add([make_preference(i) for i in range(24)])
    state, _run = loop.run()
    assert state == "succeeded" and loop.registry.pointer("policy", "promoted") == "policy-v0001"
    assert not [e for e in loop.events if isinstance(e, ModelUpdate) and e.action == "promoted"]

    broker.unacked = 0  # the broker is back
    clock = [0.0]
    announcer = PromotionAnnouncer(loop.store, loop.registry, loop.reporter, canary_fraction=0.2,
                                   base_model="unused", grace_s=30, clock=lambda: clock[0])
    handle = make_store_handler(loop.store, registry=loop.registry)
    assert announcer.reconcile() is None  # first look: a run's own event may still be on its way
    loop.store.try_lock("another-run", 60)
    clock[0] = 31.0
    assert announcer.reconcile() is None  # a run holds the lock: it may be announcing right now
    loop.store.release_lock("another-run")
    assert announcer.reconcile() == "policy-v0001"
    sent = [e for e in loop.events if isinstance(e, ModelUpdate) and e.action == "promoted"]
    assert [(e.model_version, e.canary_fraction) for e in sent] == [("policy-v0001", 0.2)]
    assert sent[0].event_id == model_update_id_for("policy-v0001", "promoted")  # what the job would have sent
    assert sent[0].adapter_uri == loop.registry.path("policy", "policy-v0001").resolve().as_uri()
    assert announcer.reconcile() is None  # sent: the consumer gets `grace_s` to read it back
    handle(sent[0], None)  # the trainer's consumer reads it back from rlhf.model-updates
    clock[0] = 1_000.0
    assert announcer.reconcile() is None  # seen on the topic: never sent again
    assert [e for e in loop.events if isinstance(e, ModelUpdate) and e.action == "promoted"] == sent


@pytest.mark.parametrize("algorithm", ["ppo", "rloo", "grpo", "dpo"])
def test_every_optimiser_trains_only_the_adapter(tmp_path: Path, tiny_models: tuple[Path, Path],
                                                 algorithm: str) -> None:
    from safetensors.torch import load_file

    store = PreferenceStore(tmp_path / "s.sqlite")
    for i in range(8):
        store.add_preference(make_preference(i))
    rows = store.preferences_upto(store.max_seq())
    backbone = RewardModel.frozen_backbone(tiny_models[0], max_length=64)
    backbone.save_head(tmp_path / "rm", torch.randn(backbone.head.hidden_size))  # type: ignore[union-attr]
    # TRL's own options pass through (a constant learning rate of 0.0123 instead of ours, decayed)
    trl = {algorithm: {"learning_rate": 0.0123, "lr_scheduler_type": "constant"}}
    hyper = Hyperparameters(**{**TINY_HYPER, "policy_learning_rate": 1e-2, "ppo_episodes": 8, "group_steps": 1,
                               "trl": trl})
    result = get_optimizer(algorithm).train(
        PolicyTrainConfig(base_model=str(tiny_models[0]), reward_model=str(tmp_path / "rm"),
                          output_dir=tmp_path / "out", hyper=hyper),
        PolicyData(prompts=[r.prompt for r in rows], pairs=pair_rows(rows)))
    assert result.algorithm == algorithm and result.episodes > 0 and result.init == "fresh"
    # what TRL logged, collected by the callback: the learning rate it trained with is ours overridden
    rates = {k: v for k, v in result.metrics.items() if k in (f"{algorithm}_lr", f"{algorithm}_learning_rate")}
    assert rates and all(abs(v - 0.0123) < 1e-9 for v in rates.values()), result.metrics
    weights = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and any(float(w.abs().sum()) > 0 for w in lora_b)  # B starts at zero: it moved
    assert not any("lora" not in name for name in weights)  # only the adapter is saved; the base stays
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter_config.json",
                                                                     "adapter_model.safetensors"]
