"""A whole training run (tiny models, the job's own code path) on a store of 2,000
preferences with a window of 200 new + 100 replayed pairs trains on that window, not
on the 2,000, and its manifest says how the rows were chosen (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.trainer_window import fill_store
from services.trainer.pipeline import TrainingRun
from services.trainer.registry import ModelRegistry
from services.trainer.reporting import RunReporter
from services.trainer.store import PreferenceStore, is_heldout
from tests.trainer_support import trainer_settings

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:var\\(\\):UserWarning")]


def test_a_run_on_2k_stored_preferences_trains_on_its_window(tmp_path: Path,
                                                             tiny_models: tuple[Path, Path]) -> None:
    settings = trainer_settings(tmp_path, None, tiny_models, train_window_new_max=200, replay_size=100,
                                heldout_sample_max=50, replay_half_life=500)
    store_path = tmp_path / "trainer" / "store.sqlite"
    fill_store(store_path, 2_000, finished_at=1_750)
    store = PreferenceStore(store_path)
    registry = ModelRegistry(tmp_path / "registry")
    reporter = RunReporter(store, lambda _topic, _event: None)
    watermark = store.max_seq()
    live = store.preferences_upto(watermark)
    new = [r.seq for r in live if r.seq > 1_750 and not is_heldout(r.prompt_hash, 0.2)]

    def run(run_id: str) -> TrainingRun:
        store.create_run(run_id, "test", watermark, store.preference_count())
        store.try_lock(run_id, 60)
        job = TrainingRun(run_id=run_id, watermark=watermark, options=settings.trainer, store=store,
                          registry=registry, reporter=reporter, work_dir=tmp_path / "trainer")
        try:
            job.execute()
        finally:
            store.release_lock(run_id)
        return job

    first = run("run-a")
    assert first.preference_count == len(new) + 100 + 50  # the window, not the 1,900 live rows
    window = registry.manifest("reward", "rm-v0001")["preferences"]["window"]
    assert window == {"start": 1_750, "new": len(new), "new_total": len(new), "replay": 100,
                      "replay_pool": window["replay_pool"], "heldout": 50, "heldout_total": window["heldout_total"]}
    assert window["replay_pool"] + len(new) + window["heldout_total"] == len(live)
    assert registry.manifest("reward", "rm-v0001")["preferences"]["seq_range"][1] == max(r.seq for r in live)
    store.close()
