"""The training window on a real store (issue 15): a run trains on the preferences new
since the last finished run plus a recency-weighted, per-run deterministic replay
sample of older ones, and evaluates on a bounded, stable held-out sample, selected in
one streamed pass without loading the store."""

from __future__ import annotations

import sqlite3
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.trainer_window import fill_store
from services.trainer.pipeline import take_snapshot
from services.trainer.settings import TrainerOptions
from services.trainer.store import PreferenceStore, TrainingWindow, is_heldout

FRACTION = 0.2
STORED, FINISHED = 2_000, 1_750  # a finished run at 1,750: ~190 new training pairs above it
WINDOW = {"new_max": 200, "replay_size": 100, "replay_half_life": 300.0, "heldout_max": 0}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PreferenceStore]:
    fill_store(tmp_path / "store.sqlite", STORED, finished_at=FINISHED)  # every 20th row superseded
    s = PreferenceStore(tmp_path / "store.sqlite")
    yield s
    s.close()


def window(store: PreferenceStore, seed: str = "run-1", **overrides: float) -> TrainingWindow:
    watermark = store.max_seq()
    return store.training_window(watermark, heldout_fraction=FRACTION, start=store.window_start(watermark),
                                 seed=seed, **{**WINDOW, **overrides})  # type: ignore[arg-type]


def seqs(rows: list) -> list[int]:  # type: ignore[type-arg]
    return [r.seq for r in rows]


def test_a_window_is_every_new_training_pair_plus_the_replay_sample(store: PreferenceStore) -> None:
    live = store.preferences_upto(store.max_seq())  # today's snapshot: every live row
    train = [r for r in live if not is_heldout(r.prompt_hash, FRACTION)]
    new = [r.seq for r in train if r.seq > FINISHED]
    assert store.window_start(store.max_seq()) == FINISHED and 150 < len(new) <= 200
    w = window(store)
    assert seqs(w.new) == new and w.new_total == len(new)
    assert len(w.replay) == 100 and w.replay_pool == len(train) - len(new)
    assert set(seqs(w.replay)) <= {r.seq for r in train if r.seq <= FINISHED}
    assert seqs(w.train) == sorted(new + seqs(w.replay)) and len(w.train) == len(new) + 100  # not 1,500+
    assert w.replay == window(store).replay  # a rerun of the run trains on the same rows
    assert seqs(w.replay) != seqs(window(store, seed="run-2").replay)  # another run replays others
    assert w.train[0] == next(r for r in live if r.seq == w.train[0].seq)  # the rows as stored


def test_superseded_rows_never_train_and_the_split_stays_by_prompt_hash(store: PreferenceStore) -> None:
    conn = sqlite3.connect(store.path)
    superseded = {seq for (seq,) in conn.execute("SELECT seq FROM preferences WHERE superseded_by IS NOT NULL")}
    conn.close()
    assert len(superseded) == STORED // 20
    w = window(store, new_max=0, replay_size=10_000)  # the whole pool
    everything = store.preferences_upto(store.max_seq())
    assert not superseded & set(seqs(w.train + w.heldout))
    assert all(not is_heldout(r.prompt_hash, FRACTION) for r in w.train)
    assert all(is_heldout(r.prompt_hash, FRACTION) for r in w.heldout)
    assert sorted(seqs(w.train) + seqs(w.heldout)) == seqs(everything)  # a window that fits is today's snapshot


def test_the_heldout_sample_is_bounded_and_the_same_in_every_run(store: PreferenceStore, tmp_path: Path) -> None:
    full = [r.seq for r in store.preferences_upto(store.max_seq()) if is_heldout(r.prompt_hash, FRACTION)]
    assert seqs(window(store).heldout) == full  # heldout_max=0: all of them
    sample = window(store, heldout_max=50)
    assert len(sample.heldout) == 50 and set(seqs(sample.heldout)) <= set(full) and sample.heldout_total == len(full)
    assert seqs(window(store, seed="run-2", heldout_max=50).heldout) == seqs(sample.heldout)  # not per run
    fill_store(store.path, 500, start=STORED)  # more traffic: a sampled pair leaves only for a newer one
    later = window(store, heldout_max=50)
    assert set(seqs(later.heldout)) <= set(seqs(sample.heldout)) | set(range(STORED + 1, STORED + 501))
    assert len(set(seqs(later.heldout)) & set(seqs(sample.heldout))) >= 30


