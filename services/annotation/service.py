"""The annotation service: Argilla (given or embedded), the pusher on the consumer
loop, the collector on the App's scheduler, the webhook listener on its own port."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import argilla as rg
from prometheus_client import CollectorRegistry

from shared.app import App
from shared.models.reward_scorer import RewardScorer, registry_locator
from shared.observability.probes import cached, http_ok
from shared.topics import COMPARISONS, PREFERENCES, RANKING_TASKS, RANKINGS

from .argilla_api import ArgillaRest
from .collector import Collector
from .datasets import RankingDatasets
from .embedded_ui import CREDENTIALS_FILE, argilla_dir, publish_endpoint
from .jobs import ARGILLA_UP_JOB, COLLECT_JOB, REGISTER_JOB, REGISTER_RETRY_S, webhook_registration
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


def argilla_endpoint(settings: AnnotationSettings, app: App) -> ArgillaEndpoint:
    """The configured Argilla, or an embedded one when no URL is set (laptop, `up`)."""
    options = settings.annotation
    if options.argilla_url:
        if not options.api_key.get_secret_value():
            raise ValueError("RLHF_ANNOTATION__API_KEY is required with RLHF_ANNOTATION__ARGILLA_URL")
        return ArgillaEndpoint(options.argilla_url, options.api_key.get_secret_value())
    from shared.embedded.argilla import EmbeddedArgilla

    embedded = EmbeddedArgilla(argilla_dir(settings.data_dir), workspace=options.workspace,
                               annotators=tuple(options.annotators))
    app.own(embedded)
    embedded.supervise()  # Redis, the server or the worker dying is restarted, as a pod would be
    log.info("embedded Argilla at %s; annotator logins in %s", embedded.url,
             embedded.data_dir / CREDENTIALS_FILE)
    # Where `rlhf-loop up` and the demo's simulated annotators find the UI (see embedded_ui).
    app.on_stop(publish_endpoint(embedded.data_dir, embedded.url, options.comparison_dataset).unlink,
                missing_ok=True)
    return ArgillaEndpoint(embedded.url, embedded.api_key)


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
    """Ranking tasks in (pushed to Argilla in one bulk request per polled batch);
    rankings, preferences and canary comparisons out, from the collector's scheduled
    poll, woken at once by Argilla's webhooks."""
    settings = settings or AnnotationSettings()
    options = settings.annotation
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    with App("annotation", settings, registry=registry) as app:
        metrics = AnnotationMetrics(app.registry)
        endpoint = argilla_endpoint(settings, app)
        datasets = RankingDatasets(
            lambda: rg.Argilla(api_url=endpoint.url, api_key=endpoint.api_key, timeout=int(options.request_timeout_s)),
            options,
        )
        rest = app.own(ArgillaRest(endpoint.url, endpoint.api_key, options.request_timeout_s))
        state = app.own(CollectorState(Path(settings.data_dir) / "annotation" / "collector.sqlite"))
        collector = Collector(datasets, rest, app.producer, state, metrics, guideline_version=options.version,
                              overlap_s=options.poll_overlap_s, page_size=options.page_size,
                              rescan_interval_s=options.rescan_interval_s, rescan_window_s=options.rescan_window_s)
        app.produces(RANKINGS, PREFERENCES, COMPARISONS)
        argilla_up = argilla_probe(endpoint, metrics)
        app.add_readiness("argilla", argilla_up)
        app.add_periodic(ARGILLA_UP_JOB, 5, argilla_up)
        hinted = None
        if options.webhooks:
            listener = WebhookListener(on_event=lambda: app.run_soon(COLLECT_JOB))
            served = app.add_routes(listener.router(), host=options.webhook_host, port=options.webhook_port)
            assert served is not None
            url = lambda: options.webhook_url or f"http://127.0.0.1:{served.port}{WEBHOOK_PATH}"  # noqa: E731
            app.add_periodic(REGISTER_JOB, REGISTER_RETRY_S, webhook_registration(
                datasets, listener, url, done=lambda: app.remove_periodic(REGISTER_JOB)), run_at_start=True)
            hinted = listener.take_records  # an edited ranking is found so, or by the collector's rescan
        app.add_periodic(COLLECT_JOB, options.poll_interval_s, functools.partial(collector.poll_safely, hinted=hinted),
                         run_at_start=True)
        suggest = None
        if options.suggest_rankings:
            scorer = RewardScorer(registry_locator(options.registry_dir or Path(settings.data_dir) / "registry"))
            suggest = RankingSuggester(
                scorer, lambda k: str(datasets.ensure(k).settings.questions[RANK_QUESTION].id))
        # comparison tasks are kept in the collector's state (their records name no version)
        pusher = Pusher(datasets, rest, options.version, metrics, batched=True, suggest=suggest, task_store=state)
        app.add_consumer([RANKING_TASKS], pusher, group_id=options.group_id, sink=pusher)
        app.run(stop)
