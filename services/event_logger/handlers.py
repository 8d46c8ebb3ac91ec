from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import Outgoing
from shared.contracts import Event

log = logging.getLogger("rlhf.events")

# The ids that trace an event back through the loop, in loop order.
TRACE_FIELDS = ("output_id", "task_id", "ranking_id", "preference_id", "run_id", "model_version")


def summarize(event: Event, record: ConsumerRecord) -> dict[str, object]:
    """The one-line audit record of an event: where it sits, what, when, its lineage ids."""
    summary: dict[str, object] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "type": type(event).__name__,
        "event_id": event.event_id,
        "created_at": event.created_at.isoformat(),
    }
    for field in TRACE_FIELDS:
        value = getattr(event, field, None)
        if value is not None:
            summary[field] = value
    for field in ("state", "stage", "action", "outcome", "canary_version", "source"):
        value = getattr(event, field, None)
        if value is not None:
            summary[field] = value
    return summary


def log_event(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
    log.info(json.dumps(summarize(event, record), sort_keys=True))
    return ()
