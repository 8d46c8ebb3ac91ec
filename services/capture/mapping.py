"""HTTP body -> ModelOutput: pure functions, no I/O."""

from __future__ import annotations

import hashlib

from shared.contracts import (
    Candidate,
    ChatMessage,
    ModelOutput,
    ModelRef,
    UserFeedback,
    derived_id,
    output_id_for,
    utc_now,
)
from shared.contracts.outputs import OutputSource

from .schema import OutputIn, candidate_ids


def to_model_output(body: OutputIn, source: OutputSource = "api") -> ModelOutput:
    """The event a request becomes. The output id is derived from the client request id,
    or without one from the request's content, so a resent request (after a timeout or a
    503 whose write did land) yields the same event id and downstream dedupes it."""
    output_id = output_id_for(body.client_request_id) if body.client_request_id else content_output_id(body)
    ids = candidate_ids(body.candidates)
    return ModelOutput(
        event_id=output_id,
        output_id=output_id,
        conversation_id=body.conversation_id,
        conversation=[ChatMessage(role=m.role, content=m.content) for m in body.messages],
        candidates=[
            Candidate(
                candidate_id=cid,
                text=c.text,
                model=ModelRef(name=c.model.name, version=c.model.version, checkpoint=c.model.checkpoint),
                generation_params=c.generation_params,
                finish_reason=c.finish_reason,
            )
            for cid, c in zip(ids, body.candidates)
        ],
        feedback=[
            UserFeedback(kind=f.kind, candidate_id=f.candidate_id, edited_text=f.edited_text, comment=f.comment)
            for f in body.feedback
        ],
        app=body.app,
        tenant=body.tenant,
        tags=body.tags,
        client_request_id=body.client_request_id,
        source=source,
        captured_at=body.generated_at or utc_now(),
    )


def content_output_id(body: OutputIn) -> str:
    """The id of a request without a client request id: a hash of everything it says.
    Two identical exchanges sent without ids are one output (they would teach the
    reward model nothing twice)."""
    digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    return derived_id("output-content", digest)
