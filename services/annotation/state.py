"""The collector's durable state: the watermark and what it already published.

A small SQLite file under the data dir. The watermark bounds each poll (records
updated since it, minus an overlap); the published table makes the overlap harmless:
a record is published again only when its responses changed (a new revision: an
edit, found by a webhook or the rescan, see collector.py). Both
are written only after the broker acknowledged the events, so a crash in between
re-publishes (same deterministic ids, dropped downstream) instead of losing.

The tasks table holds the blind comparison tasks: their record in Argilla must not
carry the task (it names the versions, and annotators can read a record's metadata),
so the pusher stores the task here, keyed by task id (the record's external id),
before it pushes the record, and the collector reads it back from here.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class CollectorState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.executescript("""
            PRAGMA journal_mode=WAL;
            CREATE TABLE IF NOT EXISTS watermark (dataset TEXT PRIMARY KEY, updated_at TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS published (
                record_id TEXT PRIMARY KEY, revision TEXT NOT NULL, published_at TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS tasks (
                task_id TEXT PRIMARY KEY, task TEXT NOT NULL, stored_at TEXT NOT NULL);
        """)

    def put_tasks(self, tasks: dict[str, str]) -> None:
        """Store tasks (task id -> task JSON) in one transaction; a redelivered task
        overwrites its row (the same task, or a newer version of it), never adds one."""
        if not tasks:
            return
        now = datetime.now(timezone.utc).isoformat()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO tasks (task_id, task, stored_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(task_id) DO UPDATE SET task = excluded.task, stored_at = excluded.stored_at",
                    [(task_id, task, now) for task_id, task in tasks.items()],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def task(self, task_id: str) -> str | None:
        """The stored task JSON, or None if this state never stored that task."""
        with self._lock:
            row = self._db.execute("SELECT task FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return str(row[0]) if row else None

    def watermark(self, dataset: str) -> datetime:
        with self._lock:
            row = self._db.execute("SELECT updated_at FROM watermark WHERE dataset = ?", (dataset,)).fetchone()
        return datetime.fromisoformat(row[0]) if row else EPOCH

    def is_published(self, record_id: str, revision: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT revision FROM published WHERE record_id = ?", (record_id,)).fetchone()
        return row is not None and row[0] == revision

    def mark(self, dataset: str, published: list[tuple[str, str]], watermark: datetime | None) -> None:
        """Record what was published and move the watermark forward, in one transaction.
        `watermark` None: leave it (records read by id or by a rescan say nothing about
        what an incremental walk has seen)."""
        now = datetime.now(timezone.utc).isoformat()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO published (record_id, revision, published_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(record_id) DO UPDATE SET revision = excluded.revision, "
                    "published_at = excluded.published_at",
                    [(rid, rev, now) for rid, rev in published],
                )
                if watermark is not None:
                    self._db.execute(
                        "INSERT INTO watermark (dataset, updated_at) VALUES (?, ?) "
                        "ON CONFLICT(dataset) DO UPDATE SET updated_at = MAX(updated_at, excluded.updated_at)",
                        (dataset, watermark.astimezone(timezone.utc).isoformat()),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
