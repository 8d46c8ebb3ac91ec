"""The sampler's durable memory (SQLite under the data dir).

Kafka redelivers; the store makes a redelivered output get the decision it already
got, without counting it twice toward a budget or quota. Outputs held for a budget
window live here until the window closes, so committing their offsets loses nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    output_id  TEXT PRIMARY KEY,
    status     TEXT NOT NULL,          -- selected | held | rejected | dropped
    rule       TEXT,
    reason     TEXT NOT NULL,
    score      REAL,
    task_json  TEXT,                   -- the task, for re-emitting on redelivery
    decided_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS prompt_hashes (
    hash    TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS window_items (
    rule         TEXT NOT NULL,
    window_start REAL NOT NULL,
    output_id    TEXT NOT NULL,
    key          REAL NOT NULL,
    score        REAL NOT NULL,
    output_json  TEXT NOT NULL,
    PRIMARY KEY (rule, window_start, output_id)
);
CREATE TABLE IF NOT EXISTS quota_counts (
    rule         TEXT NOT NULL,
    window_start REAL NOT NULL,
    value        TEXT NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (rule, window_start, value)
);
"""


@dataclass(frozen=True)
class Decision:
    output_id: str
    status: str
    rule: str | None
    reason: str
    score: float | None
    task_json: str | None


@dataclass(frozen=True)
class HeldItem:
    output_id: str
    key: float
    score: float
    output_json: str


class SamplerStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # decisions ---------------------------------------------------------------

    def decision(self, output_id: str) -> Decision | None:
        row = self._db.execute(
            "SELECT output_id, status, rule, reason, score, task_json FROM decisions WHERE output_id = ?",
            (output_id,),
        ).fetchone()
        return Decision(*row) if row else None

    def record(self, decision: Decision, at: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (decision.output_id, decision.status, decision.rule, decision.reason,
                 decision.score, decision.task_json, at),
            )

    # near-duplicates ---------------------------------------------------------

    def seen_prompt(self, prompt_hash: str, since: float) -> bool:
        row = self._db.execute("SELECT seen_at FROM prompt_hashes WHERE hash = ?", (prompt_hash,)).fetchone()
        return row is not None and row[0] >= since

    def remember_prompt(self, prompt_hash: str, at: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO prompt_hashes VALUES (?, ?)", (prompt_hash, at))

    # budget windows ----------------------------------------------------------

    def hold(self, rule: str, window_start: float, item: HeldItem) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO window_items VALUES (?, ?, ?, ?, ?, ?)",
                (rule, window_start, item.output_id, item.key, item.score, item.output_json),
            )

    def closed_windows(self, now: float, window_s: dict[str, float]) -> list[tuple[str, float]]:
        rows = self._db.execute("SELECT DISTINCT rule, window_start FROM window_items").fetchall()
        return [(rule, start) for rule, start in rows if start + window_s.get(rule, 0.0) <= now]

    def held(self, rule: str, window_start: float) -> list[HeldItem]:
        rows = self._db.execute(
            "SELECT output_id, key, score, output_json FROM window_items "
            "WHERE rule = ? AND window_start = ? ORDER BY key DESC, output_id",
            (rule, window_start),
        ).fetchall()
        return [HeldItem(*row) for row in rows]

    def held_count(self, rule: str, window_start: float) -> int:
        return int(self._db.execute(
            "SELECT COUNT(*) FROM window_items WHERE rule = ? AND window_start = ?", (rule, window_start)
        ).fetchone()[0])

    def close_window(self, rule: str, window_start: float, decisions: list[Decision], at: float) -> None:
        """Record the window's outcome and forget its items, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(d.output_id, d.status, d.rule, d.reason, d.score, d.task_json, at) for d in decisions],
                )
                self._db.execute("DELETE FROM window_items WHERE rule = ? AND window_start = ?", (rule, window_start))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # quotas --------------------------------------------------------------------

    def quota_count(self, rule: str, window_start: float, value: str) -> int:
        row = self._db.execute(
            "SELECT count FROM quota_counts WHERE rule = ? AND window_start = ? AND value = ?",
            (rule, window_start, value),
        ).fetchone()
        return int(row[0]) if row else 0

    def count_quota(self, rule: str, window_start: float, values: list[str]) -> None:
        with self._lock:
            for value in values:
                self._db.execute(
                    "INSERT INTO quota_counts VALUES (?, ?, ?, 1) "
                    "ON CONFLICT(rule, window_start, value) DO UPDATE SET count = count + 1",
                    (rule, window_start, value),
                )
