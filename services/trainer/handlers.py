"""Consumer handlers: store preferences, captured outputs and canary comparisons;
follow promotions and rollbacks.

Storing is the whole effect of a preference or an output (no events out);
duplicates are ignored by id, so a redelivery is a no-op. A `rolled_back` model
update moves the registry's promoted pointer back to the last good version, so the
next run continues from that one (idempotent: a redelivered rollback finds the
pointer already moved). A `promoted` one is recorded as seen on the topic, which is
what tells the announcer (announcer.py) that a promotion's event went out, and
starts the canary judge's clock (canary.py). A `CanaryComparison` is the judge's:
stored once per compared prompt, then the judge looks at once (`on_judged`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import Outgoing, PoisonMessage
from shared.contracts import CanaryComparison, Event, ModelOutput, ModelUpdate, Preference

from .canary import CanaryJudge
from .metrics import TrainerMetrics
from .registry import ModelRegistry
from .store import PreferenceStore


def make_store_handler(store: PreferenceStore, metrics: TrainerMetrics | None = None,
                       registry: ModelRegistry | None = None, judge: CanaryJudge | None = None,
                       on_judged: Callable[[], None] | None = None,
                       ) -> Callable[[Event, ConsumerRecord], Iterable[Outgoing]]:
    def handle(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        if isinstance(event, CanaryComparison):
            if judge is None:
                raise PoisonMessage("this trainer runs no canary judge (RLHF_TRAINER__CANARY_JUDGE__ENABLED=false)")
            if judge.on_comparison(event) and on_judged is not None:
                on_judged()
            return ()
        if isinstance(event, ModelUpdate):
            if event.action == "promoted":  # read back from the topic: the announcer's receipt
                store.mark_announced(event.model_version)
                if judge is not None:
                    judge.on_update(event)
            if event.action == "rolled_back" and registry is not None:
                if event.model_version not in registry.versions("policy"):
                    raise PoisonMessage(f"model_version: {event.model_version!r} is not in the registry")
                registry.rollback("policy", event.model_version)
            return ()
        if isinstance(event, Preference):
            kind, new = "preference", store.add_preference(event)
            if new and metrics is not None:
                metrics.new_preferences.inc()
                metrics.preferences_by_source.labels(event.source).inc()
        elif isinstance(event, ModelOutput):
            kind, new = "output", store.add_output(event)
        else:
            raise PoisonMessage(f"trainer does not handle {type(event).__name__}")
        if metrics is not None:
            metrics.stored.labels(kind, "new" if new else "duplicate").inc()
        return ()

    return handle
