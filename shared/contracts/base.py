"""The base every event on the bus shares."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Contract(BaseModel):
    """A frozen value object: unknown fields are rejected so a typo in a producer
    shows up as a validation error instead of silently lost data."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


class Event(Contract):
    """An event on a topic.

    `event_id` identifies the event itself (consumers dedupe on it);
    `schema_version` lets a consumer refuse or upgrade payloads it does not know;
    `created_at` is when the producer built the event.
    Subclasses pin `SCHEMA_VERSION` and carry the ids that trace them back.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    event_id: str = Field(min_length=1, max_length=128)
    schema_version: int = Field(ge=1)
    created_at: AwareDatetime = Field(default_factory=utc_now)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        # A newer producer's payload may carry fields this consumer would drop;
        # refusing it sends it to the dead-letter topic instead of losing data.
        if version > cls.SCHEMA_VERSION:
            raise ValueError(f"schema_version {version} is newer than this reader's {cls.SCHEMA_VERSION}")
        return version

    def __init__(self, **data: Any) -> None:
        data.setdefault("schema_version", self.SCHEMA_VERSION)
        super().__init__(**data)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")
