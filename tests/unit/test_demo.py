"""The demo's pieces that need no model: the annotators' preference, the prompt split,
and the pacing that lets training have the CPU."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.annotation.embedded_ui import argilla_dir, embedded_ui, publish_endpoint
from services.demo.oracles import is_finished, prefer_concise
from services.demo.pacing import TrainingWatch
from services.demo.simulated_annotator import ranks_from_scores
from services.trainer.metrics import TrainerMetrics
from shared.datasets.hh_rlhf import prompt_split
from shared.web import ops_router
from tests.helpers.routes import serving


def test_concise_preference_ranks_finished_short_answers_first() -> None:
    finished = "You can reset it in the settings page under Account."
    cut_off = "There are many ways to think about this question, and the first one that comes to mind is the"
    rambling = " ".join(["This sentence goes on."] * 8)  # 32 words, finished
    too_short = "Yes."
    scores = prefer_concise("q", [finished, cut_off, rambling, too_short])
    assert scores[0] > scores[2] > scores[1] > scores[3]
    assert prefer_concise("q", [finished, finished + " Really."]) == [1.0, 1.0]  # close lengths tie
    assert is_finished('He said "yes."') and not is_finished("and then the")


def test_prompt_split_is_disjoint_and_stable() -> None:
    split = prompt_split()
    text = lambda prompts: {p[0]["content"] for p in prompts}  # noqa: E731
    assert len(split.heldout) == 128 and len(split.trainer_eval) == 128 and len(split.replay) > 1000
    assert not text(split.heldout) & text(split.replay) and not text(split.trainer_eval) & text(split.replay)
    assert not text(split.heldout) & text(split.trainer_eval)
    assert prompt_split().heldout == split.heldout


def test_training_watch_holds_while_a_run_trains() -> None:
    registry = CollectorRegistry()
    metrics = TrainerMetrics(registry)
    with serving(ops_router(registry, {}, {})) as base:
        watch = TrainingWatch(base, enabled=True, refresh_s=0.05)
        assert not watch.training()
        metrics.run_active.set(1)
        time.sleep(0.1)
        assert watch.training()
        threading.Timer(0.4, lambda: metrics.run_active.set(0)).start()
        started = time.monotonic()
        assert watch.wait_until_idle(threading.Event())  # held until the run ended
        assert time.monotonic() - started >= 0.3 and not watch.training()
        stop = threading.Event()
        metrics.run_active.set(1)
        time.sleep(0.1)
        threading.Timer(0.2, stop.set).start()
        assert not watch.wait_until_idle(stop)  # a shutdown ends the wait
        assert not TrainingWatch(base, enabled=False).training()
    assert not TrainingWatch("http://127.0.0.1:9", enabled=True).training()  # trainer unreachable: no pause


def test_the_replay_waits_while_the_probe_measures_a_new_version() -> None:
    registry = CollectorRegistry()
    TrainerMetrics(registry)  # no run active
    with serving(ops_router(registry, {}, {})) as base:
        watch = TrainingWatch(base, enabled=True, refresh_s=0.05)
        assert watch.wait_for_traffic_turn(threading.Event())  # nobody ahead: at once
        waited: list[float] = []

        def replay_turn() -> None:
            started = time.monotonic()
            watch.wait_for_traffic_turn(threading.Event())
            waited.append(time.monotonic() - started)

        with watch.probe_first():
            replay = threading.Thread(target=replay_turn)
            replay.start()
            time.sleep(0.4)
            assert replay.is_alive()  # held while the probe measures
        replay.join(2)
        assert waited and waited[0] >= 0.35
        off = TrainingWatch(base, enabled=False)
        with off.probe_first():  # pacing off: the replay never waits
            assert off.wait_for_traffic_turn(threading.Event())


def test_ranks_from_scores_uses_competition_ranking_with_tolerance() -> None:
    assert ranks_from_scores([1.0, 3.0, 2.0]) == [3, 1, 2]
    assert ranks_from_scores([5.0, 5.0, 1.0]) == [1, 1, 3]
    assert ranks_from_scores([5.0, 4.9, 1.0], tie_within=0.2) == [1, 1, 3]


def test_the_demo_finds_the_embedded_ui_only_through_the_annotation_package(tmp_path: Path) -> None:
    ui_dir = argilla_dir(tmp_path)
    ui_dir.mkdir()
    assert embedded_ui(ui_dir) is None  # the annotation service has not started Argilla
    (ui_dir / "credentials.json").write_text(json.dumps([  # what shared.embedded.argilla writes
        {"username": "owner", "password": "p0", "api_key": "k0", "role": "owner"},
        {"username": "annotator-1", "password": "p1", "api_key": "k1", "role": "annotator"}]))
    assert embedded_ui(ui_dir) is None  # credentials, but no server up yet
    endpoint = publish_endpoint(ui_dir, "http://127.0.0.1:6900")
    ui = embedded_ui(ui_dir)
    assert ui is not None and ui.url == "http://127.0.0.1:6900"
    assert [(u.username, u.password) for u in ui.annotators] == [("annotator-1", "p1")]  # never the owner
    endpoint.unlink()  # what the service does at stop
    assert embedded_ui(ui_dir) is None
