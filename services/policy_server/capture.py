"""Served answers -> rlhf.outputs, without ever holding or failing the user's request.

The send does not wait for the broker (the producer's buffer is bounded and a full one
fails at once): capture can fail, and is counted, the request cannot. One output per
request; an A/B pick is one output too, with the served answer and the other
version's answer to the same prompt as its two candidates.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shared.bus import EventProducer
from shared.contracts import ABPair, Candidate, ModelOutput, ModelRef, derived_id
from shared.topics import OUTPUTS

from .metrics import PolicyServerMetrics
from .models import Generation

if TYPE_CHECKING:
    from .api import ChatRequest

log = logging.getLogger(__name__)

AB_TAG = "canary-ab"
# The served answer keeps the id every output has; the other one gets its own. Neither
# says which side is the canary: the served one is the canary for its share of requests
# and the stable version for the rest, so the ids are blind as annotators must be.
SERVED_ID, OTHER_ID = "choice-0", "ab-1"


class Capture:
    def __init__(self, producer: EventProducer | None, metrics: PolicyServerMetrics, served_model_name: str,
                 max_tokens_default: int) -> None:
        self._producer = producer
        self._metrics = metrics
        self._served_model_name = served_model_name
        self._max_tokens_default = max_tokens_default

    def wanted(self, request: ChatRequest) -> bool:
        """Capture is on and the request did not opt out (`store: false`)."""
        return self._producer is not None and request.store is not False

    def send(self, request: ChatRequest, completion_id: str, version: str, generations: list[Generation]) -> None:
        """The served answers as they are: one candidate per choice."""
        if self._producer is None:
            return
        if request.store is False:
            self._metrics.captured.labels("not_stored").inc()
            return
        self._send(self._event(request, completion_id,
                               [(f"choice-{i}", version, g) for i, g in enumerate(generations)]), completion_id)

    def send_pair(self, request: ChatRequest, completion_id: str, served: str, answer: Generation, other: str,
                  other_answer: Generation, canary: str, separate: bool = False) -> None:
        """An A/B pick: the served answer and the other version's, and which is which.
        `separate`: the request's own answers went out as their output already, so the
        pair gets an id of its own (derived from the completion: a resend is the same)."""
        ids = {served: SERVED_ID, other: OTHER_ID}
        stable = other if served == canary else served
        ab = ABPair(canary_version=canary, stable_version=stable, canary_candidate_id=ids[canary],
                    stable_candidate_id=ids[stable])
        self._send(self._event(request, completion_id, [(SERVED_ID, served, answer), (OTHER_ID, other, other_answer)],
                               ab, id_kind="policy-ab-pair" if separate else "policy-completion"), completion_id)

    def _event(self, request: ChatRequest, completion_id: str, answers: list[tuple[str, str, Generation]],
               ab: ABPair | None = None, id_kind: str = "policy-completion") -> ModelOutput:
        output_id = derived_id(id_kind, completion_id)
        params = {"temperature": request.temperature, "top_p": request.top_p,
                  "max_tokens": request.max_tokens or self._max_tokens_default}
        return ModelOutput(
            event_id=output_id, output_id=output_id, conversation=list(request.messages),
            candidates=[Candidate(candidate_id=candidate_id, text=g.text, finish_reason=g.finish_reason,
                                  model=ModelRef(name=self._served_model_name, version=version),
                                  generation_params=params)
                        for candidate_id, version, g in answers],
            client_request_id=completion_id if id_kind == "policy-completion" else f"{completion_id}:ab",
            source="policy_server",
            tags=["policy-server", AB_TAG] if ab else ["policy-server"], ab=ab,
        )

    def _send(self, event: ModelOutput, completion_id: str) -> None:
        assert self._producer is not None
        try:
            future = self._producer.send(OUTPUTS, event)
        except Exception:  # noqa: BLE001 - a full buffer or a closed producer must not fail the user
            self._metrics.captured.labels("error").inc()
            log.exception("capture of %s failed", completion_id)
            return
        future.add_callback(lambda _md: self._metrics.captured.labels("ok").inc())
        future.add_errback(lambda _exc: self._metrics.captured.labels("error").inc())
