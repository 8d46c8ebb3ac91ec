"""Valid events for tests, built through the same id helpers production uses."""

from __future__ import annotations

from datetime import datetime, timezone

from shared.contracts import (
    ABPair,
    AnnotatorRanking,
    CanaryComparison,
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
    comparison_id_for,
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


def ab_output(request_id: str = "ab-1", canary: str = "policy-v0002", stable: str = "policy-v0001") -> ModelOutput:
    """A captured A/B comparison: one answer from the canary, one from the stable version."""
    output_id = output_id_for(request_id)
    candidates = [Candidate(candidate_id="choice-0", text="the canary's answer", model=ModelRef(name="m", version=canary)),
                  Candidate(candidate_id="ab-1", text="the stable answer", model=ModelRef(name="m", version=stable))]
    return ModelOutput(event_id=output_id, output_id=output_id, conversation=[ChatMessage(role="user", content="hi")],
                       candidates=candidates, client_request_id=request_id, source="policy_server",
                       ab=ABPair(canary_version=canary, stable_version=stable, canary_candidate_id="choice-0",
                                 stable_candidate_id="ab-1"))


def canary_comparison(task_id: str = "task-ab-1", outcome: str = "canary", canary: str = "policy-v0002",
                      stable: str = "policy-v0001", revision: str = "r1",
                      judged_at: datetime | None = None) -> CanaryComparison:
    ranking_id = ranking_id_for(task_id, revision)
    comparison_id = comparison_id_for(ranking_id)
    votes = {"canary_votes": int(outcome == "canary"), "stable_votes": int(outcome == "stable"),
             "tie_votes": int(outcome == "tie")}
    return CanaryComparison(event_id=comparison_id, comparison_id=comparison_id, ranking_id=ranking_id,
                            task_id=task_id, output_id=f"out-{task_id}", canary_version=canary,
                            stable_version=stable, outcome=outcome, guideline_version="comparison-v1",  # type: ignore[arg-type]
                            judged_at=judged_at or datetime.now(timezone.utc), **votes)
