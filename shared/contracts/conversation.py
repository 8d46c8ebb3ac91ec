"""The pieces a chatbot exchange is made of: messages, candidate answers, feedback."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import Contract

Role = Literal["system", "user", "assistant", "tool"]


class ChatMessage(Contract):
    role: Role
    content: str = Field(max_length=200_000)


class ModelRef(Contract):
    """Which model produced a candidate: the name, the version the registry knows it
    by, and optionally the training checkpoint (candidates may come from several)."""

    name: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=200)
    checkpoint: str | None = Field(default=None, max_length=500)


class Candidate(Contract):
    """One answer to the conversation."""

    candidate_id: str = Field(min_length=1, max_length=128)
    text: str = Field(max_length=200_000)
    model: ModelRef
    generation_params: dict[str, Any] = Field(default_factory=dict)
    finish_reason: str | None = Field(default=None, max_length=64)


FeedbackKind = Literal["thumbs_up", "thumbs_down", "edit", "regenerate"]


class UserFeedback(Contract):
    """An explicit signal from the end user, the strongest hint that an output is
    worth a human ranking."""

    kind: FeedbackKind
    candidate_id: str | None = Field(default=None, max_length=128)
    edited_text: str | None = Field(default=None, max_length=200_000)
    comment: str | None = Field(default=None, max_length=10_000)
