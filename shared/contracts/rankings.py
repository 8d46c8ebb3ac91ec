"""rlhf.rankings: what annotators decided about a task."""

from __future__ import annotations

from pydantic import AwareDatetime, Field, model_validator

from .base import Contract, Event, utc_now
from .ids import derived_id


def ranking_id_for(task_id: str, revision: str) -> str:
    """A ranking is identified by its task and the revision of its responses
    (e.g. the record's last update time), so a re-poll of the same submission is a
    duplicate while a later edit is a new ranking."""
    return derived_id("ranking", task_id, revision)


class CandidateRank(Contract):
    candidate_id: str = Field(min_length=1, max_length=128)
    rank: int = Field(ge=1, le=16, description="1 is best; equal ranks are ties")


class AnnotatorRanking(Contract):
    """One annotator's ranking of every candidate of a task."""

    annotator_id: str = Field(min_length=1, max_length=128)
    ranks: list[CandidateRank] = Field(min_length=2, max_length=16)
    submitted_at: AwareDatetime
    ratings: dict[str, int] = Field(default_factory=dict)
    rationale: str | None = Field(default=None, max_length=20_000)

    @model_validator(mode="after")
    def _one_rank_per_candidate(self) -> "AnnotatorRanking":
        ids = [r.candidate_id for r in self.ranks]
        if len(set(ids)) != len(ids):
            raise ValueError("ranks: each candidate may be ranked once")
        return self


class RankingResult(Event):
    """All submitted rankings of one task, at one revision."""

    ranking_id: str = Field(min_length=1, max_length=128)
    task_id: str = Field(min_length=1, max_length=128)
    output_id: str = Field(min_length=1, max_length=128)
    conversation_id: str | None = Field(default=None, max_length=200)
    record_id: str = Field(min_length=1, max_length=128, description="the Argilla record")
    guideline_version: str = Field(min_length=1, max_length=64)
    annotations: list[AnnotatorRanking] = Field(min_length=1, max_length=100)
    completed_at: AwareDatetime = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _consistent(self) -> "RankingResult":
        if self.event_id != self.ranking_id:
            raise ValueError("event_id must equal ranking_id")
        return self

    @property
    def partition_key(self) -> str:
        return self.conversation_id or self.output_id
