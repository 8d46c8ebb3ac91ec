"""Event contracts: one frozen pydantic model per topic of the loop."""

from .base import Contract, Event, utc_now
from .comparisons import ABPair, CanaryComparison, ComparisonOutcome, comparison_id_for
from .conversation import Candidate, ChatMessage, FeedbackKind, ModelRef, UserFeedback
from .ids import derived_id, random_id
from .model_updates import CanaryDecision, ModelUpdate, model_update_id_for
from .outputs import ModelOutput, output_id_for
from .preferences import (
    Preference,
    PreferenceSource,
    feedback_preference_id_for,
    pair_key_for,
    preference_id_for,
)
from .rankings import AnnotatorRanking, CandidateRank, RankingResult, ranking_id_for
from .tasks import RankingTask, SamplingDecision, task_id_for
from .training import TrainingRunStatus, run_event_id_for

__all__ = [
    "ABPair",
    "CanaryComparison",
    "CanaryDecision",
    "ComparisonOutcome",
    "PreferenceSource",
    "comparison_id_for",
    "feedback_preference_id_for",
    "AnnotatorRanking",
    "Candidate",
    "CandidateRank",
    "ChatMessage",
    "Contract",
    "Event",
    "FeedbackKind",
    "ModelOutput",
    "ModelRef",
    "ModelUpdate",
    "Preference",
    "RankingResult",
    "RankingTask",
    "SamplingDecision",
    "TrainingRunStatus",
    "UserFeedback",
    "derived_id",
    "model_update_id_for",
    "output_id_for",
    "pair_key_for",
    "preference_id_for",
    "random_id",
    "ranking_id_for",
    "run_event_id_for",
    "task_id_for",
    "utc_now",
]
