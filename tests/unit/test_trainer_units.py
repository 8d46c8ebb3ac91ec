"""Trainer pieces that need no broker and no model: store, lock, trigger rule, gates,
registry, Kubernetes manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.trainer.executor import JobSpec, KubernetesJobExecutor
from services.trainer.gates import PolicyEval, is_degenerate, policy_gate, reward_model_gate
from services.trainer.jobs import should_trigger
from services.trainer.registry import ModelRegistry
from services.trainer.run_job import job_payload
from services.trainer.settings import GateThresholds, TrainerSettings
from services.trainer.store import PreferenceStore, is_heldout
from shared.stats import compare
from tests.trainer_support import make_output, make_preference


@pytest.fixture
def store(tmp_path: Path) -> PreferenceStore:
    s = PreferenceStore(tmp_path / "store.sqlite")
    yield s
    s.close()


def test_trainer_store_dedupes_redelivered_preferences(store: PreferenceStore) -> None:
    assert store.add_preference(make_preference(1))
    assert not store.add_preference(make_preference(1))  # redelivery
    assert store.add_preference(make_preference(2))
    assert store.preference_count() == 2
    assert store.new_since_last_training() == 2
    assert store.add_output(make_output(1)) and not store.add_output(make_output(1))


def test_trainer_store_counts_new_since_last_finished_run(store: PreferenceStore) -> None:
    for i in range(3):
        store.add_preference(make_preference(i))
    store.create_run("failed-run", "test", store.max_seq(), 3)
    store.set_run_state("failed-run", "failed", reason="boom")
    assert store.new_since_last_training() == 3  # a failed run used nothing up
    store.create_run("ok-run", "test", store.max_seq(), 3)
    store.set_run_state("ok-run", "succeeded")
    assert store.new_since_last_training() == 0
    store.add_preference(make_preference(3))
    store.add_preference(make_preference(3))
    assert store.new_since_last_training() == 1
    rows = store.preferences_upto(store.max_seq())
    assert {r.guideline_version for r in rows} == {"g1"} and len(rows) == 4


def test_trainer_heldout_split_is_by_prompt_and_stable(store: PreferenceStore) -> None:
    for i in range(40):
        store.add_preference(make_preference(i))
    rows = store.preferences_upto(store.max_seq())
    heldout = {r.prompt_hash for r in rows if is_heldout(r.prompt_hash, 0.2)}
    assert 0 < len(heldout) < len(rows)
    assert heldout == {r.prompt_hash for r in rows if is_heldout(r.prompt_hash, 0.2)}


def test_trainer_lock_is_exclusive_and_a_dead_holder_is_reclaimed(store: PreferenceStore) -> None:
    store.create_run("a", "test", 0, 0)
    assert store.try_lock("a", stale_s=60) == (True, None)
    assert store.try_lock("b", stale_s=60) == (False, None)  # alive holder (this process)
    store.release_lock("a")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.create_run("c", "test", 0, 0)
    store.set_run_state("c", "started")
    assert store.try_lock("c", stale_s=60, pid=dead.pid)[0]
    taken, reclaimed = store.try_lock("d", stale_s=60)
    assert taken and reclaimed == "c"
    run = store.get_run("c")
    assert run is not None and run.state == "failed" and "died" in (run.reason or "")


def test_trainer_trigger_rule() -> None:
    assert not should_trigger(9, 10, None, 60, now=1000, busy=False)
    assert should_trigger(10, 10, None, 60, now=1000, busy=False)
    assert not should_trigger(10, 10, 990, 60, now=1000, busy=False)  # interval not passed
    assert should_trigger(10, 10, 900, 60, now=1000, busy=False)
    assert not should_trigger(50, 10, None, 0, now=1000, busy=True)


def evaluation(wins: int, losses: int, ties: int, **extra: float) -> PolicyEval:
    comparison = compare([1.0] * wins + [0.0] * losses + [0.5] * ties, [0.0] * wins + [1.0] * losses + [0.5] * ties)
    fields: dict = {"prompts": comparison.n, "wins": wins, "losses": losses, "ties": ties,
                    "win_rate": comparison.win_rate, "p_value": comparison.p_value, "judge": "ensemble",
                    "judge_score_delta": 0.0, "kl": 0.5, "kl_base": 0.5, "degenerate_rate": 0.0}
    return PolicyEval(**{**fields, **extra})


def test_trainer_reward_model_gate_judges_only_on_enough_pairs() -> None:
    gates = GateThresholds(min_rm_accuracy=0.6, rm_accuracy_epsilon=0.02, min_rm_heldout_pairs=30)
    assert reward_model_gate(0.7, 0.71, gates, 40).passed
    assert not reward_model_gate(0.7, 0.8, gates, 40).passed
    assert not reward_model_gate(0.5, None, gates, 40).passed
    few = reward_model_gate(4 / 7, None, gates, 7)  # 4 of 7: too few pairs to call the model bad
    assert few.passed and few.reasons == [] and "7 held-out pairs < 30" in few.notes[0]


def test_trainer_policy_gate_needs_evidence_an_effect_and_enough_prompts() -> None:
    gates = GateThresholds(alpha=0.05, min_win_rate=0.55, min_eval_prompts=32, max_kl=1.0, max_degenerate_rate=0.2)
    assert policy_gate(evaluation(24, 8, 0), gates).passed  # p = 0.0035, win rate 0.75
    chance = policy_gate(evaluation(18, 14, 0), gates)  # p = 0.30: could be luck
    assert not chance.passed and "no evidence" in chance.reasons[0] and "p 0.298" in chance.reasons[0]
    unchanged = policy_gate(evaluation(0, 0, 40), gates)  # every answer the same
    assert not unchanged.passed and "0 wins, 0 losses, 40 ties" in unchanged.reasons[0]
    tiny_effect = policy_gate(evaluation(300, 240, 460), gates)  # significant, but a win rate of 0.53
    assert not tiny_effect.passed and tiny_effect.reasons == ["win_rate 0.530 < min 0.550"]
    few = policy_gate(evaluation(10, 0, 0), gates)
    assert not few.passed and few.reasons == ["only 10 held-out prompts < min 32"]
    unsafe = policy_gate(evaluation(30, 2, 0, kl=3.0, degenerate_rate=0.5), gates)
    assert len(unsafe.reasons) == 2 and any("kl" in r for r in unsafe.reasons)
    assert is_degenerate("") and is_degenerate("la " * 20) and not is_degenerate("a short fine answer")


def test_trainer_registry_publishes_atomically_with_pointers(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    staged = registry.staging("run1", "policy")
    (staged / "adapter_model.safetensors").write_bytes(b"x")
    version = registry.publish("policy", staged, {"run_id": "run1", "metrics": {"kl": 0.1}})
    assert version == "policy-v0001" and not staged.exists()
    assert registry.pointer("policy", "latest") == version and registry.pointer("policy", "promoted") is None
    registry.set_pointer("policy", "promoted", version)
    assert registry.pointer("policy", "promoted") == version
    manifest = registry.manifest("policy", version)
    assert manifest["run_id"] == "run1" and manifest["kind"] == "policy" and manifest["version"] == version
    (registry.root / "policy" / "policy-v0002").mkdir()  # a half-copied dir without manifest is not a version
    assert registry.versions("policy") == [version] and registry.next_version("policy") == "policy-v0002"
    registry.staging("dead-run", "reward")
    assert registry.clean_staging() == ["dead-run-reward"]


def test_trainer_kubernetes_job_manifest_and_secret_free_payload(tmp_path: Path) -> None:
    settings = TrainerSettings(data_dir=str(tmp_path), kafka={"sasl_mechanism": "PLAIN", "sasl_username": "u",
                                                              "sasl_password": "hunter2"})
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job_payload("run-123456789", 7, settings)))
    assert "hunter2" not in job_file.read_text()
    manifest = KubernetesJobExecutor("img:1", "ns", gpus=1).render(JobSpec("run-123456789", job_file, tmp_path / "l"))
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert manifest["kind"] == "Job" and manifest["spec"]["backoffLimit"] == 0
    assert container["image"] == "img:1" and container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "hunter2" not in json.dumps(manifest)


def test_trainer_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLHF_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RLHF_TRAINER__THRESHOLD", "7")
    monkeypatch.setenv("RLHF_TRAINER__ALGORITHM", "dpo")
    monkeypatch.setenv("RLHF_TRAINER__GATES__MIN_WIN_RATE", "0.55")
    monkeypatch.setenv("RLHF_TRAINER__HYPER__LORA_R", "4")
    s = TrainerSettings()
    assert (s.trainer.threshold, s.trainer.algorithm, s.trainer.gates.min_win_rate, s.trainer.hyper.lora_r) == (
        7, "dpo", 0.55, 4)
    assert s.trainer.base_model == os.path.join(str(tmp_path), "models", "smollm2-135m-instruct")
    assert s.trainer.reward_base_model == s.trainer.base_model  # the reward head reads the policy's own backbone
    monkeypatch.setenv("RLHF_MODELS_DIR", str(tmp_path / "shared-models"))
    assert TrainerSettings().trainer.base_model == os.path.join(str(tmp_path), "shared-models", "smollm2-135m-instruct")


def test_trl_options_are_passed_through_by_trl_names_and_unknown_ones_refused() -> None:
    from trl import DPOConfig

    from services.trainer.policy.base import trl_config

    args = trl_config(DPOConfig, {"output_dir": "/tmp/x", "beta": 0.1, "use_cpu": True}, {"beta": 0.5, "loss_type": ["ipo"]},
                      "RLHF_TRAINER__HYPER__TRL__DPO")
    assert args.beta == 0.5 and args.loss_type == ["ipo"]  # the user's option over ours
    with pytest.raises(ValueError, match="RLHF_TRAINER__HYPER__TRL__DPO: DPOConfig has no option betta"):
        trl_config(DPOConfig, {"output_dir": "/tmp/x", "use_cpu": True}, {"betta": 0.5}, "RLHF_TRAINER__HYPER__TRL__DPO")


def test_every_logged_series_is_kept_and_a_renamed_one_is_reported() -> None:
    from services.trainer.policy.base import summarise_logs

    logs = [{"objective/kl": 1.0, "loss/policy_avg": 0.5, "lr": 0.1}, {"objective/kl": 3.0, "lr": 0.1}]
    metrics = summarise_logs(logs, "ppo", {"objective/kl": "ppo_kl", "objective/scores": "ppo_score"})
    assert metrics["ppo_kl"] == 2.0 and metrics["ppo_kl_last"] == 3.0  # the stable name for a known series
    assert metrics["ppo_loss_policy_avg"] == 0.5 and metrics["ppo_lr"] == 0.1  # and every other one
    assert metrics["trl_metrics_missing"] == 1.0  # objective/scores was not logged
    assert "trl_metrics_missing" not in summarise_logs(logs, "ppo", {"objective/kl": "ppo_kl"})


def test_a_logged_nan_is_no_measurement() -> None:
    import math

    from services.trainer.policy.base import logged_metrics, summarise_logs

    callback = logged_metrics()
    state = type("State", (), {"is_world_process_zero": True})()
    callback.on_log(None, state, None, logs={"val/ratio_var": math.nan, "objective/kl": 1.5, "done": True})
    metrics = summarise_logs(callback.logs, "ppo", {"objective/kl": "ppo_kl"})
    assert metrics == {"ppo_kl": 1.5, "ppo_kl_last": 1.5}  # a ModelUpdate refuses NaN metrics
