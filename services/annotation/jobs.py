"""Scheduled work of the annotation service (on the App's scheduler): the collector's
poll, Argilla's health, and the webhook's registration until it succeeds."""

from __future__ import annotations

import logging
from collections.abc import Callable

from kafka.errors import KafkaError

from shared.bus import DependencyUnavailable

from .argilla_api import unavailable_as_dependency
from .datasets import RankingDatasets
from .webhooks import WebhookListener, register_webhook

log = logging.getLogger(__name__)

COLLECT_JOB = "collect"
REGISTER_JOB = "register-webhook"
ARGILLA_UP_JOB = "argilla-up"
REGISTER_RETRY_S = 30.0


def webhook_registration(datasets: RankingDatasets, listener: WebhookListener, url: Callable[[], str],
                         done: Callable[[], None]) -> Callable[[], None]:
    """The job that registers the webhook in Argilla (which may be down at start;
    polling covers the meantime) and calls `done` once it worked. `url` is read when it
    runs: the listener's port is known only once the App serves it."""

    def register() -> None:
        try:
            listener.secret = unavailable_as_dependency(lambda: register_webhook(datasets.client, url()),
                                                        "webhook registration")
        except (DependencyUnavailable, KafkaError, OSError) as error:
            log.warning("webhook registration failed, retrying in %.0f s: %s", REGISTER_RETRY_S, error)
            return
        log.info("Argilla webhook registered: %s", url())
        done()

    return register
