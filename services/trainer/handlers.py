"""Consumer handlers: store preferences and captured outputs; follow rollbacks.

Storing is the whole effect of a preference or an output (no events out);
duplicates are ignored by id, so a redelivery is a no-op. A `rolled_back` model
update moves the registry's promoted pointer back to the last good version, so the
next run continues from that one (idempotent: a redelivered rollback finds the
pointer already moved). A `promoted` one is recorded as seen on the topic, which is
what tells the announcer (announcer.py) that a promotion's event went out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import Outgoing, PoisonMessage
from shared.contracts import Event, ModelOutput, ModelUpdate, Preference

from .metrics import TrainerMetrics
from .registry import ModelRegistry
from .store import PreferenceStore


def make_store_handler(store: PreferenceStore, metrics: TrainerMetrics | None = None,
                       registry: ModelRegistry | None = None,
                       ) -> Callable[[Event, ConsumerRecord], Iterable[Outgoing]]:
    def handle(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        if isinstance(event, ModelUpdate):
            if event.action == "promoted":  # read back from the topic: the announcer's receipt
                store.mark_announced(event.model_version)
            if event.action == "rolled_back" and registry is not None:
                if event.model_version not in registry.versions("policy"):
                    raise PoisonMessage(f"model_version: {event.model_version!r} is not in the registry")
                registry.rollback("policy", event.model_version)
            return ()
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
