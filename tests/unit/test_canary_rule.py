"""The canary judge's decision rule (sequential.py) and what a preference's weight and
source do in the trainer (store columns, the reward head's loss)."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
import torch

from services.trainer.bradley_terry import fit_head, pair_accuracy
from services.trainer.sequential import Counts, SequentialTestOptions, beta_cdf, evaluate
from services.trainer.store import PreferenceStore
from tests.trainer_support import make_preference


def test_the_bounds_are_walds_and_ties_are_half_a_win() -> None:
    options = SequentialTestOptions(margin=0.1, false_graduation_rate=0.05, false_rollback_rate=0.05)
    evidence = evaluate(Counts(), options)
    assert evidence.graduate_at == pytest.approx(2.944, abs=1e-3) and evidence.rollback_at == pytest.approx(-2.944,
                                                                                                             abs=1e-3)
    one_tie = evaluate(Counts(ties=1), options).log_likelihood_ratio
    win_and_loss = evaluate(Counts(wins=1, losses=1), options).log_likelihood_ratio
    assert one_tie == pytest.approx(win_and_loss / 2)
    assert evaluate(Counts(wins=30), options).verdict == "graduate"
    assert evaluate(Counts(losses=30), options).verdict == "rollback"
    assert evaluate(Counts(wins=4), SequentialTestOptions(min_comparisons=5, false_graduation_rate=0.4,
                                                          false_rollback_rate=0.4)).verdict == "continue"


@pytest.mark.parametrize(("win_rate", "graduates"), [(0.7, True), (0.25, False)])
def test_the_test_decides_the_right_way_at_its_error_rates(win_rate: float, graduates: bool) -> None:
    """Simulated canaries: a clearly better one graduates, a clearly worse one is rolled
    back, in at least 95% of 200 runs (the configured error rates), within ~60 votes."""
    options = SequentialTestOptions()
    right, lengths = 0, []
    for seed in range(200):
        draw, wins, losses = random.Random(seed), 0, 0
        while (verdict := evaluate(Counts(wins, losses), options).verdict) == "continue":
            wins, losses = (wins + 1, losses) if draw.random() < win_rate else (wins, losses + 1)
        right += (verdict == "graduate") == graduates
        lengths.append(wins + losses)
    assert right >= 190
    assert sum(lengths) / len(lengths) < 60


def test_the_posterior_matches_a_closed_form() -> None:
    assert beta_cdf(0.5, 3, 3) == pytest.approx(0.5, abs=1e-3)
    assert beta_cdf(0.3, 1, 1) == pytest.approx(0.3, abs=1e-3)
    assert beta_cdf(0.4, 2, 1) == pytest.approx(0.16, abs=1e-3)  # x^2
    evidence = evaluate(Counts(wins=8, losses=2), SequentialTestOptions())
    assert evidence.posterior_win_rate == pytest.approx(9 / 12)


def test_the_store_keeps_source_and_weight_and_upgrades_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = PreferenceStore(path)
    pref = make_preference(1).model_copy(update={"source": "edit", "weight": 0.5})
    assert store.add_preference(pref)
    [row] = store.preferences_upto(store.max_seq())
    assert (row.source, row.weight) == ("edit", 0.5)
    store.close()
    db = sqlite3.connect(path)  # a file written before schema 3: no such columns
    db.executescript("ALTER TABLE preferences DROP COLUMN source; ALTER TABLE preferences DROP COLUMN weight;")
    db.close()
    again = PreferenceStore(path)
    [row] = again.preferences_upto(again.max_seq())
    assert (row.source, row.weight) == ("ranking", 1.0)
    again.close()


def test_a_pairs_weight_is_its_share_of_the_reward_heads_loss() -> None:
    """Two contradicting pairs on one feature: the heavier one decides the head's sign."""
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    chosen, rejected = torch.cat([a, b]), torch.cat([b, a])
    for weights, first_wins in (([4.0, 1.0], True), ([1.0, 4.0], False)):
        head = fit_head(chosen, rejected, weights=weights, l2=0.0)
        assert pair_accuracy(head, chosen[:1], rejected[:1]) == (1.0 if first_wins else 0.0)
