"""One place that records a run's transitions: the store row and the
`TrainingRunStatus` event always change together, and ids are derived from run +
transition, so re-reporting the same transition is a duplicate downstream."""

from __future__ import annotations

from collections.abc import Callable

from shared.contracts import CanaryDecision, Event, ModelUpdate, TrainingRunStatus, model_update_id_for, run_event_id_for
from shared.topics import MODEL_UPDATES, TRAINING_RUNS

from .store import PreferenceStore

Publish = Callable[[str, Event], None]  # (topic name, event); must wait for the broker's ack


class RunReporter:
    def __init__(self, store: PreferenceStore, publish: Publish) -> None:
        self.store = store
        self.publish = publish

    def state(self, run_id: str, state: str, *, stage: str | None = None, reason: str | None = None,
              metrics: dict[str, float] | None = None, model_version: str | None = None,
              preference_count: int = 0) -> None:
        if stage is None:  # stage transitions are events only; the row keeps the run's state
            self.store.set_run_state(run_id, state, reason=reason, model_version=model_version, metrics=metrics)
        event = TrainingRunStatus(
            event_id=run_event_id_for(run_id, state, stage), run_id=run_id, state=state,  # type: ignore[arg-type]
            stage=stage, reason=reason[:10_000] if reason else None, preference_count=preference_count,  # type: ignore[arg-type]
            metrics=metrics or {}, model_version=model_version,
        )
        self.publish(TRAINING_RUNS.name, event)

    def model_update(self, *, model_version: str, action: str, run_id: str, base_model: str, adapter_uri: str,
                     reward_model_version: str | None, previous_version: str | None, gate_passed: bool,
                     gate_reasons: list[str], metrics: dict[str, float], canary_fraction: float = 1.0,
                     decision: CanaryDecision | None = None) -> None:
        event = ModelUpdate(
            event_id=model_update_id_for(model_version, action), model_version=model_version,
            action=action, run_id=run_id, base_model=base_model, adapter_uri=adapter_uri,  # type: ignore[arg-type]
            reward_model_version=reward_model_version, previous_version=previous_version, gate_passed=gate_passed,
            gate_reasons=gate_reasons[:50], canary_fraction=canary_fraction, metrics=metrics, decision=decision,
        )
        self.publish(MODEL_UPDATES.name, event)
