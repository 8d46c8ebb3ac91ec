"""Trainer options: `RLHF_TRAINER__<OPTION>` in the environment (nested with `__`,
e.g. `RLHF_TRAINER__GATES__ALPHA=0.01`).

The defaults are production defaults for SmolLM2-class models; `services/catalog.py`
(`DEMO_ENV`) shortens them so a laptop completes a cycle in minutes. Why each
measured value is what it is: docs/trainer.md ("Choosing the defaults").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

from shared.settings import ServiceSettings

from .sequential import SequentialTestOptions


class Hyperparameters(BaseModel):
    """What a run trains with; copied into every manifest."""

    # reward model
    rm_mode: Literal["head", "finetune"] = Field(
        default="head", description="head: linear head on the frozen base backbone; finetune: TRL RewardTrainer")
    rm_layers: int = Field(default=0, ge=0, description="backbone layers the head reads (0 = all)")
    rm_l2: float = Field(default=1.0, ge=0, description="L2 penalty of the head (standardised features)")
    rm_epochs: float = Field(default=1.0, gt=0, description="finetune mode")
    rm_batch_size: int = Field(default=8, ge=1, description="finetune mode")
    rm_learning_rate: float = Field(default=1e-4, gt=0, description="finetune mode")
    max_length: int = Field(default=256, ge=16, description="token cap for prompt+answer")
    # policy: where it starts and what KL is measured against
    continue_from_promoted: bool = Field(default=True, description="start from the promoted adapter, not the base")
    reference: Literal["base", "previous"] = Field(
        default="base", description="KL reference: the base model, or the promoted version (a trust region)")
    policy_batch_size: int = Field(default=8, ge=1)
    policy_learning_rate: float = Field(default=5e-4, gt=0)
    temperature: float = Field(default=0.7, gt=0, description="sampling temperature of rollouts and evaluation")
    response_length: int = Field(default=48, ge=1, description="tokens generated per rollout / evaluation answer")
    # ppo
    ppo_episodes: int = Field(default=96, ge=1, description="PPO total episodes (prompts rolled out)")
    ppo_epochs: int = Field(default=2, ge=1)
    ppo_mini_batches: int = Field(default=2, ge=1)
    kl_coef: float = Field(default=0.02, ge=0, description="KL penalty (PPO kl_coef; GRPO/RLOO beta)")
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = Field(
        default=None, description="a fixed penalty for answers cut at the cap; unset: the reward model decides")
    # grpo / rloo
    num_generations: int = Field(default=4, ge=2, description="answers per prompt (GRPO/RLOO groups)")
    group_steps: int = Field(default=12, ge=1, description="GRPO/RLOO optimiser steps")
    # dpo
    dpo_steps: int = Field(default=10, ge=1)
    dpo_beta: float = Field(default=0.1, gt=0)
    # lora
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_target_modules: list[str] | str = Field(default="all-linear")
    seed: int = 0
    # TRL's own options on top of ours, by TRL's names (docs/trainer.md, "TRL options"): a section per
    # trainer, e.g. RLHF_TRAINER__HYPER__TRL='{"ppo": {"cliprange": 0.1}, "reward": {"weight_decay": 0.01}}'
    trl: dict[Literal["reward", "ppo", "rloo", "grpo", "dpo"], dict[str, Any]] = Field(
        default_factory=dict, description="TRL config options per trainer (reward, ppo, rloo, grpo, dpo), passed"
                                          " to RewardConfig/PPOConfig/... over ours; unknown names are refused")


class GateThresholds(BaseModel):
    """A candidate that misses one of these is published but not promoted."""

    min_rm_accuracy: float = Field(default=0.6, ge=0, le=1.01)
    rm_accuracy_epsilon: float = Field(default=0.02, ge=0, description="allowed drop vs previous RM")
    min_rm_heldout_pairs: int = Field(default=30, ge=1, description="fewer held-out pairs: the RM is not gated on"
                                                                   " accuracy (too few to judge)")
    judge: Literal["ensemble", "previous_rm"] = Field(
        default="ensemble", description="who judges candidate vs incumbent: heads trained on disjoint folds of the"
                                        " training pairs, or the previously promoted reward model")
    judge_folds: int = Field(default=3, ge=2)
    eval_prompts: int = Field(default=64, ge=1, description="held-out prompts per evaluation (at most)")
    min_eval_prompts: int = Field(default=32, ge=1, description="fewer held-out prompts: no promotion")
    alpha: float = Field(default=0.05, gt=0, le=1, description="one-sided sign-test level: candidate beats incumbent")
    min_win_rate: float = Field(default=0.55, ge=0, le=1.01, description="effect size: wins + ties/2 over prompts")
    max_kl: float = Field(default=10.0, ge=0, description="mean sequence KL to the reference")
    max_degenerate_rate: float = Field(default=0.2, ge=0, le=1)


class CanaryJudgeOptions(SequentialTestOptions):
    """Env: RLHF_TRAINER__CANARY_JUDGE__MARGIN=0.1, ..._MAX_DURATION_S=21600, ..."""

    enabled: bool = Field(default=True, description="off: canaries graduate only by the policy servers' own timer"
                          " (RLHF_POLICY_SERVER__CANARY_GRADUATE_AFTER_S)")
    max_duration_s: float = Field(default=6 * 3600.0, gt=0, description="a canary undecided this long gets"
                                  " `on_timeout`")
    on_timeout: Literal["graduate", "keep", "rollback"] = Field(
        default="graduate", description="what an undecided canary gets at max_duration_s (no annotator judged"
        " enough pairs): graduate (the old timer's behaviour), keep serving it as a canary, or roll it back")
    check_interval_s: float = Field(default=5.0, gt=0, description="how often the judge looks (and re-sends)")


class TrainerOptions(BaseModel):
    group_id: str = "trainer"

    threshold: int = Field(default=500, ge=1, description="new preferences that trigger a run")
    min_interval_s: float = Field(default=3600.0, ge=0, description="least time between run starts")
    check_interval_s: float = Field(default=30.0, gt=0, description="how often the trigger job looks")
    min_preferences: int = Field(default=4, ge=2, description="a manual run needs at least this many")
    heldout_fraction: float = Field(default=0.2, gt=0, lt=1, description="share of prompts held out (by hash)")
    # The training window (docs/trainer.md, "Training window"): a run trains on the preferences new since
    # the last finished run plus a recency-weighted replay sample of older ones, so its cost is bounded.
    train_window_new_max: int = Field(
        default=10_000, ge=0, description="most new training pairs a run takes, the newest first (0 = all new);"
                                          " new pairs over the cap join the replay pool")
    replay_size: int = Field(
        default=5_000, ge=0, description="older training pairs replayed per run, sampled (deterministic per run"
                                         " id); a pool no larger than this is taken whole")
    replay_half_life: float = Field(
        default=10_000, ge=0, description="recency weighting of the replay sample, in stored preferences: a pair"
                                          " this many rows older is half as likely to be drawn (0 = uniform)")
    heldout_sample_max: int = Field(
        default=2_000, ge=0, description="most held-out pairs a run evaluates on: a stable sample (the same pairs"
                                         " in every run, by hash) of all held-out pairs (0 = all)")
    eval_prompts_file: str = Field(default="", description="JSONL of {'messages': [...]}: a fixed evaluation set"
                                                           " used beside the held-out traffic prompts")
    lock_stale_s: float = Field(default=120.0, gt=0, description="a run lock whose heartbeat is older is reclaimed")

    algorithm: Literal["ppo", "rloo", "grpo", "dpo"] = "ppo"
    base_model: str = Field(default="", description="policy base (path); empty: MODELS_DIR/smollm2-135m-instruct")
    reward_base_model: str = Field(default="", description="reward backbone (head mode) or the model a finetuned"
                                   " reward model starts from; empty: the base model")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(default=0, ge=0, description="CPU threads of a training job; 0 = torch's default")
    # Distributed training (docs/trainer.md, "More than one process"): the run's job is started under
    # `accelerate launch`; the reward model and the policy train on every process, rank 0 alone evaluates,
    # writes the registry and reports.
    num_processes: int = Field(default=1, ge=1, description="training processes per node (GPUs per node; on a"
                                                          " CPU, gloo processes); 1: no launcher")
    num_nodes: int = Field(default=1, ge=1, description="nodes of a run (executor=kubernetes only: an indexed Job"
                                                       " with one pod per node)")
    accelerate_config_file: str = Field(default="", description="accelerate config (FSDP, DeepSpeed ZeRO...) passed"
                                        " to `accelerate launch --config_file`; empty: DDP")
    rendezvous_port: int = Field(default=29500, ge=1, le=65535, description="rank 0's port for the process group")
    executor: Literal["local", "kubernetes"] = "local"
    kubernetes_image: str = "rlhf-loop:latest"
    kubernetes_namespace: str = "rlhf"
    # executor=kubernetes: the Job of each run (docs/trainer.md, "Executors")
    kubernetes_gpus: int = Field(default=0, ge=0, description="nvidia.com/gpu requested and limited per Job")
    kubernetes_cpu: str = Field(default="2", description="CPU request of a Job's pod")
    kubernetes_memory: str = Field(default="8Gi", description="memory request of a Job's pod")
    kubernetes_memory_limit: str = Field(default="16Gi", description="memory limit (over it: OOMKilled, run failed)")
    kubernetes_node_selector: dict[str, str] = Field(default_factory=dict, description="JSON, e.g."
                                                     ' {"nvidia.com/gpu.present": "true"}')
    kubernetes_tolerations: list[dict[str, Any]] = Field(default_factory=list, description="JSON list of tolerations")
    kubernetes_ttl_s: int = Field(default=86400, ge=0, description="ttlSecondsAfterFinished of a finished Job")
    kubernetes_deadline_s: int = Field(default=43200, ge=0, description="activeDeadlineSeconds of a Job (0: none)")
    kubernetes_job_subdomain: str = Field(default="rlhf-trainer-jobs", description="headless Service the pods of"
                                          " a multi-node Job resolve each other through (deploy/k8s/base)")
    kubernetes_job_service_account: str = Field(default="rlhf-loop", description="the Job pod's ServiceAccount"
                                                " (it never calls the API)")
    canary_fraction: float = Field(default=0.1, ge=0, le=1, description="traffic share a promoted policy starts with")
    api_token: SecretStr | None = Field(
        default=None, description="bearer token of the run API (/v1/runs, /v1/rollback); unset: generated once"
                                  " into DATA_DIR/trainer/api-token (0600)")

    hyper: Hyperparameters = Hyperparameters()
    gates: GateThresholds = GateThresholds()
    canary_judge: CanaryJudgeOptions = CanaryJudgeOptions()

    @model_validator(mode="after")
    def _nodes_need_kubernetes(self) -> "TrainerOptions":
        if self.num_nodes > 1 and self.executor != "kubernetes":
            raise ValueError(f"num_nodes={self.num_nodes} needs executor=kubernetes (an indexed Job, one pod per"
                             " node); the local executor runs on this machine: use num_processes")
        return self


class TrainerSettings(ServiceSettings):
    """Env: RLHF_TRAINER__..., plus the common RLHF_* ones."""

    trainer: TrainerOptions = TrainerOptions()

    @model_validator(mode="after")
    def _default_model_paths(self) -> "TrainerSettings":
        # Relative to the data dir, not the working directory: `up --data-dir X` keeps all state under X.
        if not self.trainer.base_model:
            self.trainer.base_model = self.default_base_model
        if not self.trainer.reward_base_model:
            self.trainer.reward_base_model = self.trainer.base_model
        if self.trainer.eval_prompts_file:
            self.trainer.eval_prompts_file = str(Path(self.trainer.eval_prompts_file))
        return self
