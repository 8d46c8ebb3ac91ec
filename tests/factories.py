"""Valid events for tests, built through the same id helpers production uses."""

from __future__ import annotations

from shared.contracts import (
    AnnotatorRanking,
    Candidate,
    CandidateRank,
    ChatMessage,
    ModelOutput,
    ModelRef,
    ModelUpdate,
    Preference,
    RankingResult,
    RankingTask,
    SamplingDecision,
    TrainingRunStatus,
    model_update_id_for,
    output_id_for,
    preference_id_for,
    ranking_id_for,
    run_event_id_for,
    task_id_for,
    utc_now,
)

MODEL = ModelRef(name="tiny-llama", version="v1")


def candidate(i: int, text: str | None = None) -> Candidate:
    return Candidate(candidate_id=f"c{i}", text=text or f"answer {i}", model=MODEL,
                     generation_params={"temperature": 0.7})


def model_output(request_id: str = "req-1", n: int = 2, conversation_id: str | None = None) -> ModelOutput:
    oid = output_id_for(request_id)
    return ModelOutput(
        event_id=oid,
        output_id=oid,
        conversation_id=conversation_id,
        conversation=[ChatMessage(role="user", content=f"question {request_id}")],
        candidates=[candidate(i) for i in range(n)],
        client_request_id=request_id,
        tags=["test"],
    )


def ranking_task(output: ModelOutput) -> RankingTask:
    tid = task_id_for(output.output_id)
    return RankingTask(
        event_id=tid, task_id=tid, output_id=output.output_id,
        prompt=list(output.conversation), candidates=list(output.candidates),
        sampling=SamplingDecision(rule="uniform-5pct", strategy="uniform", score=0.05),
    )


def ranking_result(task: RankingTask) -> RankingResult:
    rid = ranking_id_for(task.task_id, "rev-1")
    ranks = [CandidateRank(candidate_id=c.candidate_id, rank=i + 1) for i, c in enumerate(task.candidates)]
    return RankingResult(
        event_id=rid, ranking_id=rid, task_id=task.task_id, output_id=task.output_id,
        record_id="rec-1", guideline_version="v1",
        annotations=[AnnotatorRanking(annotator_id="ann-1", ranks=ranks, submitted_at=utc_now())],
    )


def preference(result: RankingResult, task: RankingTask) -> Preference:
    chosen, rejected = task.candidates[0], task.candidates[1]
    pid = preference_id_for(task.task_id, chosen.candidate_id, rejected.candidate_id)
    return Preference(
        event_id=pid, preference_id=pid, ranking_id=result.ranking_id, task_id=task.task_id,
        output_id=task.output_id, prompt=list(task.prompt), chosen=chosen, rejected=rejected,
        margin=1.0, guideline_version="v1",
    )


def training_status(run_id: str = "run-1", state: str = "started") -> TrainingRunStatus:
    return TrainingRunStatus(event_id=run_event_id_for(run_id, state, None), run_id=run_id, state=state)  # type: ignore[arg-type]


def model_update(version: str = "policy-v2") -> ModelUpdate:
    return ModelUpdate(event_id=model_update_id_for(version, "published"), model_version=version,
                       action="published", base_model="tiny-llama", adapter_uri=f"file:///registry/{version}")
