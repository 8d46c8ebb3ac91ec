"""The HTTP request and response bodies of the ingest API.

Deliberately separate from the `ModelOutput` contract: the API may grow friendlier
shapes (optional candidate ids, a client timestamp) without the event changing, and
the event may change without breaking clients.
"""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared.contracts.conversation import FeedbackKind, Role
from shared.contracts.outputs import MAX_CANDIDATES


class _Body(BaseModel):
    # Unknown fields are an error, so a misspelt field is a 422 rather than lost data.
    model_config = ConfigDict(extra="forbid")


class MessageIn(_Body):
    role: Role
    content: str = Field(max_length=200_000)


class ModelIn(_Body):
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=200)
    checkpoint: str | None = Field(default=None, max_length=500)


class CandidateIn(_Body):
    id: str | None = Field(default=None, min_length=1, max_length=128, description="default: c0, c1, ...")
    text: str = Field(max_length=200_000)
    model: ModelIn
    generation_params: dict[str, Any] = Field(default_factory=dict)
    finish_reason: str | None = Field(default=None, max_length=64)


class FeedbackIn(_Body):
    kind: FeedbackKind
    candidate_id: str | None = Field(default=None, max_length=128)
    edited_text: str | None = Field(default=None, max_length=200_000)
    comment: str | None = Field(default=None, max_length=10_000)


def candidate_ids(candidates: list[CandidateIn]) -> list[str]:
    """The id each candidate gets: its own, or `c<index>`."""
    return [c.id or f"c{i}" for i, c in enumerate(candidates)]


class OutputIn(_Body):
    """One chatbot exchange: the conversation so far and 1..16 answers to its last turn."""

    client_request_id: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="idempotency key: the same id always maps to the same event id",
    )
    conversation_id: str | None = Field(default=None, max_length=200)
    messages: list[MessageIn] = Field(min_length=1, max_length=500)
    candidates: list[CandidateIn] = Field(min_length=1, max_length=MAX_CANDIDATES)
    feedback: list[FeedbackIn] = Field(default_factory=list, max_length=50)
    app: str | None = Field(default=None, max_length=100)
    tenant: str | None = Field(default=None, max_length=100)
    tags: list[str] = Field(default_factory=list, max_length=50)
    generated_at: AwareDatetime | None = Field(
        default=None, description="when the chatbot answered (default: when it was received)"
    )

    @model_validator(mode="after")
    def _consistent_ids(self) -> "OutputIn":
        ids = candidate_ids(self.candidates)
        if len(set(ids)) != len(ids):
            raise ValueError("candidates: ids must be unique")
        unknown = sorted({f.candidate_id for f in self.feedback if f.candidate_id} - set(ids))
        if unknown:
            raise ValueError(f"feedback: candidate_id {unknown} names no candidate (known: {ids})")
        return self


class BatchIn(_Body):
    items: list[OutputIn] = Field(min_length=1)


class Accepted(BaseModel):
    event_id: str


class BatchAccepted(BaseModel):
    event_ids: list[str] = Field(description="one per item, in request order")
