"""Bytes on the wire <-> contracts. Every failure becomes a PoisonMessage whose reason
names the field at fault, because that reason is what an operator reads in the DLQ."""

from __future__ import annotations

from typing import TypeVar

from pydantic import ValidationError

from shared.contracts import Event

from .errors import PoisonMessage

E = TypeVar("E", bound=Event)

MAX_REASON_CHARS = 2000


def describe_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "<root>"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)[:MAX_REASON_CHARS]


def decode(value: bytes | None, contract: type[E]) -> E:
    if value is None:
        raise PoisonMessage("empty value (tombstone) where an event was expected")
    try:
        return contract.model_validate_json(value)
    except ValidationError as error:
        raise PoisonMessage(f"invalid {contract.__name__}: {describe_validation_error(error)}") from error


def encode(event: Event) -> bytes:
    return event.to_json_bytes()
