"""Preferences a user gave without an annotator: their own edits and regenerates.

An end user who rewrites an answer has said "this, not that"; one who thumbs an answer
down, regenerates and thumbs the new answer up has ranked the two. For the tenants
that opted in (`FeedbackPreferenceSettings.enabled_tenants`), the sampler turns that
feedback into `Preference` events directly, whether or not the output is also sampled
for human ranking:

- `edit` of candidate X with a non-empty text that differs from X's (ignoring
  surrounding whitespace) -> the edited text (a candidate of model `user-edit`, X's
  version) over X, `source="edit"`;
- `thumbs_down` on X, a `regenerate` (unattributed, or of X) and a `thumbs_up` on
  another candidate Y -> Y over X, `source="regenerate"`. A candidate voted both up
  and down says nothing and is left out.

Every id derives from the output (and the pair), so a redelivered output yields the
same events and the trainer, which dedupes by `preference_id`, stores each once.
The functions here are pure: what to do with the result (redaction, counting once,
emitting) is the handler's.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.contracts import (
    Candidate,
    ModelOutput,
    ModelRef,
    Preference,
    PreferenceSource,
    derived_id,
    feedback_preference_id_for,
)

EDIT_MODEL = "user-edit"
GUIDELINE_VERSION = "user-feedback"
EVERY_TENANT = "*"
MAX_CANDIDATE_ID = 128  # Candidate.candidate_id's max_length


class FeedbackPreferenceSettings(BaseModel):
    enabled_tenants: list[str] = Field(
        default_factory=list,
        description="tenants whose users' edits and regenerates become preferences; '*' = every output "
                    "(also those without a tenant); empty = off")
    edit_weight: float = Field(default=1.0, gt=0.0, le=100.0, description="reward-model weight of an edit pair")
    regenerate_weight: float = Field(default=0.5, gt=0.0, le=100.0,
                                     description="reward-model weight of a regenerate pair")

    def opted_in(self, tenant: str | None) -> bool:
        return EVERY_TENANT in self.enabled_tenants or (tenant is not None and tenant in self.enabled_tenants)


def feedback_task_id_for(output_id: str, source: str) -> str:
    """The task a feedback pair belongs to: one per output *and source*. The trainer
    keeps one ranking revision per task; with one task for both sources an output's
    regenerate pairs would supersede its edit pairs (or the other way round)."""
    return derived_id("feedback-task", output_id, source)


def feedback_ranking_id_for(output_id: str, source: str) -> str:
    return derived_id("feedback-ranking", output_id, source)


def feedback_preferences(output: ModelOutput, settings: FeedbackPreferenceSettings) -> list[Preference]:
    """The preferences `output`'s feedback states, in a fixed order; [] when its
    tenant has not opted in."""
    if not settings.opted_in(output.tenant):
        return []
    return [*_edit_preferences(output, settings.edit_weight),
            *_regenerate_preferences(output, settings.regenerate_weight)]


def _edit_preferences(output: ModelOutput, weight: float) -> list[Preference]:
    by_id = {c.candidate_id: c for c in output.candidates}
    taken = set(by_id)
    seen: dict[str, list[str]] = {}  # candidate id -> its distinct edited texts so far
    preferences = []
    for feedback in output.feedback:
        if feedback.kind != "edit" or feedback.edited_text is None:
            continue
        candidate_id = feedback.candidate_id
        if candidate_id is None:  # unattributed: only unambiguous with a single answer
            if len(output.candidates) != 1:
                continue
            candidate_id = output.candidates[0].candidate_id
        original = by_id[candidate_id]
        edited = feedback.edited_text
        texts = seen.setdefault(candidate_id, [])
        if not edited.strip() or edited.strip() == original.text.strip() or edited in texts:
            continue
        texts.append(edited)
        chosen = Candidate(candidate_id=_edited_id(candidate_id, len(texts), taken), text=edited,
                           model=ModelRef(name=EDIT_MODEL, version=original.model.version))
        taken.add(chosen.candidate_id)
        preferences.append(_preference(output, "edit", chosen, original, weight))
    return preferences


def _edited_id(candidate_id: str, n: int, taken: set[str]) -> str:
    """`<id>-edited` (`-edited-2`, ... for further edits of the same answer); a derived
    id when that would be too long or is already another candidate's."""
    name = f"{candidate_id}-edited" + (f"-{n}" if n > 1 else "")
    if len(name) > MAX_CANDIDATE_ID or name in taken:
        return derived_id("edited-candidate", candidate_id, str(n))
    return name


def _regenerate_preferences(output: ModelOutput, weight: float) -> list[Preference]:
    def voted(kind: str) -> list[str]:
        return list(dict.fromkeys(f.candidate_id for f in output.feedback if f.kind == kind and f.candidate_id))

    ups, downs = voted("thumbs_up"), voted("thumbs_down")
    conflicted = set(ups) & set(downs)
    regenerated = {f.candidate_id for f in output.feedback if f.kind == "regenerate"}
    by_id = {c.candidate_id: c for c in output.candidates}
    return [_preference(output, "regenerate", by_id[up], by_id[down], weight)
            for down in downs if down not in conflicted and regenerated & {None, down}
            for up in ups if up not in conflicted]


def _preference(output: ModelOutput, source: PreferenceSource, chosen: Candidate, rejected: Candidate,
                weight: float) -> Preference:
    preference_id = feedback_preference_id_for(output.output_id, source, chosen.candidate_id, rejected.candidate_id)
    return Preference(
        event_id=preference_id, preference_id=preference_id,
        ranking_id=feedback_ranking_id_for(output.output_id, source),
        task_id=feedback_task_id_for(output.output_id, source),
        output_id=output.output_id, conversation_id=output.conversation_id, prompt=list(output.conversation),
        chosen=chosen, rejected=rejected, margin=1.0, agreement=1.0, annotator_count=1,
        guideline_version=GUIDELINE_VERSION, source=source, weight=weight,
        # the capture time, not now: a redelivery must not look like a newer revision
        revision_at=output.captured_at,
    )
