"""Scheduled work on APScheduler: the collector's poll, and webhook registration."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from apscheduler.schedulers.background import BackgroundScheduler
from kafka.errors import KafkaError

from shared.bus import DependencyUnavailable

from .argilla_api import unavailable_as_dependency
from .collector import Collector
from .datasets import RankingDatasets
from .webhooks import WebhookListener, register_webhook

log = logging.getLogger(__name__)

COLLECT_JOB = "collect"
REGISTER_JOB = "register-webhook"


def start_collector_schedule(collector: Collector, interval_s: float) -> BackgroundScheduler:
    """Poll now and then every `interval_s`; never two polls at once, a late poll is
    folded into the next rather than queued up."""
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_job(collector.poll_safely, "interval", seconds=interval_s, id=COLLECT_JOB,
                      max_instances=1, coalesce=True, next_run_time=datetime.now(timezone.utc))
    scheduler.start()
    return scheduler


def collect_now(scheduler: BackgroundScheduler) -> None:
    """Bring the next poll forward to now (a webhook arrived). A poll already running
    finishes first; bursts of deliveries fold into one poll."""
    job = scheduler.get_job(COLLECT_JOB)
    if job is not None:
        job.modify(next_run_time=datetime.now(timezone.utc))


def schedule_webhook_registration(scheduler: BackgroundScheduler, datasets: RankingDatasets,
                                  listener: WebhookListener, url: str, retry_s: float = 30.0) -> None:
    """Register the webhook in Argilla now, and retry until it works (Argilla may be
    down at start; polling covers the meantime). The collect job takes the records the
    listener heard about at the start of every run (an edited ranking is found only so,
    or by the collector's rescan)."""
    job = scheduler.get_job(COLLECT_JOB)
    if job is not None:
        job.modify(kwargs={**job.kwargs, "hinted": listener.take_records})

    def register() -> None:
        try:
            listener.secret = unavailable_as_dependency(lambda: register_webhook(datasets.client, url),
                                                        "webhook registration")
        except (DependencyUnavailable, KafkaError, OSError) as error:
            log.warning("webhook registration failed, retrying in %.0f s: %s", retry_s, error)
            return
        log.info("Argilla webhook registered: %s", url)
        scheduler.remove_job(REGISTER_JOB)

    scheduler.add_job(register, "interval", seconds=retry_s, id=REGISTER_JOB, max_instances=1,
                      coalesce=True, next_run_time=datetime.now(timezone.utc))
