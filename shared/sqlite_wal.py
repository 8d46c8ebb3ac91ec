"""Opening a SQLite file that more than one connection uses (a service and its
training child, a CLI beside a running service), in WAL mode.

Why not just `sqlite3.connect(timeout=...)` and `PRAGMA journal_mode=WAL`: SQLite does
not always call the busy handler for the journal-mode switch. When two connections
open a fresh file at once, one of them gets "database is locked" straight away,
whatever the timeout (seen in 8 of 150 tries with three openers). The switch is
retried here until the same timeout, so a concurrent open waits instead of failing.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

RETRY_PAUSE_S = 0.01


def connect_wal(path: str | Path, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    """An autocommit connection (`isolation_level=None`, usable from several threads
    under the caller's lock) with journal_mode=WAL, waiting up to `timeout_s` for
    other connections, the mode switch included."""
    conn = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False, isolation_level=None)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return conn
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                conn.close()
                raise
            time.sleep(RETRY_PAUSE_S)
