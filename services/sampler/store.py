"""The sampler's durable memory (SQLite under the data dir).

Kafka redelivers; the store makes a redelivered output get the decision it already
got, without counting it twice toward a budget or quota. Outputs held for a budget
window live here until the window closes, so committing their offsets loses nothing.

A decision and everything it changes (the prompt's dedupe hash, the quota count, the
held item) are written in one transaction (`write_batch` for all the decisions of a
polled batch, `decide` for one, `close_window`): a failure or a kill before the commit
leaves no trace, so the redelivered output is decided afresh instead of meeting its
own prompt hash and being rejected as a duplicate of itself. One transaction per batch
rather than per decision matters: each commit is an fsync (`synchronous=FULL`).

Preferences read from user feedback are marked here by id (`record_preferences`),
apart from the decision: they are emitted whatever the output's decision, rejections
included, and rejections store nothing. The mark only tells a first emission (counted
in metrics) from a redelivery's; the events themselves go out every time.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
CREATE TABLE IF NOT EXISTS feedback_preferences (
    preference_id TEXT PRIMARY KEY,
    output_id     TEXT NOT NULL,
    recorded_at   REAL NOT NULL
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


@dataclass(frozen=True)
class QuotaCount:
    """One place taken in a rule's quota: (rule, window, value) gets +1."""

    rule: str
    window_start: float
    value: str


@dataclass(frozen=True)
class Held:
    """An output parked in a budget window until the window closes."""

    rule: str
    window_start: float
    item: HeldItem


@dataclass(frozen=True)
class DecisionWrite:
    """One output's decision with everything it changes."""

    decision: Decision
    at: float
    prompt_hash: str | None = None
    quota: tuple[QuotaCount, ...] = ()
    held: Held | None = None


@dataclass
class BatchWrite:
    """Everything a polled batch decided, for one transaction (`write_batch`), in the
    order it was decided; each output at most once."""

    decisions: list[DecisionWrite] = field(default_factory=list)
    preferences: list[tuple[str, list[str], float]] = field(default_factory=list)  # output, ids, at

    def __bool__(self) -> bool:
        return bool(self.decisions or self.preferences)


@dataclass(frozen=True)
class BatchWritten:
    """What `write_batch` found: decisions another writer had stored first (kept, and
    none of their changes made) and the preference ids marked for the first time."""

    already: dict[str, Decision]
    new_preferences: set[str]


class SamplerStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # durable before the offset is committed
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front, so check-then-write is atomic
        even if a second process opens the file; any error rolls everything back."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # decisions ---------------------------------------------------------------

    def decision(self, output_id: str) -> Decision | None:
        row = self._db.execute(
            "SELECT output_id, status, rule, reason, score, task_json FROM decisions WHERE output_id = ?",
            (output_id,),
        ).fetchone()
        return Decision(*row) if row else None

    def decide(self, decision: Decision, at: float, *, prompt_hash: str | None = None,
               quota: list[QuotaCount] | None = None, held: Held | None = None) -> tuple[Decision, bool]:
        """Store one output's decision with everything it changes, in one transaction.

        Idempotent on the output id: if a decision is already stored (a redelivery that
        raced past the caller's check, or a second sampler on the same file) nothing is
        written and the stored one is returned. Returns (the decision in force, whether
        this call stored it)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT output_id, status, rule, reason, score, task_json FROM decisions WHERE output_id = ?",
                (decision.output_id,),
            ).fetchone()
            if row is not None:
                return Decision(*row), False
            if prompt_hash is not None:
                db.execute("INSERT OR REPLACE INTO prompt_hashes VALUES (?, ?)", (prompt_hash, at))
            if held is not None:
                item = held.item
                db.execute("INSERT OR IGNORE INTO window_items VALUES (?, ?, ?, ?, ?, ?)",
                           (held.rule, held.window_start, item.output_id, item.key, item.score, item.output_json))
            self._count_quota(db, quota or [])
            db.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (decision.output_id, decision.status, decision.rule, decision.reason,
                        decision.score, decision.task_json, at))
        return decision, True

    def write_batch(self, batch: BatchWrite) -> BatchWritten:
        """A whole batch's decisions, prompt hashes, quota places, held items and
        preference marks, in one transaction (all or nothing).

        Idempotent on output ids like `decide`: a decision already stored (a second
        writer on the file) is returned in `already` and its changes are not written.
        The caller passes each output at most once and each change with its decision."""
        with self._tx() as db:
            already: dict[str, Decision] = {}
            ids = [w.decision.output_id for w in batch.decisions]
            for start in range(0, len(ids), 500):  # under SQLite's variable limit
                chunk = ids[start:start + 500]
                rows = db.execute(
                    "SELECT output_id, status, rule, reason, score, task_json FROM decisions "
                    f"WHERE output_id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                already.update((row[0], Decision(*row)) for row in rows)
            writes = [w for w in batch.decisions if w.decision.output_id not in already]
            db.executemany("INSERT OR REPLACE INTO prompt_hashes VALUES (?, ?)",
                           [(w.prompt_hash, w.at) for w in writes if w.prompt_hash is not None])
            db.executemany("INSERT OR IGNORE INTO window_items VALUES (?, ?, ?, ?, ?, ?)",
                           [(h.rule, h.window_start, h.item.output_id, h.item.key, h.item.score, h.item.output_json)
                            for h in (w.held for w in writes) if h is not None])
            self._count_quota(db, [place for w in writes for place in w.quota])
            db.executemany("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(d.output_id, d.status, d.rule, d.reason, d.score, d.task_json, w.at)
                            for w in writes for d in (w.decision,)])
            new: set[str] = set()
            for output_id, preference_ids, at in batch.preferences:
                for preference_id in preference_ids:
                    cursor = db.execute("INSERT OR IGNORE INTO feedback_preferences VALUES (?, ?, ?)",
                                        (preference_id, output_id, at))
                    if cursor.rowcount:
                        new.add(preference_id)
        return BatchWritten(already, new)

    def decided_ids(self) -> list[str]:
        """Every output id with a stored decision (to fill the sampler's memory)."""
        return [row[0] for row in self._db.execute("SELECT output_id FROM decisions")]

    # near-duplicates ---------------------------------------------------------

    def recent_prompts(self, since: float, limit: int) -> list[tuple[str, float]]:
        """The newest `limit` prompt hashes seen at or after `since`, oldest first."""
        rows = self._db.execute("SELECT hash, seen_at FROM prompt_hashes WHERE seen_at >= ? "
                                "ORDER BY seen_at DESC LIMIT ?", (since, limit)).fetchall()
        return [(h, at) for h, at in reversed(rows)]

    def prompt_seen_at(self, prompt_hash: str) -> float | None:
        row = self._db.execute("SELECT seen_at FROM prompt_hashes WHERE hash = ?", (prompt_hash,)).fetchone()
        return row[0] if row else None

    def seen_prompt(self, prompt_hash: str, since: float) -> bool:
        row = self._db.execute("SELECT seen_at FROM prompt_hashes WHERE hash = ?", (prompt_hash,)).fetchone()
        return row is not None and row[0] >= since

    # budget windows ----------------------------------------------------------

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

    def close_window(self, rule: str, window_start: float, decisions: list[Decision], at: float,
                     quota: list[QuotaCount] | None = None) -> None:
        """Record the window's outcome, take its quota places and forget its items, in
        one transaction: a window offered again (the tasks were not delivered) has
        counted nothing yet, so it never counts twice."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(d.output_id, d.status, d.rule, d.reason, d.score, d.task_json, at) for d in decisions],
            )
            self._count_quota(db, quota or [])
            db.execute("DELETE FROM window_items WHERE rule = ? AND window_start = ?", (rule, window_start))

    # preferences from user feedback -----------------------------------------------

    def record_preferences(self, output_id: str, preference_ids: list[str], at: float) -> set[str]:
        """Mark an output's feedback preferences as emitted, in one transaction; returns
        the ids not marked before (what a redelivery finds already marked is not new)."""
        new: set[str] = set()
        with self._tx() as db:
            for preference_id in preference_ids:
                cursor = db.execute("INSERT OR IGNORE INTO feedback_preferences VALUES (?, ?, ?)",
                                    (preference_id, output_id, at))
                if cursor.rowcount:
                    new.add(preference_id)
        return new

    # quotas --------------------------------------------------------------------

    def quota_count(self, rule: str, window_start: float, value: str) -> int:
        row = self._db.execute(
            "SELECT count FROM quota_counts WHERE rule = ? AND window_start = ? AND value = ?",
            (rule, window_start, value),
        ).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _count_quota(db: sqlite3.Connection, places: list[QuotaCount]) -> None:
        """Inside the caller's transaction: quota places are taken only with the
        decision that takes them."""
        for place in places:
            db.execute(
                "INSERT INTO quota_counts VALUES (?, ?, ?, 1) "
                "ON CONFLICT(rule, window_start, value) DO UPDATE SET count = count + 1",
                (place.rule, place.window_start, place.value),
            )
