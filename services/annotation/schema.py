"""The Argilla dataset layout of a ranking task, and its check against a live dataset.

The blind canary comparisons have a dataset of their own (`comparison_dataset`) with
the k=2 layout and its own guidelines, but only non-revealing metadata and no extra
metadata at all: annotators can read a record's metadata through the API, so
nothing there may name a version (the task itself stays in the collector's state,
see state.py).

One dataset per candidate count k (`<prefix>-<k>`): Argilla's RankingQuestion has a
fixed option list and a submitted ranking must rank every option, so a 2-answer task
in a 5-option dataset would make annotators rank three empty answers. Each dataset
has a `prompt` field, `answer_1..answer_k` fields, the `rank` question over them
(shown as answers A, B, C ...), optional per-axis ratings and a rationale.
"""

from __future__ import annotations

from dataclasses import dataclass

import argilla as rg

PROMPT_FIELD = "prompt"
RANK_QUESTION = "rank"
RATIONALE_QUESTION = "rationale"
RATING_PREFIX = "rating_"
LETTERS = "ABCDE"
# Metadata that annotators and reviewers filter on; `task` (the full RankingTask as
# JSON, what the collector rebuilds preferences from) rides as extra metadata.
TERMS_METADATA = ("model_versions", "sampling_rule", "sampling_strategy", "tags", "app", "guideline_version")
FLOAT_METADATA = ("sampling_score",)
TASK_METADATA = "task"
# A comparison record's only metadata: nothing that names or hints at a version.
COMPARISON_METADATA = ("sampling_rule", "app", "guideline_version")


class DatasetMismatch(RuntimeError):
    """The dataset exists with a layout this service would misread. Fix the dataset or
    the configuration (or use another dataset name); the service will not guess."""


def answer_field(slot: int) -> str:
    return f"answer_{slot}"


def dataset_name(prefix: str, k: int) -> str:
    return f"{prefix}-{k}"


@dataclass(frozen=True)
class Layout:
    k: int
    rating_axes: tuple[str, ...]
    rationale: bool
    min_submitted: int
    terms_metadata: tuple[str, ...] = TERMS_METADATA
    float_metadata: tuple[str, ...] = FLOAT_METADATA
    extra_metadata: bool = True  # off: Argilla refuses any metadata not declared above
    question_title: str = "Rank the answers, best first (ties allowed)"

    @classmethod
    def comparison(cls, rationale: bool, min_submitted: int) -> "Layout":
        """The blind A/B layout: two answers, no rating axes (the question is only
        which answer is better), declared non-revealing metadata only."""
        return cls(k=2, rating_axes=(), rationale=rationale, min_submitted=min_submitted,
                   terms_metadata=COMPARISON_METADATA, float_metadata=(), extra_metadata=False,
                   question_title="Which answer is better? The better one at 1; both at 1 if neither is")

    @property
    def answer_fields(self) -> list[str]:
        return [answer_field(i) for i in range(1, self.k + 1)]

    def settings(self, guidelines: str, client: rg.Argilla) -> rg.Settings:
        """The dataset settings; SDK objects are bound to `client` explicitly, never to
        the SDK's implicit default client."""
        fields: list[rg.TextField] = [rg.TextField(name=PROMPT_FIELD, title="Prompt", use_markdown=True, client=client)]
        fields += [rg.TextField(name=name, title=f"Answer {LETTERS[i]}", use_markdown=True, client=client)
                   for i, name in enumerate(self.answer_fields)]
        questions: list[object] = [rg.RankingQuestion(
            name=RANK_QUESTION,
            title=self.question_title,
            values={name: f"Answer {LETTERS[i]}" for i, name in enumerate(self.answer_fields)},
            required=True,
            client=client,
        )]
        questions += [rg.RatingQuestion(
            name=RATING_PREFIX + axis, title=f"Best answer: {axis.replace('_', ' ')} (1-5)",
            values=[1, 2, 3, 4, 5], required=False, client=client,
        ) for axis in self.rating_axes]
        if self.rationale:
            questions.append(rg.TextQuestion(name=RATIONALE_QUESTION, title="Rationale (optional)",
                                             required=False, use_markdown=False, client=client))
        metadata: list[object] = [rg.TermsMetadataProperty(name=name, client=client) for name in self.terms_metadata]
        metadata += [rg.FloatMetadataProperty(name=name, client=client) for name in self.float_metadata]
        return rg.Settings(
            guidelines=guidelines,
            fields=fields,
            questions=questions,  # type: ignore[arg-type]
            metadata=metadata,  # type: ignore[arg-type]
            allow_extra_metadata=self.extra_metadata,
            distribution=rg.TaskDistribution(min_submitted=self.min_submitted),
        )

    def mismatches(self, existing: rg.Settings) -> list[str]:
        """What in `existing` differs from this layout in a way that matters when
        reading responses back (names, option sets, distribution). Titles and
        guidelines are free to change."""
        problems = []
        field_names = sorted(f.name for f in existing.fields)
        wanted_fields = sorted([PROMPT_FIELD, *self.answer_fields])
        if field_names != wanted_fields:
            problems.append(f"fields are {field_names}, expected {wanted_fields}")
        questions = {q.name: q for q in existing.questions}
        rank = questions.get(RANK_QUESTION)
        if rank is None or not isinstance(rank, rg.RankingQuestion):
            problems.append(f"no ranking question named {RANK_QUESTION!r}")
        elif sorted(rank.values) != sorted(self.answer_fields):
            problems.append(f"ranking options are {sorted(rank.values)}, expected {self.answer_fields}")
        wanted_questions = {RANK_QUESTION, *(RATING_PREFIX + a for a in self.rating_axes)}
        if self.rationale:
            wanted_questions.add(RATIONALE_QUESTION)
        if set(questions) != wanted_questions:
            problems.append(f"questions are {sorted(questions)}, expected {sorted(wanted_questions)}")
        distribution = existing.distribution
        if distribution is not None and distribution.min_submitted != self.min_submitted:
            problems.append(f"distribution min_submitted is {distribution.min_submitted}, "
                            f"expected {self.min_submitted}")
        if self.extra_metadata and not existing.allow_extra_metadata:
            problems.append("allow_extra_metadata is off (the task rides as extra metadata)")
        if not self.extra_metadata:
            declared = {m.name for m in existing.metadata}
            missing = sorted({*self.terms_metadata, *self.float_metadata} - declared)
            if missing:
                problems.append(f"metadata properties {missing} are missing (no extra metadata is allowed)")
        return problems
