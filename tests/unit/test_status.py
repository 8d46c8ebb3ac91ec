"""The status line of `rlhf-loop up`, from the samples a scrape returns."""

from __future__ import annotations

from services.status import status_line


def test_a_dead_argilla_is_said_instead_of_a_pending_count() -> None:
    down = status_line({"rlhf_annotation_argilla_up": [({}, 0.0)], "rlhf_annotation_tasks_pending": [({}, 4.0)]})
    up = status_line({"rlhf_annotation_argilla_up": [({}, 1.0)], "rlhf_annotation_tasks_pending": [({}, 4.0)]})
    assert "Argilla DOWN" in down and "pending" not in down
    assert "in Argilla 4 pending" in up and "DOWN" not in up


def test_run_counts_come_from_the_trainers_durable_history_not_its_process_counter() -> None:
    restarted = {"rlhf_trainer_runs_recorded": [({"state": "succeeded"}, 2.0), ({"state": "gated"}, 1.0),
                                                ({"state": "failed"}, 0.0)],
                 "rlhf_trainer_runs_total": [({"outcome": "succeeded"}, 0.0)]}  # a fresh process
    assert "runs 2 ok, 1 gated, 0 failed" in status_line(restarted)
