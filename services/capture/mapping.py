"""HTTP body -> ModelOutput: pure functions, no I/O."""

from __future__ import annotations

from shared.contracts import (
    Candidate,
    ChatMessage,
    ModelOutput,
    ModelRef,
    UserFeedback,
    output_id_for,
    random_id,
    utc_now,
)
from shared.contracts.outputs import OutputSource

from .schema import OutputIn, candidate_ids


def to_model_output(body: OutputIn, source: OutputSource = "api") -> ModelOutput:
    """The event a request becomes. With a client request id the output id is derived
    from it, so a resent request yields the same event id and downstream dedupes it."""
    output_id = output_id_for(body.client_request_id) if body.client_request_id else random_id()
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
