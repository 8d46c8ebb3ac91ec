"""Wiring only: settings -> Argilla (given or embedded) -> pusher on the consumer loop,
collector on a schedule -> runner."""

from __future__ import annotations

import json
import logging
import threading
from contextlib import ExitStack
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import argilla as rg
from prometheus_client import CollectorRegistry

from services.runner import ConsumerSpec, run_consumer_service
from shared.bus import EventProducer
from shared.models.reward_scorer import RewardScorer, registry_locator
from shared.observability.metrics import BusMetrics
from shared.observability.probes import cached, http_ok
from shared.topics import PREFERENCES, RANKING_TASKS, RANKINGS

from .argilla_api import ArgillaRest
from .collector import Collector
from .datasets import RankingDatasets
from .jobs import collect_now, schedule_webhook_registration, start_collector_schedule
from .metrics import AnnotationMetrics
from .pusher import Pusher
from .schema import RANK_QUESTION
from .suggestions import RankingSuggester
from .settings import AnnotationSettings
from .state import CollectorState
from .webhooks import PATH as WEBHOOK_PATH
from .webhooks import WebhookListener

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArgillaEndpoint:
    url: str
    api_key: str


def argilla_endpoint(settings: AnnotationSettings, stack: ExitStack) -> ArgillaEndpoint:
    """The configured Argilla, or an embedded one when no URL is set (laptop, `up`)."""
    options = settings.annotation
    if options.argilla_url:
        if not options.api_key.get_secret_value():
            raise ValueError("RLHF_ANNOTATION__API_KEY is required with RLHF_ANNOTATION__ARGILLA_URL")
        return ArgillaEndpoint(options.argilla_url, options.api_key.get_secret_value())
    from shared.embedded.argilla import EmbeddedArgilla

    embedded = EmbeddedArgilla(Path(settings.data_dir) / "argilla", workspace=options.workspace,
                               annotators=tuple(options.annotators))
    stack.enter_context(embedded)
    embedded.supervise()  # Redis, the server or the worker dying is restarted, as a pod would be
    log.info("embedded Argilla at %s; annotator logins in %s", embedded.url,
             embedded.data_dir / "credentials.json")
    # Where `rlhf-loop up` and the demo's simulated annotators find the UI (no secrets here).
    endpoint_file = embedded.data_dir / "endpoint.json"
    endpoint_file.write_text(json.dumps({"url": embedded.url}))
    stack.callback(endpoint_file.unlink, missing_ok=True)
    return ArgillaEndpoint(embedded.url, embedded.api_key)


def build_spec(settings: AnnotationSettings, pusher: Pusher,
               argilla_up: Callable[[], bool] | None = None) -> ConsumerSpec:
    return ConsumerSpec(
        name="annotation",
        group_id=settings.annotation.group_id,
        topics=[RANKING_TASKS],
        handler=pusher,
        produces=[RANKINGS, PREFERENCES],
        sink=pusher,  # one bulk request per polled batch
        readiness={"argilla": argilla_up} if argilla_up else {},
    )


def argilla_probe(endpoint: ArgillaEndpoint, metrics: AnnotationMetrics) -> Callable[[], bool]:
    """Argilla's status endpoint, cached; every fresh answer updates the up gauge (what
    the status line and alerts read)."""
    check = http_ok(f"{endpoint.url.rstrip('/')}/api/v1/status", {"X-Argilla-Api-Key": endpoint.api_key})
    return cached(check, cache_s=2.0, on_result=lambda up: metrics.argilla_up.set(1 if up else 0))


# Per-request INFO lines from the SDK, httpx and every scheduled poll would drown the
# service's own log; their warnings and errors still show.
CHATTY_LOGGERS = ("httpx", "argilla.sdk", "apscheduler.executors.default", "apscheduler.scheduler")


def main(stop: threading.Event, settings: AnnotationSettings | None = None,
         registry: CollectorRegistry | None = None) -> None:
    settings = settings or AnnotationSettings()
    options = settings.annotation
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    registry = registry if registry is not None else CollectorRegistry()
    metrics = AnnotationMetrics(registry)
    with ExitStack() as stack:
        endpoint = argilla_endpoint(settings, stack)
        datasets = RankingDatasets(
            lambda: rg.Argilla(api_url=endpoint.url, api_key=endpoint.api_key, timeout=int(options.request_timeout_s)),
            options,
        )
        rest = ArgillaRest(endpoint.url, endpoint.api_key, options.request_timeout_s)
        stack.callback(rest.close)
        producer = EventProducer(settings.kafka, BusMetrics.of(registry))  # the collector's: metered
        stack.callback(producer.close)
        state = CollectorState(Path(settings.data_dir) / "annotation" / "collector.sqlite")
        stack.callback(state.close)
        collector = Collector(datasets, rest, producer, state, metrics, guideline_version=options.version,
                              overlap_s=options.poll_overlap_s, page_size=options.page_size,
                              rescan_interval_s=options.rescan_interval_s, rescan_window_s=options.rescan_window_s)
        scheduler = start_collector_schedule(collector, options.poll_interval_s)
        stack.callback(scheduler.shutdown, wait=True)
        argilla_up = argilla_probe(endpoint, metrics)
        scheduler.add_job(argilla_up, "interval", seconds=5, id="argilla-up", max_instances=1, coalesce=True)
        if options.webhooks:
            listener = WebhookListener(options.webhook_host, options.webhook_port,
                                       on_event=lambda: collect_now(scheduler)).start()
            stack.callback(listener.stop)
            url = options.webhook_url or f"http://127.0.0.1:{listener.port}{WEBHOOK_PATH}"
            schedule_webhook_registration(scheduler, datasets, listener, url)
        suggest = None
        if options.suggest_rankings:
            scorer = RewardScorer(registry_locator(options.registry_dir or Path(settings.data_dir) / "registry"))
            suggest = RankingSuggester(
                scorer, lambda k: str(datasets.ensure(k).settings.questions[RANK_QUESTION].id))
        pusher = Pusher(datasets, rest, options.version, metrics, batched=True, suggest=suggest)
        run_consumer_service(build_spec(settings, pusher, argilla_up), settings, stop, registry=registry)
