"""Stores that several connections open (the trainer service and its training child,
a CLI beside a running service) must not fail when they open a fresh file at once:
SQLite answers the WAL switch with "database is locked" without waiting for the busy
timeout. Before connect_wal, three threads opening a fresh PreferenceStore together
failed in ~5% of tries (and once in CI, as test_trainer_kubernetes's store opened
beside the service's)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from services.trainer.canary_store import CanaryStore
from services.trainer.store import PreferenceStore
from shared.sqlite_wal import connect_wal

TRIES = 150
OPENERS = 3


def _open_together(opener, path: Path) -> list[BaseException]:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []
    start = threading.Barrier(OPENERS)

    def open_one() -> None:
        start.wait()
        try:
            opener(path)
        except sqlite3.OperationalError as error:
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(OPENERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_opens_of_a_fresh_store_all_succeed(tmp_path: Path) -> None:
    for opener in (PreferenceStore, CanaryStore):
        for attempt in range(TRIES):
            errors = _open_together(opener, tmp_path / f"{opener.__name__}-{attempt}.sqlite")
            assert not errors, f"{opener.__name__}, try {attempt}: {errors[0]}"


def test_connection_is_in_wal_mode_and_other_errors_still_raise(tmp_path: Path) -> None:
    conn = connect_wal(tmp_path / "a.sqlite", timeout_s=1)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(sqlite3.OperationalError) as caught:  # not retried: it is no lock
        connect_wal(tmp_path / "dir.sqlite", timeout_s=1)
    assert "locked" not in str(caught.value)
