"""Wiring only: settings -> spec -> runner."""

from __future__ import annotations

import threading

from services.runner import ConsumerSpec, run_consumer_service
from shared.topics import by_name

from .handlers import log_event
from .settings import EventLoggerSettings


def build_spec(settings: EventLoggerSettings) -> ConsumerSpec:
    options = settings.event_logger
    return ConsumerSpec(
        name="event-logger",
        group_id=options.group_id,
        topics=[by_name(name) for name in options.topics],
        handler=log_event,
    )


def main(stop: threading.Event) -> None:
    settings = EventLoggerSettings()
    run_consumer_service(build_spec(settings), settings, stop)
