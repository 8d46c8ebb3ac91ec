from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from shared.settings import ServiceSettings
from shared.topics import LOOP_TOPICS


class EventLoggerOptions(BaseModel):
    topics: list[str] = Field(
        default_factory=lambda: [t.name for t in LOOP_TOPICS],
        description="topics to tail (env: JSON list)",
    )
    group_id: str = "event-logger"

    @field_validator("topics")
    @classmethod
    def _known_topics(cls, topics: list[str]) -> list[str]:
        known = {t.name for t in LOOP_TOPICS}
        unknown = [t for t in topics if t not in known]
        if unknown:
            raise ValueError(f"unknown topics {unknown}; known: {sorted(known)}")
        if not topics:
            raise ValueError("at least one topic")
        return topics


class EventLoggerSettings(ServiceSettings):
    """Env: RLHF_EVENT_LOGGER__TOPICS, RLHF_EVENT_LOGGER__GROUP_ID, plus the common RLHF_* ones."""

    event_logger: EventLoggerOptions = EventLoggerOptions()
