"""rlhf.outputs: what a chatbot answered, as captured from production traffic."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field, model_validator

from .base import Event, utc_now
from .comparisons import ABPair
from .conversation import Candidate, ChatMessage, UserFeedback
from .ids import derived_id

OutputSource = Literal["api", "proxy", "sdk", "policy_server", "replay"]

MAX_CANDIDATES = 16


def output_id_for(client_request_id: str) -> str:
    """The output id a client request id maps to: a resent request keeps its id."""
    return derived_id("output", client_request_id)


class ModelOutput(Event):
    """A conversation and 1..N candidate answers to its last turn.

    `event_id` equals `output_id`: an output is captured once, so its event *is* it.

    Schema 2 added `ab` (optional): the output is an A/B comparison of a canary
    against the stable version, one candidate each (see contracts/comparisons.py).
    """

    SCHEMA_VERSION: ClassVar[int] = 2

    output_id: str = Field(min_length=1, max_length=128)
    conversation_id: str | None = Field(default=None, max_length=200)
    conversation: list[ChatMessage] = Field(min_length=1, max_length=500)
    candidates: list[Candidate] = Field(min_length=1, max_length=MAX_CANDIDATES)
    feedback: list[UserFeedback] = Field(default_factory=list, max_length=50)
    app: str | None = Field(default=None, max_length=100)
    tenant: str | None = Field(default=None, max_length=100)
    tags: list[str] = Field(default_factory=list, max_length=50)
    client_request_id: str | None = Field(default=None, max_length=200)
    source: OutputSource = "api"
    captured_at: AwareDatetime = Field(default_factory=utc_now)
    ab: ABPair | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ModelOutput":
        if self.event_id != self.output_id:
            raise ValueError("event_id must equal output_id")
        ids = [c.candidate_id for c in self.candidates]
        if len(set(ids)) != len(ids):
            raise ValueError("candidates: candidate_id values must be unique")
        unknown = {f.candidate_id for f in self.feedback if f.candidate_id} - set(ids)
        if unknown:
            raise ValueError(f"feedback: unknown candidate_id {sorted(unknown)}")
        if self.ab is not None:
            self.ab.check_candidates(ids)
        return self

    @property
    def partition_key(self) -> str:
        return self.conversation_id or self.output_id
