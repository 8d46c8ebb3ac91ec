"""The Argilla dataset layout of a ranking task, and its check against a live dataset.

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
            title="Rank the answers, best first (ties allowed)",
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
        metadata: list[object] = [rg.TermsMetadataProperty(name=name, client=client) for name in TERMS_METADATA]
        metadata += [rg.FloatMetadataProperty(name=name, client=client) for name in FLOAT_METADATA]
        return rg.Settings(
            guidelines=guidelines,
            fields=fields,
            questions=questions,  # type: ignore[arg-type]
            metadata=metadata,  # type: ignore[arg-type]
            allow_extra_metadata=True,
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
        if not existing.allow_extra_metadata:
            problems.append("allow_extra_metadata is off (the task rides as extra metadata)")
        return problems
