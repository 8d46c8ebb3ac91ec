"""The HTTP request and response bodies of the ingest API.

Deliberately separate from the `ModelOutput` contract: the API may grow friendlier
shapes (optional candidate ids, a client timestamp) without the event changing, and
the event may change without breaking clients.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.contracts.conversation import FeedbackKind, Role
from shared.contracts.outputs import MAX_CANDIDATES
from shared.http_input import CONTROL_CHARS, check_json_value

# Ids and labels travel into event ids, Kafka keys, Argilla metadata and log lines:
# one printable line each.
Label = Annotated[str, Field(pattern=CONTROL_CHARS)]
MAX_PARAMS_DEPTH = 8


class _Body(BaseModel):
    # Unknown fields are an error, so a misspelt field is a 422 rather than lost data.
    model_config = ConfigDict(extra="forbid")


class MessageIn(_Body):
    role: Role
    content: str = Field(max_length=200_000)


class ModelIn(_Body):
    name: Label = Field(min_length=1, max_length=200)
    version: Label = Field(min_length=1, max_length=200)
    checkpoint: Label | None = Field(default=None, max_length=500)


class CandidateIn(_Body):
    id: Label | None = Field(default=None, min_length=1, max_length=128, description="default: c0, c1, ...")
    text: str = Field(max_length=200_000)
    model: ModelIn
    generation_params: dict[str, Any] = Field(default_factory=dict, max_length=64)
    finish_reason: Label | None = Field(default=None, max_length=64)

    @field_validator("generation_params")
    @classmethod
    def _plain_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_value(value, max_depth=MAX_PARAMS_DEPTH, field="generation_params")
        return value


class FeedbackIn(_Body):
    kind: FeedbackKind
    candidate_id: Label | None = Field(default=None, max_length=128)
    edited_text: str | None = Field(default=None, max_length=200_000)
    comment: str | None = Field(default=None, max_length=10_000)


def candidate_ids(candidates: list[CandidateIn]) -> list[str]:
    """The id each candidate gets: its own, or `c<index>`."""
    return [c.id or f"c{i}" for i, c in enumerate(candidates)]


class OutputIn(_Body):
    """One chatbot exchange: the conversation so far and 1..16 answers to its last turn."""

    client_request_id: Label | None = Field(
        default=None, min_length=1, max_length=200,
        description="idempotency key: the same id always maps to the same event id "
                    "(without one, the event id is derived from the request's content)",
    )
    conversation_id: Label | None = Field(default=None, max_length=200)
    messages: list[MessageIn] = Field(min_length=1, max_length=500)
    candidates: list[CandidateIn] = Field(min_length=1, max_length=MAX_CANDIDATES)
    feedback: list[FeedbackIn] = Field(default_factory=list, max_length=50)
    app: Label | None = Field(default=None, max_length=100)
    tenant: Label | None = Field(default=None, max_length=100)
    tags: list[Annotated[Label, Field(max_length=100)]] = Field(default_factory=list, max_length=50)
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
