"""A RankingTask as an Argilla record, and back. Pure functions.

The record id is the task id (sent as the record's `external_id`, which Argilla
upserts on), so a redelivered task updates its record instead of adding a second one. The whole task rides along as JSON in the `task` extra metadata: the
collector rebuilds preferences (prompt, candidate texts, model refs) from the record
alone, with no state of its own.

A blind comparison task (`task.ab` set) is the exception: its record carries the
prompt and the two answers and only metadata that names no version
(`comparison_to_record`); the task itself is kept in the collector's state.
"""

from __future__ import annotations

from typing import Any

from shared.contracts import ChatMessage, RankingTask

from .schema import COMPARISON_METADATA, PROMPT_FIELD, TASK_METADATA, answer_field


def render_prompt(messages: list[ChatMessage]) -> str:
    """The conversation as markdown, one block per turn, the role in bold."""
    return "\n\n".join(f"**{m.role}:**\n\n{m.content}" for m in messages)


def record_metadata(task: RankingTask, guideline_version: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "model_versions": sorted({f"{c.model.name}:{c.model.version}" for c in task.candidates}),
        "sampling_rule": task.sampling.rule,
        "sampling_strategy": task.sampling.strategy,
        "sampling_score": float(task.sampling.score),
        "guideline_version": guideline_version,
        TASK_METADATA: task.model_dump_json(),
    }
    if task.tags:
        metadata["tags"] = list(task.tags)
    if task.app:
        metadata["app"] = task.app
    return metadata


def record_fields(task: RankingTask) -> dict[str, str]:
    fields = {PROMPT_FIELD: render_prompt(task.prompt)}
    for slot, candidate in enumerate(task.candidates, start=1):
        # Argilla rejects empty text fields; an empty answer is still an answer to rank.
        fields[answer_field(slot)] = candidate.text if candidate.text.strip() else "_(empty answer)_"
    return fields


def version_names(task: RankingTask) -> set[str]:
    """Every version name a comparison record must not show."""
    names = {c.model.version for c in task.candidates}
    if task.ab is not None:
        names |= {task.ab.canary_version, task.ab.stable_version}
    return {n for n in names if n}


def comparison_metadata(task: RankingTask, guideline_version: str) -> dict[str, Any]:
    """Only what says nothing about the versions; a value that happens to contain a
    version name (an app or sampling rule named after one) is left out rather than
    shown."""
    values = {"sampling_rule": task.sampling.rule, "app": task.app, "guideline_version": guideline_version}
    hidden = [n.lower() for n in version_names(task)]
    return {key: value for key, value in values.items()
            if key in COMPARISON_METADATA and value and not any(n in value.lower() for n in hidden)}


def comparison_to_record(task: RankingTask, guideline_version: str) -> dict[str, Any]:
    """A blind A/B record: the prompt, the two answers in the task's (randomised) order,
    non-revealing metadata. No suggestion either: a model's opinion would anchor a
    judgement that is meant to be the humans' own."""
    return {"external_id": task.task_id, "fields": record_fields(task),
            "metadata": comparison_metadata(task, guideline_version)}


def task_to_record(task: RankingTask, guideline_version: str, suggestion: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record as Argilla's bulk upsert takes it (with the reward model's ranking as a
    suggestion, when one is given)."""
    fields = record_fields(task)
    record = {"external_id": task.task_id, "fields": fields, "metadata": record_metadata(task, guideline_version)}
    if suggestion is not None:
        record["suggestions"] = [suggestion]
    return record


def task_from_json(raw: object) -> RankingTask | None:
    """A task from its JSON, or None if it is missing or damaged."""
    if not isinstance(raw, str):
        return None
    try:
        return RankingTask.model_validate_json(raw)
    except ValueError:
        return None


def task_from_metadata(metadata: dict[str, Any] | None) -> RankingTask | None:
    """The task a record was made from, or None if the record is not ours or is damaged."""
    return task_from_json((metadata or {}).get(TASK_METADATA))
