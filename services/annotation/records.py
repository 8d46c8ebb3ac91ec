"""A RankingTask as an Argilla record, and back. Pure functions.

The record id is the task id (sent as the record's `external_id`, which Argilla
upserts on), so a redelivered task updates its record instead of adding a second one. The whole task rides along as JSON in the `task` extra metadata: the
collector rebuilds preferences (prompt, candidate texts, model refs) from the record
alone, with no state of its own.
"""

from __future__ import annotations

from typing import Any

from shared.contracts import ChatMessage, RankingTask

from .schema import PROMPT_FIELD, TASK_METADATA, answer_field


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


def task_to_record(task: RankingTask, guideline_version: str, suggestion: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record as Argilla's bulk upsert takes it (with the reward model's ranking as a
    suggestion, when one is given)."""
    fields = {PROMPT_FIELD: render_prompt(task.prompt)}
    for slot, candidate in enumerate(task.candidates, start=1):
        # Argilla rejects empty text fields; an empty answer is still an answer to rank.
        fields[answer_field(slot)] = candidate.text if candidate.text.strip() else "_(empty answer)_"
    record = {"external_id": task.task_id, "fields": fields, "metadata": record_metadata(task, guideline_version)}
    if suggestion is not None:
        record["suggestions"] = [suggestion]
    return record


def task_from_metadata(metadata: dict[str, Any] | None) -> RankingTask | None:
    """The task a record was made from, or None if the record is not ours or is damaged."""
    raw = (metadata or {}).get(TASK_METADATA)
    if not isinstance(raw, str):
        return None
    try:
        return RankingTask.model_validate_json(raw)
    except ValueError:
        return None
