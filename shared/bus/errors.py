"""How a handler tells the consumer loop what went wrong. Handlers raise; the loop decides."""

from __future__ import annotations


class PoisonMessage(Exception):
    """This message can never succeed (bad JSON, fails its contract, violates a rule).
    It goes to the dead-letter topic at once, with `reason` in its headers."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DependencyUnavailable(Exception):
    """A dependency (Argilla, the registry, an HTTP upstream) is down. The message is
    fine: it is redelivered after a backoff, for as long as it takes, never
    dead-lettered and never committed."""
