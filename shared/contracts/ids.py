"""Deterministic identifiers.

Every step of the loop derives the id of what it produces from the id of what it
consumed. A redelivered message therefore yields the same task, ranking or
preference id, and the consumer downstream can drop it as a duplicate. That is
what makes at-least-once delivery safe end to end.
"""

from __future__ import annotations

import hashlib
import uuid

# Fixed namespace for every uuid5 in the project; changing it would break idempotence
# across versions, so it is a constant, not a setting.
LOOP_NAMESPACE = uuid.UUID("6c1f8a52-4b1e-5d7a-9e0b-2f3c4d5e6f70")
_NAMESPACE_BYTES = LOOP_NAMESPACE.bytes


def derived_id(kind: str, *parts: str) -> str:
    """A stable id for a `kind` of thing made from `parts` (uuid5, hex string).

    The kind is part of the hash so an output id and a task id built from the same
    parts never collide.
    """
    if not parts:
        raise ValueError("derived_id needs at least one part")
    if any("\x1f" in part for part in parts):
        raise ValueError("id parts must not contain the unit separator")
    return _uuid5(kind + "\x1f" + "\x1f".join(parts))


def _uuid5(name: str) -> str:
    """`str(uuid.uuid5(LOOP_NAMESPACE, name))`, without building a UUID object: the
    ingest path derives three or four ids per request and the object's checks and
    formatting were ~2/3 of each (tests/unit/test_contracts.py compares the two)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8"), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def random_id() -> str:
    """A fresh random id, for things that have no natural key (e.g. a training run)."""
    return str(uuid.uuid4())
