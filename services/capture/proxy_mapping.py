"""An OpenAI chat-completions exchange -> ModelOutput: pure functions, no I/O.

Every choice of the response (n>1) becomes a candidate. A streamed response is first
reassembled from its SSE chunks into the shape of a non-streamed one, so both take
the same path. The caller may label the exchange with X-RLHF-* headers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.contracts import (
    Candidate,
    ChatMessage,
    ModelOutput,
    ModelRef,
    output_id_for,
    random_id,
)
from shared.http_input import CONTROL_CHARS, InputRejected

# Request fields worth keeping with each candidate: what shaped the sampling.
GENERATION_KEYS = (
    "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "n", "seed", "stop",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "min_p", "logprobs",
)
LABEL_HEADERS = ("x-rlhf-request-id", "x-request-id", "x-rlhf-conversation-id", "x-rlhf-app", "x-rlhf-tenant",
                 "x-rlhf-tags", "x-rlhf-model-version", "x-rlhf-checkpoint")
MAX_LABEL_CHARS = 200
# Roles the contract does not have, mapped to the nearest one it does.
ROLE_ALIASES = {"developer": "system", "function": "tool"}
KNOWN_ROLES = {"system", "user", "assistant", "tool"}


@dataclass(frozen=True)
class ExchangeLabels:
    """What the caller says about the exchange, from request headers."""

    client_request_id: str | None = None
    conversation_id: str | None = None
    app: str | None = None
    tenant: str | None = None
    tags: list[str] = field(default_factory=list)
    model_version: str = "unknown"
    checkpoint: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], default_version: str) -> "ExchangeLabels":
        """Raises InputRejected naming the header that is too long or not one printable line."""
        for name in LABEL_HEADERS:
            value = headers.get(name)
            if value is not None and (len(value) > MAX_LABEL_CHARS or not re.match(CONTROL_CHARS, value)):
                raise InputRejected(400, name, f"at most {MAX_LABEL_CHARS} printable characters")
        tags = [t.strip() for t in headers.get("x-rlhf-tags", "").split(",") if t.strip()]
        return cls(
            client_request_id=headers.get("x-rlhf-request-id") or headers.get("x-request-id") or None,
            conversation_id=headers.get("x-rlhf-conversation-id") or None,
            app=headers.get("x-rlhf-app") or None,
            tenant=headers.get("x-rlhf-tenant") or None,
            tags=tags,
            model_version=headers.get("x-rlhf-model-version") or default_version,
            checkpoint=headers.get("x-rlhf-checkpoint") or None,
        )


def message_text(content: Any) -> str:
    """OpenAI content is a string, null (tool calls) or a list of parts; keep the text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def conversation(request: Mapping[str, Any]) -> list[ChatMessage]:
    messages = []
    for m in request.get("messages") or []:
        role = ROLE_ALIASES.get(m.get("role"), m.get("role"))
        messages.append(ChatMessage(role=role if role in KNOWN_ROLES else "user",
                                    content=message_text(m.get("content"))))
    return messages


def to_model_output(request: Mapping[str, Any], completion: Mapping[str, Any],
                    labels: ExchangeLabels) -> ModelOutput:
    """Without a caller request id the upstream's completion id is the idempotency key:
    the same response captured twice is the same event."""
    key = labels.client_request_id or completion.get("id") or None
    output_id = output_id_for(key) if key else random_id()
    params = {k: request[k] for k in GENERATION_KEYS if k in request}
    model = ModelRef(name=str(completion.get("model") or request.get("model") or "unknown"),
                     version=labels.model_version, checkpoint=labels.checkpoint)
    choices = sorted(completion.get("choices") or [], key=lambda c: c.get("index", 0))
    return ModelOutput(
        event_id=output_id,
        output_id=output_id,
        conversation_id=labels.conversation_id,
        conversation=conversation(request),
        candidates=[
            Candidate(candidate_id=f"c{c.get('index', i)}",
                      text=message_text((c.get("message") or {}).get("content")),
                      model=model, generation_params=params, finish_reason=c.get("finish_reason"))
            for i, c in enumerate(choices)
        ],
        app=labels.app,
        tenant=labels.tenant,
        tags=labels.tags,
        client_request_id=key,
        source="proxy",
    )


def completion_from_sse(stream: bytes) -> dict[str, Any]:
    """Reassemble `data:` chunks of a chat-completions stream into one completion."""
    completion: dict[str, Any] = {}
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    for line in stream.splitlines():
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            continue
        chunk = json.loads(data)
        completion.setdefault("id", chunk.get("id"))
        completion.setdefault("model", chunk.get("model"))
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            piece = (choice.get("delta") or {}).get("content")
            texts.setdefault(index, [])
            if piece:
                texts[index].append(piece)
            if choice.get("finish_reason"):
                finish[index] = choice["finish_reason"]
    completion["choices"] = [
        {"index": i, "message": {"role": "assistant", "content": "".join(parts)}, "finish_reason": finish.get(i)}
        for i, parts in sorted(texts.items())
    ]
    return completion
