"""The services `rlhf-loop run NAME` knows, by name. Modules are imported lazily so a
light service never pays for torch."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

SERVICES: dict[str, str] = {
    "event-logger": "services.event_logger.service",
    "capture": "services.capture.service",
    "sampler": "services.sampler.service",
}

ServiceMain = Callable[[threading.Event], None]


class UnknownService(KeyError):
    def __str__(self) -> str:
        return f"unknown service {self.args[0]!r}; known: {', '.join(sorted(SERVICES))}"


def load(name: str) -> ServiceMain:
    try:
        module_name = SERVICES[name]
    except KeyError:
        raise UnknownService(name) from None
    main: ServiceMain = importlib.import_module(module_name).main
    return main