def test_the_replay_sample_favours_recent_rows(store: PreferenceStore) -> None:
    """Over 30 run seeds: with a half-life of 300 rows most replayed rows come from the newer
    half of the older pool; uniform (half-life 0) they split about evenly."""
    pool = [r.seq for r in store.preferences_upto(FINISHED) if not is_heldout(r.prompt_hash, FRACTION)]
    middle = pool[len(pool) // 2]

    def newer_share(half_life: float) -> float:
        drawn = [s for i in range(30) for s in seqs(window(store, seed=f"run-{i}", replay_half_life=half_life).replay)]
        return sum(s > middle for s in drawn) / len(drawn)

    weighted, uniform = newer_share(300.0), newer_share(0.0)
    assert weighted > 0.8
    assert 0.45 < uniform < 0.55
    ages = [store.max_seq() - s for s in seqs(window(store).replay)]
    assert sorted(ages)[50] < 700  # the median replayed row is a couple of half-lives old


def test_new_pairs_over_the_cap_join_the_replay_pool(store: PreferenceStore) -> None:
    w = window(store, new_max=50)
    assert len(w.new) == 50 and w.new_total > 150
    newest = sorted((r.seq for r in store.preferences_upto(store.max_seq())
                     if not is_heldout(r.prompt_hash, FRACTION)), reverse=True)[:50]
    assert seqs(w.new) == sorted(newest)  # the newest ones
    assert w.replay_pool == w.new_total - 50 + len([r for r in store.preferences_upto(FINISHED)
                                                    if not is_heldout(r.prompt_hash, FRACTION)])


def test_the_window_starts_at_the_last_finished_run_below_the_watermark(store: PreferenceStore) -> None:
    top = store.max_seq()
    store.create_run("failed", "test", 1_900, 0)
    store.set_run_state("failed", "failed")
    assert store.window_start(top) == FINISHED  # a failed run used nothing up
    store.create_run("done", "test", top, 0)
    store.set_run_state("done", "succeeded")
    assert store.window_start(top, "done") == FINISHED  # a rerun of it: the same window
    assert store.window_start(top) == FINISHED  # another run at the same watermark: the same too
    assert store.window_start(top + 1) == top


def test_default_options_train_a_small_store_on_everything(tmp_path: Path) -> None:
    """The defaults (replay 5,000, held-out 2,000) cover the demo's stores of a few hundred
    rows: the snapshot is today's, all rows split by prompt hash."""
    fill_store(tmp_path / "s.sqlite", 600, finished_at=500)
    store = PreferenceStore(tmp_path / "s.sqlite")
    snap = take_snapshot(store, store.max_seq(), TrainerOptions(), run_id="run-x")
    rows = store.preferences_upto(store.max_seq())
    assert seqs(snap.train) == [r.seq for r in rows if not is_heldout(r.prompt_hash, 0.2)]
    assert seqs(snap.heldout) == [r.seq for r in rows if is_heldout(r.prompt_hash, 0.2)]
    assert snap.lineage()["window"]["replay"] == snap.lineage()["window"]["replay_pool"] > 0
    store.close()


def test_selecting_from_100k_rows_does_not_hold_100k_rows(tmp_path: Path) -> None:
    fill_store(tmp_path / "big.sqlite", 100_000, finished_at=99_750)
    store = PreferenceStore(tmp_path / "big.sqlite")
    watermark = store.max_seq()
    tracemalloc.start()
    try:
        w = store.training_window(watermark, heldout_fraction=FRACTION, start=store.window_start(watermark),
                                  seed="run-1", new_max=200, replay_size=100, replay_half_life=1_000, heldout_max=50)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(w.replay) == 100 and len(w.heldout) == 50 and w.replay_pool + w.new_total + w.heldout_total > 90_000
    # a bare list of 100k ints is ~3.6 MB (8 B slot + 28 B int); the rows themselves, as
    # preferences_upto returns them, take ~60 MB. The chunked pass holds a chunk and the window.
    assert peak < 1.5 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    store.close()
