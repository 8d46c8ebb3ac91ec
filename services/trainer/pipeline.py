"""One training run, stage by stage: snapshot -> reward_model -> policy -> evaluate ->
publish. Runs inside the job process (see run_job.py); every stage boundary is a
`TrainingRunStatus` event.

- reward_model: first the *live agreement* — the promoted reward model scores the
  rankings that arrived since it was trained, the honest number for how well it
  predicts annotators on traffic it never saw; then a new model on the run's training
  window (every pair new since the last finished run plus a replay sample of older
  ones: store.training_window), gated on a stable sample of held-out pairs.
- policy: the candidate starts from the promoted policy's adapter (policies build on
  each other); KL is measured against the base or the incumbent (`reference`).
- evaluate: candidate vs incumbent on held-out prompts, judged independently of the
  reward model the candidate was optimised against (judge.py, gates.py).

On more than one process (distributed.py) every rank runs this same code: the
reward model and the policy train on all of them, rank 0's reads of the registry and
of the store are broadcast so the ranks never diverge, and rank 0 alone publishes,
reports and evaluates (the other ranks end after the policy stage).

Nothing becomes visible before the publish stage, and publishing is a rename per
model (registry.py). Before publishing, the run checks it still holds the run lock:
if the service restarted and reclaimed the lock (marking this run failed), an
orphaned job must not publish behind its back.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from shared.models.reward import RewardModel

from .distributed import Ranks
from .evaluate import evaluate_policy
from .features import FeatureCache
from .gates import GateResult, policy_gate, reward_model_gate
from .judge import FoldEnsembleJudge, Judge, RewardModelJudge
from .policy.base import PolicyData, PolicyTrainConfig, get_optimizer
from .registry import ModelRegistry
from .reporting import RunReporter
from .reward_model import RewardModelConfig, accuracy, load_version, pair_rows, train_finetuned, train_head
from .settings import TrainerOptions
from .store import PreferenceRow, PreferenceStore, is_heldout, prompt_hash

log = logging.getLogger(__name__)

Prompt = list[dict[str, str]]
PROMOTION_SEND_ATTEMPTS = 3
PROMOTION_SEND_BACKOFF_S = 1.0  # times the attempt number


class RunAborted(RuntimeError):
    """The run lost its lock (declared dead by a restarted service): stop, publish nothing."""


@dataclass
class Snapshot:
    train: list[PreferenceRow]
    heldout: list[PreferenceRow]
    train_prompts: list[Prompt]
    heldout_prompts: list[Prompt]
    window: dict[str, int] = field(default_factory=dict)  # TrainingWindow.describe()

    def lineage(self) -> dict[str, Any]:
        rows = self.train + self.heldout
        times = sorted(r.created_at for r in rows)
        return {"preference_count": len(rows), "train_pairs": len(self.train), "heldout_pairs": len(self.heldout),
                "seq_range": [min(r.seq for r in rows), max(r.seq for r in rows)] if rows else None,
                "time_range": [times[0], times[-1]] if times else None,
                "guideline_versions": sorted({r.guideline_version for r in rows}), "window": self.window}

    def since(self, seq: int) -> list[PreferenceRow]:
        return [r for r in self.train + self.heldout if r.seq > seq]


def take_snapshot(store: PreferenceStore, watermark: int, opts: TrainerOptions, run_id: str = "") -> Snapshot:
    """The run's window up to its watermark (store.training_window): every training pair
    new since the last finished run, a replay sample of older ones (deterministic for the
    run id) and a stable sample of the held-out pairs, split by prompt hash: a prompt is
    either trained on or held out, never both. A store smaller than the window is taken
    whole, as before windows."""
    window = store.training_window(
        watermark, heldout_fraction=opts.heldout_fraction, start=store.window_start(watermark, run_id),
        seed=f"{run_id}:{opts.hyper.seed}", new_max=opts.train_window_new_max, replay_size=opts.replay_size,
        replay_half_life=opts.replay_half_life, heldout_max=opts.heldout_sample_max)
    prompts = store.prompts()
    return Snapshot(window.train, window.heldout,
                    [m for h, m in prompts if not is_heldout(h, opts.heldout_fraction)],
                    [m for h, m in prompts if is_heldout(h, opts.heldout_fraction)],
                    window=window.describe())


def load_eval_prompts(path: str) -> list[Prompt]:
    """A fixed evaluation set (JSONL of {"messages": [...]}), beside held-out traffic."""
    if not path:
        return []
    prompts = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            prompts.append([{"role": m["role"], "content": m["content"]} for m in json.loads(line)["messages"]])
    return prompts


def evaluation_prompts(snap: Snapshot, eval_file: str, limit: int) -> list[Prompt]:
    seen: set[str] = set()
    chosen: list[Prompt] = []
    for prompt in [*snap.heldout_prompts, *[p.prompt for p in snap.heldout], *load_eval_prompts(eval_file)]:
        key = prompt_hash(prompt)
        if key not in seen:
            seen.add(key)
            chosen.append(prompt)
    return chosen[:limit]


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
    work_dir: Path | None = None  # feature and evaluation caches (DATA_DIR/trainer)
    metrics: dict[str, float] = field(default_factory=dict)
    preference_count: int = 0
    ranks: Ranks = field(default_factory=Ranks.single)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._check_owner()
        if self.ranks.is_main:
            self.reporter.state(self.run_id, "stage_started", stage=name)
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.metrics[f"stage_seconds_{name}"] = seconds
        if self.ranks.is_main:
            self.reporter.state(self.run_id, "stage_succeeded", stage=name, metrics={"seconds": seconds})

    def _check_owner(self) -> None:
        """Rank 0's check (it alone publishes): a run that lost its lock stops there, and
        the launcher takes the other ranks down with it."""
        if not self.ranks.is_main:
            return
        holder = self.store.lock_holder()
        if holder is None or holder.run_id != self.run_id:
            raise RunAborted(f"run {self.run_id} no longer holds the run lock")

    def _backbone(self) -> RewardModel:
        hyper = self.options.hyper
        return RewardModel.frozen_backbone(self.options.reward_base_model, hyper.rm_layers, self.device,
                                           hyper.max_length)

    def execute(self) -> str:
        """Run every stage; returns the terminal state (succeeded | gated), or `worker`
        on a rank other than 0 once its share of the training is done."""
        opts, hyper, ranks = self.options, self.options.hyper, self.ranks
        cache = FeatureCache(self.work_dir / "features.sqlite") if self.work_dir else None
        if ranks.is_main:
            self.reporter.state(self.run_id, "started")
        with self.stage("snapshot"):
            snap = ranks.broadcast(take_snapshot(self.store, self.watermark, opts, self.run_id)
                                   if ranks.is_main else None)
            if len(snap.train) < 1 or len(snap.heldout) < 1:
                raise ValueError(f"need train and held-out pairs; have {len(snap.train)} train, "
                                 f"{len(snap.heldout)} held-out (more distinct prompts needed)")
            lineage = snap.lineage()
            self.preference_count = len(snap.train) + len(snap.heldout)
        common_manifest = {"run_id": self.run_id, "preferences": lineage, "hyperparameters": hyper.model_dump(),
                           "code_version": code_version(), "algorithm": opts.algorithm}

        with self.stage("reward_model"):
            backbone = self._backbone()
            prev_rm = ranks.broadcast(self.registry.pointer("reward", "promoted"))
            previous = (load_version(self.registry.path("reward", prev_rm), backbone, self.device, hyper.max_length)
                        if prev_rm else None)
            if previous is not None:
                fresh = snap.since(self.registry.trained_upto("reward", prev_rm))
                if fresh:
                    self.metrics["rm_live_agreement"] = accuracy(previous, fresh, cache, ranks)
                    self.metrics["rm_live_pairs"] = len(fresh)
            rm_dir = ranks.broadcast(self.registry.staging(self.run_id, "reward") if ranks.is_main else None)
            rm_config = RewardModelConfig(
                output_dir=rm_dir, mode=hyper.rm_mode, layers=hyper.rm_layers, l2=hyper.rm_l2,
                init_path=(str(self.registry.path("reward", prev_rm))
                           if prev_rm and (self.registry.path("reward", prev_rm) / "config.json").is_file()
                           else opts.reward_base_model),
                epochs=hyper.rm_epochs, batch_size=hyper.rm_batch_size, learning_rate=hyper.rm_learning_rate,
                max_length=hyper.max_length, seed=hyper.seed, device=self.device,
                trl_overrides=hyper.trl.get("reward", {}))
            if hyper.rm_mode == "head":
                rm = train_head(backbone, snap.train, rm_config, cache, ranks)
                new_rm: Any = backbone  # its head is the new one now
            else:
                rm = train_finetuned(snap.train, rm_config, ranks)
                new_rm = RewardModel.load(rm_dir, self.device, hyper.max_length)
            rm_accuracy = accuracy(new_rm, snap.heldout, cache, ranks)
            prev_accuracy = accuracy(previous, snap.heldout, cache, ranks) if previous is not None else None
            rm_gate = reward_model_gate(rm_accuracy, prev_accuracy, opts.gates, len(snap.heldout))
            self.metrics.update({"rm_accuracy": rm_accuracy, "rm_train_loss": rm.train_loss,
                                 "rm_pairs_per_s": rm.pairs_per_s, "rm_heldout_pairs": len(snap.heldout)})
            if prev_accuracy is not None:
                self.metrics["rm_previous_accuracy"] = prev_accuracy
            self._check_owner()
            rm_version = ranks.broadcast(self._publish_reward(rm_dir, rm_gate, common_manifest, prev_rm)
                                         if ranks.is_main else None)
            del new_rm, previous, backbone
        if not rm_gate.passed:
            return self._finish("gated", rm_gate, model_version=None, rm_version=rm_version)

        incumbent = ranks.broadcast(self.registry.pointer("policy", "promoted"))
        incumbent_dir = self.registry.path("policy", incumbent) if incumbent else None
        with self.stage("policy"):
            policy_dir = ranks.broadcast(self.registry.staging(self.run_id, "policy") if ranks.is_main else None)
            prompts = snap.train_prompts or [p.prompt for p in snap.train]
            result = get_optimizer(opts.algorithm).train(
                PolicyTrainConfig(base_model=opts.base_model, reward_model=str(self.registry.path("reward", rm_version)),
                                  output_dir=policy_dir, hyper=hyper, device=self.device,
                                  init_adapter=str(incumbent_dir) if incumbent_dir and hyper.continue_from_promoted
                                  else None, reference=hyper.reference, ranks=ranks),
                PolicyData(prompts=prompts, pairs=pair_rows(snap.train)))
            self.metrics.update(result.metrics)
            self.metrics["policy_episodes_per_s"] = result.episodes_per_s
            if ranks.distributed:
                self.metrics["training_processes"] = float(ranks.world_size)
        if not ranks.is_main:
            if cache is not None:
                cache.close()
            return "worker"  # the adapter is saved (by rank 0); evaluating and publishing are rank 0's

        with self.stage("evaluate"):
            judge = self._judge(snap, prev_rm_for_judge=self._judge_rm(rm_version), cache=cache)
            evaluation = evaluate_policy(
                base_model=opts.base_model, candidate_adapter=policy_dir, incumbent=incumbent,
                incumbent_adapter=incumbent_dir, reference=hyper.reference, judge=judge,
                prompts=evaluation_prompts(snap, opts.eval_prompts_file, opts.gates.eval_prompts),
                max_new_tokens=hyper.response_length, temperature=hyper.temperature, seed=hyper.seed,
                device=self.device, cache_dir=self.work_dir / "eval-cache" if self.work_dir else None)
            gate = policy_gate(evaluation.result, opts.gates)
            self.metrics.update(evaluation.result.as_metrics())
            del judge

        with self.stage("publish"):
            self._check_owner()
            self._record_peak_memory()  # every stage that loads a model has run: the manifest carries it
            parent_lineage = self.registry.manifest("policy", incumbent).get("lineage", []) if incumbent else []
            version = self.registry.publish("policy", policy_dir, {
                **common_manifest, "parent_version": incumbent, "base_model": opts.base_model,
                "init": {"from": incumbent if result.init == "continued" else None, "kind": result.init,
                         "note": result.init_note},
                "lineage": [*parent_lineage, incumbent] if incumbent else [],
                "reference": hyper.reference, "reward_model_version": rm_version, "metrics": dict(self.metrics),
                "evaluation": {**asdict(evaluation.result), "examples": evaluation.examples},
                "gate": {"passed": gate.passed, "reasons": gate.reasons}})
            update = dict(model_version=version, run_id=self.run_id, base_model=opts.base_model,
                          adapter_uri=self.registry.path("policy", version).resolve().as_uri(),
                          reward_model_version=rm_version, previous_version=incumbent,
                          gate_passed=gate.passed, gate_reasons=gate.reasons, metrics=dict(self.metrics))
            self.reporter.model_update(action="published", **update)  # type: ignore[arg-type]
            if gate.passed:
                self.registry.set_pointer("policy", "promoted", version)
                self.metrics["promotion_announced"] = float(self._announce_promotion(update))
        if cache is not None:
            cache.close()
        return self._finish("succeeded" if gate.passed else "gated", gate, model_version=version, rm_version=rm_version)

    def _publish_reward(self, rm_dir: Path, rm_gate: GateResult, common_manifest: dict[str, Any],
                        prev_rm: str | None) -> str:
        opts = self.options
        rm_version = self.registry.publish("reward", rm_dir, {
            **common_manifest, "parent_version": prev_rm, "mode": opts.hyper.rm_mode,
            "backbone": opts.reward_base_model,
            "metrics": {k: v for k, v in self.metrics.items() if k.startswith("rm_")},
            "gate": {"passed": rm_gate.passed, "reasons": rm_gate.reasons, "notes": rm_gate.notes}})
        if rm_gate.passed:
            self.registry.set_pointer("reward", "promoted", rm_version)
        return rm_version

    def _announce_promotion(self, update: dict[str, Any]) -> bool:
        """Send `promoted` until the broker acknowledges it (the reporter's publish
        waits for the ack), a bounded number of times. The pointer has already moved,
        so the promotion stands either way: a send that never goes through is logged
        and recorded in the run's metrics, not a failed run, and policy servers still
        find the version by reconciling with the registry."""
        for attempt in range(1, PROMOTION_SEND_ATTEMPTS + 1):
            try:
                self.reporter.model_update(action="promoted", canary_fraction=self.options.canary_fraction,
                                           **update)
                return True
            except KafkaError as error:
                if attempt == PROMOTION_SEND_ATTEMPTS:
                    log.error("policy %s is promoted, but its `promoted` event was not acknowledged after %d "
                              "attempts (%r): policy servers pick it up by reconciling with the registry",
                              update["model_version"], attempt, error)
                    return False
                log.warning("`promoted` event for %s not acknowledged (attempt %d/%d): %r", update["model_version"],
                            attempt, PROMOTION_SEND_ATTEMPTS, error)
                time.sleep(PROMOTION_SEND_BACKOFF_S * attempt)
        return False

    def _judge_rm(self, this_rm: str) -> str | None:
        """The reward model promoted before this run's (for `judge=previous_rm`)."""
        promoted = self.registry.pointer("reward", "promoted")
        if promoted != this_rm:
            return promoted
        return self.registry.manifest("reward", this_rm).get("parent_version")

    def _judge(self, snap: Snapshot, prev_rm_for_judge: str | None, cache: FeatureCache | None) -> Judge:
        gates, hyper = self.options.gates, self.options.hyper
        backbone = self._backbone()
        if gates.judge == "previous_rm" and prev_rm_for_judge:
            model = load_version(self.registry.path("reward", prev_rm_for_judge), backbone, self.device,
                                 hyper.max_length)
            return RewardModelJudge(model, cache)
        judge = FoldEnsembleJudge.fit(backbone, snap.train, gates.judge_folds, hyper.rm_l2, cache)
        self.metrics["judge_fold_accuracy"] = sum(judge.fold_accuracy) / max(1, len(judge.fold_accuracy))
        return judge

    def _record_peak_memory(self) -> None:
        import resource

        self.metrics["job_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _finish(self, state: str, gate: GateResult, *, model_version: str | None, rm_version: str) -> str:
        if not self.ranks.is_main:
            return state
        self._record_peak_memory()
        reason = "; ".join(gate.reasons) if gate.reasons else None
        self.reporter.state(self.run_id, state, reason=reason, metrics=dict(self.metrics),
                            model_version=model_version or rm_version,
                            preference_count=self.preference_count)
        return state
