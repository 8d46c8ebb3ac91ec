"""One training run, stage by stage: snapshot -> reward_model -> policy -> evaluate ->
publish. Runs inside the job process (see run_job.py); every stage boundary is a
`TrainingRunStatus` event.

Nothing becomes visible before the publish stage, and publishing is a rename per
model (registry.py). Before publishing, the run checks it still holds the run lock:
if the service restarted and reclaimed the lock (marking this run failed), an
orphaned job must not publish behind its back.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .evaluate import evaluate_policy
from .gates import GateResult, policy_gate, reward_model_gate
from .policy.base import PolicyData, PolicyTrainConfig, get_optimizer
from .registry import ModelRegistry
from .reporting import RunReporter
from .reward_model import RewardModelConfig, RewardScorer, pair_rows, train_reward_model
from .settings import TrainerOptions
from .store import PreferenceRow, PreferenceStore, is_heldout

log = logging.getLogger(__name__)


class RunAborted(RuntimeError):
    """The run lost its lock (declared dead by a restarted service): stop, publish nothing."""


@dataclass
class Snapshot:
    train: list[PreferenceRow]
    heldout: list[PreferenceRow]
    train_prompts: list[list[dict[str, str]]]
    heldout_prompts: list[list[dict[str, str]]]

    def lineage(self) -> dict[str, Any]:
        rows = self.train + self.heldout
        times = sorted(r.created_at for r in rows)
        return {"preference_count": len(rows), "train_pairs": len(self.train), "heldout_pairs": len(self.heldout),
                "seq_range": [min(r.seq for r in rows), max(r.seq for r in rows)] if rows else None,
                "time_range": [times[0], times[-1]] if times else None,
                "guideline_versions": sorted({r.guideline_version for r in rows})}


def take_snapshot(store: PreferenceStore, watermark: int, heldout_fraction: float) -> Snapshot:
    """Everything up to the run's watermark, split by prompt hash: a prompt is either
    trained on or held out, never both."""
    prefs = store.preferences_upto(watermark)
    train = [p for p in prefs if not is_heldout(p.prompt_hash, heldout_fraction)]
    heldout = [p for p in prefs if is_heldout(p.prompt_hash, heldout_fraction)]
    prompts = store.prompts()
    return Snapshot(train, heldout,
                    [m for h, m in prompts if not is_heldout(h, heldout_fraction)],
                    [m for h, m in prompts if is_heldout(h, heldout_fraction)])


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class TrainingRun:
    run_id: str
    watermark: int
    options: TrainerOptions
    store: PreferenceStore
    registry: ModelRegistry
    reporter: RunReporter
    device: str = "cpu"
    metrics: dict[str, float] = field(default_factory=dict)
    preference_count: int = 0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._check_owner()
        self.reporter.state(self.run_id, "stage_started", stage=name)
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.metrics[f"stage_seconds_{name}"] = seconds
        self.reporter.state(self.run_id, "stage_succeeded", stage=name, metrics={"seconds": seconds})

    def _check_owner(self) -> None:
        holder = self.store.lock_holder()
        if holder is None or holder.run_id != self.run_id:
            raise RunAborted(f"run {self.run_id} no longer holds the run lock")

    def execute(self) -> str:
        """Run every stage; returns the terminal state (succeeded | gated)."""
        opts, hyper = self.options, self.options.hyper
        self.reporter.state(self.run_id, "started")
        with self.stage("snapshot"):
            snap = take_snapshot(self.store, self.watermark, opts.heldout_fraction)
            if len(snap.train) < 1 or len(snap.heldout) < 1:
                raise ValueError(f"need train and held-out pairs; have {len(snap.train)} train, "
                                 f"{len(snap.heldout)} held-out (more distinct prompts needed)")
            lineage = snap.lineage()
            self.preference_count = len(snap.train) + len(snap.heldout)
        hyperparameters = hyper.model_dump()
        common_manifest = {"run_id": self.run_id, "preferences": lineage, "hyperparameters": hyperparameters,
                           "code_version": code_version(), "algorithm": opts.algorithm}

        with self.stage("reward_model"):
            prev_rm = self.registry.pointer("reward", "promoted")
            init = str(self.registry.path("reward", prev_rm)) if prev_rm else opts.reward_base_model
            rm_dir = self.registry.staging(self.run_id, "reward")
            rm = train_reward_model(RewardModelConfig(
                init_path=init, output_dir=rm_dir, epochs=hyper.rm_epochs, batch_size=hyper.rm_batch_size,
                learning_rate=hyper.rm_learning_rate, max_length=hyper.max_length, seed=hyper.seed,
                device=self.device), pair_rows(snap.train))
            accuracy = RewardScorer(rm_dir, hyper.max_length, self.device).accuracy(snap.heldout)
            prev_accuracy = (RewardScorer(init, hyper.max_length, self.device).accuracy(snap.heldout)
                             if prev_rm else None)
            rm_gate = reward_model_gate(accuracy, prev_accuracy, opts.gates)
            self.metrics.update({"rm_accuracy": accuracy, "rm_train_loss": rm.train_loss,
                                 "rm_pairs_per_s": rm.pairs_per_s})
            if prev_accuracy is not None:
                self.metrics["rm_previous_accuracy"] = prev_accuracy
            self._check_owner()
            rm_version = self.registry.publish("reward", rm_dir, {
                **common_manifest, "parent_version": prev_rm, "base_model": init,
                "metrics": {k: v for k, v in self.metrics.items() if k.startswith("rm_")},
                "gate": {"passed": rm_gate.passed, "reasons": rm_gate.reasons}})
            if rm_gate.passed:
                self.registry.set_pointer("reward", "promoted", rm_version)
        if not rm_gate.passed:
            return self._finish("gated", rm_gate, model_version=None, rm_version=rm_version)

        with self.stage("policy"):
            policy_dir = self.registry.staging(self.run_id, "policy")
            optimizer = get_optimizer(opts.algorithm)
            prompts = snap.train_prompts or [p.prompt for p in snap.train]
            result = optimizer.train(
                PolicyTrainConfig(base_model=opts.base_model, reward_model=str(self.registry.path("reward", rm_version)),
                                  output_dir=policy_dir, hyper=hyper, device=self.device),
                PolicyData(prompts=prompts, pairs=pair_rows(snap.train)))
            self.metrics.update(result.metrics)
            self.metrics["policy_episodes_per_s"] = result.episodes_per_s

        with self.stage("evaluate"):
            prev_policy = self.registry.pointer("policy", "promoted")
            eval_prompts = (snap.heldout_prompts or [p.prompt for p in snap.heldout])[: opts.gates.eval_prompts]
            ev = evaluate_policy(
                base_model=opts.base_model, candidate_adapter=policy_dir,
                previous_adapter=self.registry.path("policy", prev_policy) if prev_policy else None,
                reward_model=self.registry.path("reward", rm_version), prompts=eval_prompts,
                max_new_tokens=hyper.response_length, max_length=hyper.max_length, seed=hyper.seed,
                device=self.device)
            gate = policy_gate(ev, opts.gates)
            self.metrics.update(ev.as_metrics())

        with self.stage("publish"):
            self._check_owner()
            version = self.registry.publish("policy", policy_dir, {
                **common_manifest, "parent_version": prev_policy, "base_model": opts.base_model,
                "reward_model_version": rm_version, "metrics": dict(self.metrics),
                "gate": {"passed": gate.passed, "reasons": gate.reasons}})
            update = dict(model_version=version, run_id=self.run_id, base_model=opts.base_model,
                          adapter_uri=self.registry.path("policy", version).resolve().as_uri(),
                          reward_model_version=rm_version, previous_version=prev_policy,
                          gate_passed=gate.passed, gate_reasons=gate.reasons, metrics=dict(self.metrics))
            self.reporter.model_update(action="published", **update)  # type: ignore[arg-type]
            if gate.passed:
                self.registry.set_pointer("policy", "promoted", version)
                self.reporter.model_update(action="promoted", canary_fraction=opts.canary_fraction,
                                           **update)  # type: ignore[arg-type]
        return self._finish("succeeded" if gate.passed else "gated", gate, model_version=version, rm_version=rm_version)

    def _finish(self, state: str, gate: GateResult, *, model_version: str | None, rm_version: str) -> str:
        reason = "; ".join(gate.reasons) if gate.reasons else None
        self.reporter.state(self.run_id, state, reason=reason, metrics=dict(self.metrics),
                            model_version=model_version or rm_version,
                            preference_count=self.preference_count)
        return state
