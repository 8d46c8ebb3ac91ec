"""Consumer handlers: store preferences and captured outputs. Storing is the whole
effect (no events out); duplicates are ignored by id, so a redelivery is a no-op."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import Outgoing, PoisonMessage
from shared.contracts import Event, ModelOutput, Preference

from .metrics import TrainerMetrics
from .store import PreferenceStore


def make_store_handler(store: PreferenceStore, metrics: TrainerMetrics | None = None
                       ) -> Callable[[Event, ConsumerRecord], Iterable[Outgoing]]:
    def handle(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        if isinstance(event, Preference):
            kind, new = "preference", store.add_preference(event)
            if new and metrics is not None:
                metrics.new_preferences.inc()
        elif isinstance(event, ModelOutput):
            kind, new = "output", store.add_output(event)
        else:
            raise PoisonMessage(f"trainer does not handle {type(event).__name__}")
        if metrics is not None:
            metrics.stored.labels(kind, "new" if new else "duplicate").inc()
        return ()

    return handle
