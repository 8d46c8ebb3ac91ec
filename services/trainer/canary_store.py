"""The canary judge's durable state: the judged comparisons and the decisions made.

A small SQLite file beside the preference store. Comparisons are kept per task (the
latest revision of a judgement wins, so an annotator's edit replaces their earlier
vote instead of adding one), which makes a redelivered comparison a no-op and the
counts exactly "one vote per compared prompt". A decision is stored once per canary
version with whether its event was acknowledged (`announced`), so a send that fails
is retried by the next look, and a restart neither decides twice nor forgets.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.contracts import CanaryComparison
from shared.sqlite_wal import connect_wal

from .sequential import Counts

SCHEMA = """
CREATE TABLE IF NOT EXISTS comparisons (
    task_id TEXT PRIMARY KEY, comparison_id TEXT NOT NULL, canary_version TEXT NOT NULL,
    stable_version TEXT NOT NULL, outcome TEXT NOT NULL, judged_at REAL NOT NULL, stored_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS comparisons_by_canary ON comparisons (canary_version);
CREATE TABLE IF NOT EXISTS canaries (
    version TEXT PRIMARY KEY, stable_version TEXT NOT NULL, started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    canary_version TEXT PRIMARY KEY, outcome TEXT NOT NULL, reason TEXT NOT NULL, decision_json TEXT NOT NULL,
    decided_at REAL NOT NULL, announced INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class Canary:
    version: str
    stable_version: str
    started_at: float  # when the judge first heard of its promotion (wall clock)


@dataclass(frozen=True)
class StoredDecision:
    canary_version: str
    outcome: str
    reason: str
    decision_json: str
    announced: bool


class CanaryStore:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = connect_wal(path, timeout_s=30)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA synchronous=FULL")  # durable before the consumer commits the offset
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add_canary(self, version: str, stable_version: str, started_at: float) -> bool:
        """A canary promotion heard (the first hearing stands: a redelivered or re-sent
        `promoted` event does not restart its clock)."""
        with self._tx() as db:
            cursor = db.execute("INSERT INTO canaries (version, stable_version, started_at) VALUES (?, ?, ?)"
                                " ON CONFLICT(version) DO NOTHING", (version, stable_version, started_at))
            return cursor.rowcount == 1

    def canary(self, version: str) -> Canary | None:
        with self._lock:
            row = self._db.execute("SELECT version, stable_version, started_at FROM canaries WHERE version = ?",
                                   (version,)).fetchone()
        return Canary(row[0], row[1], row[2]) if row else None

    def unannounced(self) -> list[StoredDecision]:
        with self._lock:
            rows = self._db.execute("SELECT canary_version, outcome, reason, decision_json, announced FROM decisions"
                                    " WHERE announced = 0 ORDER BY decided_at").fetchall()
        return [StoredDecision(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def add(self, comparison: CanaryComparison) -> bool:
        """Store a judgement; True if it changed the counts (new task, or a later
        revision with another outcome). An older or repeated revision is ignored."""
        judged_at = comparison.judged_at.timestamp()
        with self._tx() as db:
            row = db.execute("SELECT comparison_id, outcome, judged_at FROM comparisons WHERE task_id = ?",
                             (comparison.task_id,)).fetchone()
            if row is not None and (row[0] == comparison.comparison_id or row[2] >= judged_at):
                return False
            db.execute(
                "INSERT INTO comparisons (task_id, comparison_id, canary_version, stable_version, outcome, judged_at,"
                " stored_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(task_id) DO UPDATE SET"
                " comparison_id = excluded.comparison_id, outcome = excluded.outcome, judged_at = excluded.judged_at,"
                " stored_at = excluded.stored_at",
                (comparison.task_id, comparison.comparison_id, comparison.canary_version, comparison.stable_version,
                 comparison.outcome, judged_at, time.time()))
            return row is None or row[1] != comparison.outcome

    def counts(self, canary_version: str) -> Counts:
        with self._lock:
            rows = dict(self._db.execute("SELECT outcome, COUNT(*) FROM comparisons WHERE canary_version = ?"
                                         " GROUP BY outcome", (canary_version,)).fetchall())
        return Counts(wins=rows.get("canary", 0), losses=rows.get("stable", 0), ties=rows.get("tie", 0))

    def decision(self, canary_version: str) -> StoredDecision | None:
        with self._lock:
            row = self._db.execute("SELECT canary_version, outcome, reason, decision_json, announced FROM decisions"
                                   " WHERE canary_version = ?", (canary_version,)).fetchone()
        return StoredDecision(row[0], row[1], row[2], row[3], bool(row[4])) if row else None

    def decide(self, canary_version: str, outcome: str, reason: str, decision_json: str) -> StoredDecision:
        """The first decision on a version stands; returns the one stored."""
        with self._tx() as db:
            db.execute("INSERT INTO decisions (canary_version, outcome, reason, decision_json, decided_at)"
                       " VALUES (?, ?, ?, ?, ?) ON CONFLICT(canary_version) DO NOTHING",
                       (canary_version, outcome, reason, decision_json, time.time()))
        found = self.decision(canary_version)
        assert found is not None
        return found

    def mark_announced(self, canary_version: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE decisions SET announced = 1 WHERE canary_version = ?", (canary_version,))

