"""An Argilla record (REST JSON, with responses) as a RankingResult. Pure functions.

Ranks are read from the REST payload because the SDK drops the rank numbers, and
with them the ties. Responses that are not `submitted` are ignored (drafts are
unfinished, discarded ones are the annotator saying "cannot rank this"); a submitted
response that does not rank exactly the task's candidates is malformed and skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from shared.contracts import AnnotatorRanking, CandidateRank, RankingResult, RankingTask, ranking_id_for

from .records import task_from_metadata
from .schema import RANK_QUESTION, RATING_PREFIX, RATIONALE_QUESTION, answer_field


@dataclass(frozen=True)
class Collected:
    record_id: str
    revision: str
    task: RankingTask | None = None
    result: RankingResult | None = None
    discarded: str | None = None  # why nothing was produced: a metric label
    malformed: int = 0  # submitted responses skipped as malformed
    annotator_ids: tuple[str, ...] = field(default=())
    revision_at: datetime | None = None  # see revision_time


def parse_time(value: str) -> datetime:
    """Argilla serialises naive UTC."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def revision_of(responses: list[dict[str, Any]]) -> str:
    """Identifies one state of a record's submitted responses: the same responses give
    the same ranking id on every poll, an edit or a new annotator a new one."""
    parts = sorted(f"{r.get('user_id')}@{r.get('updated_at')}" for r in responses)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def revision_time(record: dict[str, Any]) -> datetime:
    """When the record reached its current state: the latest update of the record or of
    any of its responses. Argilla does not touch a completed record when an annotator
    edits their response, so the responses' own times are what move on a re-ranking;
    discarded and draft responses count too (discarding one is a change)."""
    stamps = [str(record.get("updated_at") or record["inserted_at"])]
    stamps += [str(r.get("updated_at") or r["inserted_at"]) for r in record.get("responses") or []
               if r.get("updated_at") or r.get("inserted_at")]
    return max(parse_time(stamp) for stamp in stamps)


def annotator_ranking(response: dict[str, Any], task: RankingTask) -> AnnotatorRanking | None:
    values = response.get("values") or {}
    ranked = (values.get(RANK_QUESTION) or {}).get("value")
    slots = {answer_field(i): c.candidate_id for i, c in enumerate(task.candidates, start=1)}
    if not isinstance(ranked, list):
        return None
    try:
        ranks = [CandidateRank(candidate_id=slots[item["value"]], rank=int(item["rank"])) for item in ranked]
        if {r.candidate_id for r in ranks} != set(slots.values()):
            return None
        ratings = {
            name[len(RATING_PREFIX):]: int(answer["value"])
            for name, answer in values.items()
            if name.startswith(RATING_PREFIX) and isinstance(answer, dict) and answer.get("value") is not None
        }
        rationale = (values.get(RATIONALE_QUESTION) or {}).get("value") or None
        return AnnotatorRanking(
            annotator_id=str(response["user_id"]),
            ranks=ranks,
            submitted_at=parse_time(str(response.get("updated_at") or response["inserted_at"])),
            ratings=ratings,
            rationale=rationale,
        )
    except (KeyError, TypeError, ValueError, ValidationError):
        return None


TaskLookup = Callable[[str], RankingTask | None]  # record id (= task id) -> the task kept elsewhere


def collect(record: dict[str, Any], default_guideline_version: str, task_lookup: TaskLookup | None = None) -> Collected:
    """Everything one completed record yields (see module doc). `task_lookup`: where
    the task is found when the record does not carry it (a blind comparison record,
    whose task is in the collector's state); without it, the record's metadata."""
    record_id = str(record.get("external_id") or record["id"])
    submitted = [r for r in record.get("responses") or [] if r.get("status") == "submitted"]
    revision = revision_of(submitted)
    if task_lookup is not None:
        task = task_lookup(record_id)
        if task is None:
            return Collected(record_id, revision, discarded="unknown_task")
    else:
        task = task_from_metadata(record.get("metadata"))
    if task is None:
        return Collected(record_id, revision, discarded="not_a_task")
    if not submitted:
        return Collected(record_id, revision, task, discarded="no_submitted_response")
    annotations = []
    for response in sorted(submitted, key=lambda r: str(r.get("user_id"))):
        ranking = annotator_ranking(response, task)
        if ranking is not None:
            annotations.append(ranking)
    malformed = len(submitted) - len(annotations)
    if not annotations:
        return Collected(record_id, revision, task, discarded="malformed", malformed=malformed)
    version = str((record.get("metadata") or {}).get("guideline_version") or default_guideline_version)
    ranking_id = ranking_id_for(task.task_id, revision)
    result = RankingResult(
        event_id=ranking_id,
        ranking_id=ranking_id,
        task_id=task.task_id,
        output_id=task.output_id,
        conversation_id=task.conversation_id,
        record_id=str(record["id"]),
        guideline_version=version,
        annotations=annotations,
        completed_at=parse_time(str(record.get("updated_at") or record["inserted_at"])),
    )
    return Collected(record_id, revision, task, result, malformed=malformed,
                     annotator_ids=tuple(a.annotator_id for a in annotations), revision_at=revision_time(record))
