"""The trainer: preferences in, training runs and model updates out (see run_service)."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from shared.app import App
from shared.auth import token_or_generated
from shared.bus import EventProducer
from shared.contracts import CanaryDecision
from shared.topics import COMPARISONS, MODEL_UPDATES, OUTPUTS, PREFERENCES, TRAINING_RUNS, Topic

from .announcer import PromotionAnnouncer
from .api import runs_router
from .canary import CanaryJudge
from .canary_store import CanaryStore
from .executor import Executor, KubernetesJobExecutor, LocalProcessExecutor
from .handlers import make_store_handler
from .jobs import TriggerJob
from .metrics import TrainerMetrics
from .registry import ModelRegistry
from .reporting import RunReporter
from .runs import RunCoordinator
from .settings import TrainerSettings
from .store import ACTIVE_STATES, PreferenceStore


# updates: to follow `promoted` and `rolled_back`; comparisons: the canary judge's evidence
CONSUMES: tuple[Topic, ...] = (PREFERENCES, OUTPUTS, MODEL_UPDATES, COMPARISONS)
PRODUCES: tuple[Topic, ...] = (TRAINING_RUNS, MODEL_UPDATES)
JUDGE_JOB = "canary-judge"


def make_executor(settings: TrainerSettings, reporter: RunReporter | None = None) -> Executor:
    o = settings.trainer
    if o.executor == "kubernetes":
        # in-cluster config, else a kubeconfig; a Job that fails (OOMKilled, evicted, image pull, deadline)
        # fails its run with the pod's reason, unless the job already reported its own end
        return KubernetesJobExecutor.from_options(o, on_failure=reporter and functools.partial(_fail_run, reporter))
    return LocalProcessExecutor.from_options(o)


def _fail_run(reporter: RunReporter, run_id: str, reason: str) -> None:
    run = reporter.store.get_run(run_id)
    if run is not None and run.state in ACTIVE_STATES:
        reporter.state(run_id, "failed", reason=reason)


def build_coordinator(settings: TrainerSettings, store: PreferenceStore, producer: EventProducer,
                      metrics: TrainerMetrics, executor: Executor | None = None) -> RunCoordinator:
    reporter = RunReporter(store, lambda topic, event: producer.publish(topic, event))
    registry = ModelRegistry(Path(settings.data_dir) / "registry")
    return RunCoordinator(settings, store, registry, reporter, executor or make_executor(settings, reporter), metrics)


def open_store(settings: TrainerSettings) -> PreferenceStore:
    return PreferenceStore(Path(settings.data_dir) / "trainer" / "store.sqlite")


def build_judge(settings: TrainerSettings, coordinator: RunCoordinator, metrics: TrainerMetrics) -> CanaryJudge:
    """The canary judge on the coordinator's registry: `graduated` through the run
    reporter (waits for the ack), a rollback through the coordinator's (pointer,
    marks, `rolled_back`)."""
    registry, reporter = coordinator.registry, coordinator.reporter

    def publish_graduated(version: str, decision: CanaryDecision) -> None:
        manifest = registry.manifest("policy", version)
        reporter.model_update(
            action="graduated", model_version=version, run_id=manifest.get("run_id"),
            base_model=str(manifest.get("base_model") or settings.trainer.base_model),
            adapter_uri=registry.path("policy", version).resolve().as_uri(),
            reward_model_version=manifest.get("reward_model_version"), previous_version=decision.stable_version,
            gate_passed=True, gate_reasons=[f"canary judge: {decision.reason}"], metrics=decision.numbers(),
            decision=decision)

    store = CanaryStore(Path(settings.data_dir) / "trainer" / "canary.sqlite")
    return CanaryJudge(store, registry, settings.trainer.canary_judge, publish_graduated,
                       lambda version, reason, decision: coordinator.rollback(version, reason, decision), metrics)


def run_service(settings: TrainerSettings, stop: threading.Event, *, registry: CollectorRegistry | None = None,
                on_started=None, executor: Executor | None = None) -> None:  # type: ignore[no-untyped-def]
    """Preferences and outputs in (stored once each), runs out: the trigger and the
    promotion outbox on the App's scheduler, the run API on its HTTP server."""
    with App("trainer", settings, registry=registry, on_started=on_started) as app:
        metrics = TrainerMetrics(app.registry)
        store = app.own(open_store(settings))
        coordinator = build_coordinator(settings, store, app.producer, metrics, executor)
        app.on_stop(coordinator.close, settings.consumer.shutdown_grace_s)
        coordinator.recover()
        trigger = TriggerJob(store, coordinator, settings.trainer, metrics)
        announcer = PromotionAnnouncer(store, coordinator.registry, coordinator.reporter,
                                       settings.trainer.canary_fraction, settings.trainer.base_model, metrics)
        app.add_periodic("training-trigger", settings.trainer.check_interval_s, trigger.check)
        app.add_periodic("promotion-outbox", settings.trainer.check_interval_s, announcer.reconcile)
        judge, on_judged = None, None
        if settings.trainer.canary_judge.enabled:
            judge = build_judge(settings, coordinator, metrics)
            app.on_stop(judge.close)
            app.add_periodic(JUDGE_JOB, settings.trainer.canary_judge.check_interval_s, judge.look)
            on_judged = lambda: app.run_soon(JUDGE_JOB)  # noqa: E731
        api_token = token_or_generated(settings.trainer.api_token, Path(settings.data_dir) / "trainer" / "api-token",
                                       "RLHF_TRAINER__API_TOKEN")
        app.add_routes(runs_router(coordinator, api_token))
        app.add_consumer(list(CONSUMES),
                         make_store_handler(store, metrics, coordinator.registry, judge, on_judged),
                         group_id=settings.trainer.group_id,
                         produces=list(PRODUCES))
        app.run(stop)


def main(stop: threading.Event) -> None:
    run_service(TrainerSettings(), stop)
