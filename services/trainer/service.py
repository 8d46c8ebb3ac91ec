"""Wiring only: settings -> store, registry, coordinator, trigger -> consumer service
with the run API on its HTTP server."""

from __future__ import annotations

import functools
import threading
from contextlib import ExitStack
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.runner import ConsumerSpec, run_consumer_service
from shared.auth import token_or_generated
from shared.bus import EventProducer
from shared.bus.admin import ensure_topics
from shared.contracts import ModelOutput, ModelUpdate, Preference, TrainingRunStatus
from shared.observability.metrics import BusMetrics
from shared.observability.probes import wait_until_reachable
from shared.topics import Topic

from .announcer import PromotionAnnouncer
from .api import TrainerHttpServer
from .executor import Executor, KubernetesJobExecutor, LocalProcessExecutor
from .handlers import make_store_handler
from .jobs import TriggerJob, start_scheduler
from .metrics import TrainerMetrics
from .registry import ModelRegistry
from .reporting import RunReporter
from .runs import RunCoordinator
from .settings import TrainerSettings
from .store import ACTIVE_STATES, PreferenceStore


def topics(settings: TrainerSettings) -> dict[str, Topic]:
    o = settings.trainer
    return {"preferences": Topic(o.preferences_topic, Preference), "outputs": Topic(o.outputs_topic, ModelOutput),
            "runs": Topic(o.runs_topic, TrainingRunStatus, 1), "updates": Topic(o.updates_topic, ModelUpdate, 1)}


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
    reporter = RunReporter(store, lambda topic, event: producer.publish(topic, event), settings.trainer)
    registry = ModelRegistry(Path(settings.data_dir) / "registry")
    return RunCoordinator(settings, store, registry, reporter, executor or make_executor(settings, reporter), metrics)


def open_store(settings: TrainerSettings) -> PreferenceStore:
    return PreferenceStore(Path(settings.data_dir) / "trainer" / "store.sqlite")


def run_service(settings: TrainerSettings, stop: threading.Event, *, registry: CollectorRegistry | None = None,
                on_started=None, executor: Executor | None = None) -> None:  # type: ignore[no-untyped-def]
    registry = registry if registry is not None else CollectorRegistry()
    metrics = TrainerMetrics(registry)
    t = topics(settings)
    wait_until_reachable(settings.kafka)
    if settings.consumer.create_topics:
        ensure_topics(settings.kafka, [(x.name, x.partitions) for x in t.values()])
    with ExitStack() as stack:
        store = open_store(settings)
        stack.callback(store.close)
        producer = EventProducer(settings.kafka, BusMetrics.of(registry))  # run status events: metered
        stack.callback(producer.close)
        coordinator = build_coordinator(settings, store, producer, metrics, executor)
        stack.callback(coordinator.close, settings.consumer.shutdown_grace_s)
        coordinator.recover()
        trigger = TriggerJob(store, coordinator, settings.trainer, metrics)
        announcer = PromotionAnnouncer(store, coordinator.registry, coordinator.reporter,
                                       settings.trainer.canary_fraction, settings.trainer.base_model, metrics)
        scheduler = start_scheduler(trigger, settings.trainer.check_interval_s, announcer)
        stack.callback(scheduler.shutdown, wait=False)
        api_token = token_or_generated(settings.trainer.api_token, Path(settings.data_dir) / "trainer" / "api-token",
                                       "RLHF_TRAINER__API_TOKEN")
        spec = ConsumerSpec(name="trainer", group_id=settings.trainer.group_id,
                            topics=[t["preferences"], t["outputs"], t["updates"]],
                            handler=make_store_handler(store, metrics, coordinator.registry),
                            produces=[t["runs"], t["updates"]])
        run_consumer_service(spec, settings, stop, registry=registry, on_started=on_started,
                             http_server=functools.partial(TrainerHttpServer, coordinator=coordinator, token=api_token))


def main(stop: threading.Event) -> None:
    run_service(TrainerSettings(), stop)
