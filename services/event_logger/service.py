"""The event logger: every loop topic it is told to follow, logged one line per event."""

from __future__ import annotations

import threading

from shared.app import App
from shared.topics import by_name

from .handlers import log_event
from .settings import EventLoggerSettings


def declare(app: App, settings: EventLoggerSettings) -> None:
    options = settings.event_logger
    app.add_consumer([by_name(name) for name in options.topics], log_event, group_id=options.group_id)


def main(stop: threading.Event) -> None:
    settings = EventLoggerSettings()
    with App("event-logger", settings) as app:
        declare(app, settings)
        app.run(stop)
