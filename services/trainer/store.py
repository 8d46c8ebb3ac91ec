"""The trainer's durable state in one SQLite file: preferences, prompts, runs and the
run lock.

Kafka delivers at least once, so a redelivered preference (same id, or the same pair
of the same ranking revision) is ignored and never counts twice toward the threshold.
Each preference gets a monotonically increasing `seq`; a run records the highest `seq`
it trained on (its watermark), so "new since the last training" is one indexed count.
The service and its training child both open the file (WAL mode), which is why the
lock lives here too: it survives restarts of either.

Revised rankings: the store holds one revision of each task's ranking, the newest
(ordered by the event's `revision_at`, or `created_at` from schema-1 producers). The
first pair of a newer revision marks every pair of the older one `superseded_by` it:
superseded rows are kept as history but are in no snapshot and no count. A pair the
new revision repeats unchanged (same direction and margin) takes its old row back in
place, `seq` included, so it is not new training data; a flipped or re-weighted pair
gets a new row and counts as new once; a pair the new revision no longer has (now a
tie) stays superseded. An older revision arriving after a newer one (a redelivery)
is ignored. Until a revision's last pair has arrived a snapshot holds only part of
it; its pairs travel back to back on one partition, so that window is milliseconds.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.contracts import ChatMessage, ModelOutput, Preference
from shared.sqlite_wal import connect_wal

# Runs whose training finished: their watermark marks preferences as used.
TRAINED_STATES = ("succeeded", "gated")
ACTIVE_STATES = ("queued", "started")

SCHEMA = """
CREATE TABLE IF NOT EXISTS preferences (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    preference_id TEXT NOT NULL UNIQUE,
    ranking_id TEXT NOT NULL, task_id TEXT NOT NULL, output_id TEXT NOT NULL,
    prompt_json TEXT NOT NULL, prompt_hash TEXT NOT NULL,
    chosen TEXT NOT NULL, rejected TEXT NOT NULL,
    margin REAL NOT NULL, agreement REAL NOT NULL, annotator_count INTEGER NOT NULL,
    guideline_version TEXT NOT NULL, created_at TEXT NOT NULL, stored_at REAL NOT NULL,
    pair_key TEXT, revision_at REAL, superseded_by TEXT,
    source TEXT NOT NULL DEFAULT 'ranking', weight REAL NOT NULL DEFAULT 1.0
);
CREATE TABLE IF NOT EXISTS task_revisions (
    task_id TEXT PRIMARY KEY, ranking_id TEXT NOT NULL, revision_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS prompts (
    output_id TEXT PRIMARY KEY, prompt_json TEXT NOT NULL, prompt_hash TEXT NOT NULL,
    stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, state TEXT NOT NULL, trigger TEXT NOT NULL, reason TEXT,
    created_at REAL NOT NULL, finished_at REAL, watermark INTEGER NOT NULL,
    preference_count INTEGER NOT NULL, model_version TEXT, metrics_json TEXT
);
CREATE TABLE IF NOT EXISTS announced_promotions (
    model_version TEXT PRIMARY KEY, seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS run_lock (
    id INTEGER PRIMARY KEY CHECK (id = 1), run_id TEXT NOT NULL, pid INTEGER NOT NULL,
    host TEXT NOT NULL, heartbeat_at REAL NOT NULL
);
"""


# Columns added to `preferences` after its first release (see _upgrade).
REVISION_COLUMNS = {"pair_key": "TEXT", "revision_at": "REAL", "superseded_by": "TEXT"}
# Added with preference schema 3: where a pair came from and its weight in the reward
# model's loss (rows stored before read as annotator rankings of weight 1).
ORIGIN_COLUMNS = {"source": "TEXT NOT NULL DEFAULT 'ranking'", "weight": "REAL NOT NULL DEFAULT 1.0"}
LIVE = "superseded_by IS NULL"

# What storing a preference did: only "new" counts toward the training trigger.
NEW, UNCHANGED, DUPLICATE, STALE = "new", "unchanged", "duplicate", "stale"


def revision_time(pref: Preference) -> float:
    """Orders the revisions of one task's ranking (epoch seconds)."""
    return (pref.revision_at or pref.created_at).timestamp()


def prompt_hash(messages: list[dict[str, str]]) -> str:
    """Canonical hash of a prompt: the key of the held-out split, so one prompt is
    never both trained on and evaluated on."""
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_heldout(phash: str, fraction: float) -> bool:
    return int(phash[:8], 16) / 0xFFFFFFFF < fraction


def _messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


@dataclass(frozen=True)
class PreferenceRow:
    seq: int
    preference_id: str
    prompt: list[dict[str, str]]
    prompt_hash: str
    chosen: str
    rejected: str
    margin: float
    guideline_version: str
    created_at: str
    source: str = "ranking"
    weight: float = 1.0

    @classmethod
    def of(cls, r: sqlite3.Row) -> "PreferenceRow":
        return cls(seq=r["seq"], preference_id=r["preference_id"], prompt=json.loads(r["prompt_json"]),
                   prompt_hash=r["prompt_hash"], chosen=r["chosen"], rejected=r["rejected"], margin=r["margin"],
                   guideline_version=r["guideline_version"], created_at=r["created_at"], source=r["source"],
                   weight=r["weight"])


@dataclass(frozen=True)
class TrainingWindow:
    """What one run trains and evaluates on (`PreferenceStore.training_window`); rows in
    `seq` order."""

    new: list[PreferenceRow]  # training pairs above `start`: all of them, or the newest `new_max`
    replay: list[PreferenceRow]  # a recency-weighted sample of the older training pairs
    heldout: list[PreferenceRow]  # a stable sample of the held-out pairs (by hash, the same in every run)
    start: int  # new = `seq` above this: the watermark of the last finished run before this one
    new_total: int  # live training pairs above `start` (before the cap)
    replay_pool: int  # training pairs the replay was drawn from
    heldout_total: int  # live held-out pairs up to the watermark

    @property
    def train(self) -> list[PreferenceRow]:
        return sorted(self.new + self.replay, key=lambda r: r.seq)

    def describe(self) -> dict[str, int]:
        """For the manifest: how the run's data was chosen."""
        return {"start": self.start, "new": len(self.new), "new_total": self.new_total,
                "replay": len(self.replay), "replay_pool": self.replay_pool,
                "heldout": len(self.heldout), "heldout_total": self.heldout_total}


MASK64 = (1 << 64) - 1


def seed64(text: str) -> int:
    """A string seed as 64 bits (the run's replay seed; "heldout" for the held-out sample)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def mix64(seed: int, seq: int) -> int:
    """A 64-bit hash of (seed, seq): splitmix64's finaliser, cheap enough for every row."""
    z = (seed + seq * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def replay_key(seed: int, seq: int, age: int, half_life: float) -> float:
    """Weighted sampling without replacement (Efraimidis-Spirakis A-Res): the `k` largest
    u^(1/w) are a sample drawn with probabilities proportional to w. Kept in log space,
    log(w) - log(-log u) (the same order, no underflow for old rows), with w =
    2^(-age/half_life) and u a hash of (seed, seq): deterministic for a seed."""
    u = (mix64(seed, seq) + 0.5) * 2.0**-64
    log_w = -age * math.log(2) / half_life if half_life > 0 else 0.0
    return log_w - math.log(-math.log(u))


HELDOUT_SEED = seed64("heldout")


def heldout_key(seq: int) -> int:
    """The held-out sample is the `k` smallest of these (bottom-k): the same in every run,
    and a pair leaves it only for a newer one with a smaller key."""
    return mix64(HELDOUT_SEED, seq)


@dataclass(frozen=True)
class RunRow:
    run_id: str
    state: str
    trigger: str
    reason: str | None
    created_at: float
    finished_at: float | None
    watermark: int
    preference_count: int
    model_version: str | None
    metrics: dict[str, float]


@dataclass(frozen=True)
class LockHolder:
    run_id: str
    pid: int
    host: str
    heartbeat_at: float


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PreferenceStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect_wal(self.path, timeout_s=30)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA synchronous=FULL")  # durable before the offset is committed
        self._conn.executescript(SCHEMA)
        self._upgrade()

    def _upgrade(self) -> None:
        """Bring a store written before revisions were tracked up to date, once (the
        service and its training child may both open it: the check is inside the
        write transaction). Its preference ids are pair keys (schema 1); where the old
        code stored two revisions of one task side by side, the newest one stays."""
        with self._tx() as conn:
            have = {row["name"] for row in conn.execute("PRAGMA table_info(preferences)")}
            missing = [name for name in REVISION_COLUMNS if name not in have]
            for name in missing:
                conn.execute(f"ALTER TABLE preferences ADD COLUMN {name} {REVISION_COLUMNS[name]}")
            if missing:
                conn.execute("UPDATE preferences SET pair_key = preference_id WHERE pair_key IS NULL")
                newest = ("(SELECT q.ranking_id FROM preferences q WHERE q.task_id = preferences.task_id"
                          " ORDER BY q.seq DESC LIMIT 1)")
                conn.execute(f"UPDATE preferences SET superseded_by = {newest} WHERE ranking_id != {newest}")
            for name, declaration in ORIGIN_COLUMNS.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE preferences ADD COLUMN {name} {declaration}")
            conn.execute("CREATE INDEX IF NOT EXISTS preferences_by_pair ON preferences (task_id, pair_key)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: takes the write lock up front, so check-then-write (the run
        lock) is atomic across processes."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- ingest ---------------------------------------------------------------------

    def add_preference(self, pref: Preference) -> bool:
        """Store a preference; True only if it is new training data (see the module
        doc): False for a redelivery, an unchanged pair of a newer revision, or a
        pair of an older revision."""
        return self.store_preference(pref) == NEW

    def store_preference(self, pref: Preference) -> str:
        """Store a preference, superseding an older revision of its task's ranking;
        returns NEW, UNCHANGED, DUPLICATE or STALE."""
        prompt = _messages(pref.prompt)
        at = revision_time(pref)
        with self._tx() as conn:
            current = self._current_revision(conn, pref.task_id)
            if current is None or current[0] != pref.ranking_id:
                if current is not None:
                    if (at, pref.ranking_id) < (current[1], current[0]):
                        return STALE
                    conn.execute(f"UPDATE preferences SET superseded_by = ? WHERE task_id = ? AND {LIVE}",
                                 (pref.ranking_id, pref.task_id))
                conn.execute("INSERT INTO task_revisions (task_id, ranking_id, revision_at) VALUES (?, ?, ?)"
                             " ON CONFLICT(task_id) DO UPDATE SET ranking_id = excluded.ranking_id,"
                             " revision_at = excluded.revision_at", (pref.task_id, pref.ranking_id, at))
            if conn.execute(f"SELECT 1 FROM preferences WHERE task_id = ? AND pair_key = ? AND {LIVE}",
                            (pref.task_id, pref.pair_key)).fetchone():
                return DUPLICATE
            replaced = conn.execute(
                "SELECT seq, chosen, rejected, margin, prompt_hash, guideline_version FROM preferences"
                " WHERE task_id = ? AND pair_key = ? AND superseded_by = ?",
                (pref.task_id, pref.pair_key, pref.ranking_id)).fetchone()
            if replaced is not None and (
                    replaced["chosen"], replaced["rejected"], replaced["margin"], replaced["prompt_hash"],
                    replaced["guideline_version"]) == (pref.chosen.text, pref.rejected.text, pref.margin,
                                                       prompt_hash(prompt), pref.guideline_version):
                conn.execute(
                    "UPDATE preferences SET preference_id = ?, ranking_id = ?, revision_at = ?, agreement = ?,"
                    " annotator_count = ?, created_at = ?, superseded_by = NULL WHERE seq = ?",
                    (pref.preference_id, pref.ranking_id, at, pref.agreement, pref.annotator_count,
                     pref.created_at.isoformat(), replaced["seq"]))
                return UNCHANGED
            # a schema-1 id is the pair key, the same in every revision: its old row goes
            conn.execute("DELETE FROM preferences WHERE preference_id = ?", (pref.preference_id,))
            conn.execute(
                "INSERT INTO preferences (preference_id, ranking_id, task_id, output_id,"
                " prompt_json, prompt_hash, chosen, rejected, margin, agreement, annotator_count,"
                " guideline_version, created_at, stored_at, pair_key, revision_at, source, weight)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (pref.preference_id, pref.ranking_id, pref.task_id, pref.output_id,
                 json.dumps(prompt), prompt_hash(prompt), pref.chosen.text, pref.rejected.text,
                 pref.margin, pref.agreement, pref.annotator_count, pref.guideline_version,
                 pref.created_at.isoformat(), time.time(), pref.pair_key, at, pref.source, pref.weight),
            )
            return NEW

    @staticmethod
    def _current_revision(conn: sqlite3.Connection, task_id: str) -> tuple[str, float] | None:
        """(ranking id, revision time) of the revision the store holds for a task."""
        row = conn.execute("SELECT ranking_id, revision_at FROM task_revisions WHERE task_id = ?",
                           (task_id,)).fetchone()
        if row is not None:
            return str(row["ranking_id"]), float(row["revision_at"])
        # rows stored before revisions were tracked: their newest revision
        row = conn.execute(f"SELECT ranking_id, revision_at, created_at FROM preferences WHERE task_id = ?"
                           f" AND {LIVE} ORDER BY seq DESC LIMIT 1", (task_id,)).fetchone()
        if row is None:
            return None
        at = row["revision_at"] if row["revision_at"] is not None else (
            datetime.fromisoformat(row["created_at"]).timestamp())
        return str(row["ranking_id"]), float(at)

    def add_output(self, output: ModelOutput) -> bool:
        """Keep the output's conversation as a PPO prompt; False on a redelivery."""
        prompt = _messages(output.conversation)
        if prompt[-1]["role"] == "assistant":  # the prompt is what comes before an answer
            prompt = prompt[:-1] or prompt
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO prompts (output_id, prompt_json, prompt_hash, stored_at) VALUES (?,?,?,?)",
                (output.output_id, json.dumps(prompt), prompt_hash(prompt), time.time()),
            )
            return cur.rowcount == 1

    # -- reads ----------------------------------------------------------------------

    def _scalar(self, sql: str, *args: Any) -> Any:
        with self._lock:
            return self._conn.execute(sql, args).fetchone()[0]

    def preference_count(self) -> int:
        return int(self._scalar(f"SELECT COUNT(*) FROM preferences WHERE {LIVE}"))

    def max_seq(self) -> int:
        return int(self._scalar("SELECT COALESCE(MAX(seq), 0) FROM preferences"))

    def trained_watermark(self) -> int:
        marks = ",".join("?" * len(TRAINED_STATES))
        return int(self._scalar(f"SELECT COALESCE(MAX(watermark), 0) FROM runs WHERE state IN ({marks})",
                                *TRAINED_STATES))

    def new_since_last_training(self) -> int:
        return int(self._scalar(f"SELECT COUNT(*) FROM preferences WHERE seq > ? AND {LIVE}",
                                self.trained_watermark()))

    def preferences_upto(self, watermark: int) -> list[PreferenceRow]:
        with self._lock:
            rows = self._conn.execute(f"SELECT * FROM preferences WHERE seq <= ? AND {LIVE} ORDER BY seq",
                                      (watermark,)).fetchall()
        return [PreferenceRow.of(r) for r in rows]

    def window_start(self, watermark: int, run_id: str = "") -> int:
        """The watermark of the newest finished run below `watermark` (not `run_id`
        itself): a run's new preferences are the ones above it. Below, not at: a rerun
        of a run, or a second run at the same watermark, gets the same window again."""
        marks = ",".join("?" * len(TRAINED_STATES))
        return int(self._scalar(f"SELECT COALESCE(MAX(watermark), 0) FROM runs WHERE state IN ({marks})"
                                " AND watermark < ? AND run_id != ?", *TRAINED_STATES, watermark, run_id))

    def training_window(self, watermark: int, *, heldout_fraction: float, start: int, seed: str,
                        new_max: int = 0, replay_size: int = 0, replay_half_life: float = 0.0,
                        heldout_max: int = 0, chunk: int = 2048) -> TrainingWindow:
        """A run's bounded share of the live preferences up to `watermark`: the training
        pairs above `start` (the newest `new_max`; 0 = all), `replay_size` older training
        pairs sampled by recency (`replay_key`, deterministic for `seed`), and at most
        `heldout_max` held-out pairs (0 = all; `heldout_key`, the same sample in every
        run). Split by prompt hash as every snapshot is.

        Streamed: one pass over (seq, prompt_hash) of the live rows, newest first, from a
        cursor `chunk` rows at a time, keeping only the chosen `seq`s (two bounded heaps
        and the new ones), then the chosen rows read in full: memory is the window's, not
        the store's. Both reads are one read transaction, so they see the same rows."""
        new: list[int] = []
        replay: list[tuple[float, int]] = []  # min-heap: the `replay_size` largest keys
        heldout: list[tuple[int, int]] = []  # max-heap (negated): the `heldout_max` smallest keys
        new_total = pool = heldout_total = 0
        replay_seed = seed64(seed)
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                cursor = self._conn.cursor()
                cursor.row_factory = None  # plain tuples: this loop sees every row
                cursor.execute(f"SELECT seq, prompt_hash FROM preferences WHERE seq <= ? AND {LIVE}"
                               " ORDER BY seq DESC", (watermark,))
                while rows := cursor.fetchmany(chunk):
                    for seq, phash in rows:
                        if is_heldout(phash, heldout_fraction):
                            heldout_total += 1
                            item = (-heldout_key(seq), seq)
                            if not heldout_max or len(heldout) < heldout_max:
                                heapq.heappush(heldout, item)
                            elif item > heldout[0]:
                                heapq.heapreplace(heldout, item)
                            continue
                        if seq > start:
                            new_total += 1
                            if not new_max or len(new) < new_max:
                                new.append(seq)
                                continue
                        pool += 1
                        if replay_size:
                            key = (replay_key(replay_seed, seq, watermark - seq, replay_half_life), seq)
                            if len(replay) < replay_size:
                                heapq.heappush(replay, key)
                            elif key > replay[0]:
                                heapq.heapreplace(replay, key)
                rows_of = self._rows_by_seq([*new, *(s for _k, s in replay), *(s for _k, s in heldout)])
            finally:
                self._conn.execute("COMMIT")
        return TrainingWindow(new=[rows_of[s] for s in sorted(new)],
                              replay=[rows_of[s] for s in sorted(s for _k, s in replay)],
                              heldout=[rows_of[s] for s in sorted(s for _k, s in heldout)],
                              start=start, new_total=new_total, replay_pool=pool, heldout_total=heldout_total)

    def _rows_by_seq(self, seqs: list[int], chunk: int = 500) -> dict[int, PreferenceRow]:
        found: dict[int, PreferenceRow] = {}
        for at in range(0, len(seqs), chunk):
            part = seqs[at:at + chunk]
            for r in self._conn.execute(f"SELECT * FROM preferences WHERE seq IN ({','.join('?' * len(part))})",
                                        part):
                found[r["seq"]] = PreferenceRow.of(r)
        return found

    def prompts(self, limit: int = 10_000) -> list[tuple[str, list[dict[str, str]]]]:
        """(hash, messages) of every distinct prompt: captured outputs plus preference prompts."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT prompt_hash, MIN(prompt_json) AS p FROM (SELECT prompt_hash, prompt_json FROM prompts"
                " UNION ALL SELECT prompt_hash, prompt_json FROM preferences) GROUP BY prompt_hash"
                " ORDER BY prompt_hash LIMIT ?", (limit,)).fetchall()
        return [(r["prompt_hash"], json.loads(r["p"])) for r in rows]

    # -- runs -----------------------------------------------------------------------

    # -- promotions seen on rlhf.model-updates (see announcer.py) ----------------------

    def mark_announced(self, model_version: str) -> None:
        """A `promoted` event for `model_version` is on the topic (idempotent)."""
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO announced_promotions VALUES (?, ?)", (model_version, time.time()))

    def is_announced(self, model_version: str) -> bool:
        return self._scalar("SELECT COUNT(*) FROM announced_promotions WHERE model_version = ?", model_version) > 0

    def create_run(self, run_id: str, trigger: str, watermark: int, preference_count: int) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO runs (run_id, state, trigger, created_at, watermark, preference_count)"
                         " VALUES (?, 'queued', ?, ?, ?, ?)", (run_id, trigger, time.time(), watermark,
                                                               preference_count))

    def set_run_state(self, run_id: str, state: str, *, reason: str | None = None,
                      model_version: str | None = None, metrics: dict[str, float] | None = None) -> None:
        terminal = state not in ACTIVE_STATES
        with self._tx() as conn:
            conn.execute(
                "UPDATE runs SET state = ?, reason = COALESCE(?, reason), model_version = COALESCE(?, model_version),"
                " metrics_json = COALESCE(?, metrics_json), finished_at = CASE WHEN ? THEN ? ELSE finished_at END"
                " WHERE run_id = ?",
                (state, reason, model_version, json.dumps(metrics) if metrics is not None else None,
                 terminal, time.time(), run_id))

    def get_run(self, run_id: str) -> RunRow | None:
        with self._lock:
            r = self._conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return self._run_row(r) if r else None

    def runs(self) -> list[RunRow]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM runs ORDER BY created_at").fetchall()
        return [self._run_row(r) for r in rows]

    def run_counts(self) -> dict[str, int]:
        """Runs by state over the whole history (durable: what a restart must not reset)."""
        with self._lock:
            rows = self._conn.execute("SELECT state, COUNT(*) FROM runs GROUP BY state").fetchall()
        return {str(state): int(count) for state, count in rows}

    def last_run_started_at(self) -> float | None:
        value = self._scalar("SELECT MAX(created_at) FROM runs")
        return float(value) if value is not None else None

    @staticmethod
    def _run_row(r: sqlite3.Row) -> RunRow:
        return RunRow(run_id=r["run_id"], state=r["state"], trigger=r["trigger"], reason=r["reason"],
                      created_at=r["created_at"], finished_at=r["finished_at"], watermark=r["watermark"],
                      preference_count=r["preference_count"], model_version=r["model_version"],
                      metrics=json.loads(r["metrics_json"]) if r["metrics_json"] else {})

    # -- the one-run-at-a-time lock -------------------------------------------------

    def lock_holder(self) -> LockHolder | None:
        with self._lock:
            r = self._conn.execute("SELECT * FROM run_lock WHERE id = 1").fetchone()
        return LockHolder(r["run_id"], r["pid"], r["host"], r["heartbeat_at"]) if r else None

    def is_stale(self, holder: LockHolder, stale_s: float) -> bool:
        """Dead on this host, or silent for `stale_s` (another host or a hung process)."""
        if holder.host == socket.gethostname() and not pid_alive(holder.pid):
            return True
        return time.time() - holder.heartbeat_at > stale_s

    def try_lock(self, run_id: str, stale_s: float, pid: int | None = None) -> tuple[bool, str | None]:
        """Take the lock for `run_id`. Returns (taken, reclaimed_run_id): a stale holder's
        run is marked failed in the same transaction, so it can never finish later."""
        pid = os.getpid() if pid is None else pid
        with self._tx() as conn:
            r = conn.execute("SELECT * FROM run_lock WHERE id = 1").fetchone()
            reclaimed = None
            if r is not None:
                holder = LockHolder(r["run_id"], r["pid"], r["host"], r["heartbeat_at"])
                if not self.is_stale(holder, stale_s):
                    return False, None
                reclaimed = holder.run_id
                conn.execute("UPDATE runs SET state = 'failed', finished_at = ?, reason = ? WHERE run_id = ?"
                             " AND state IN ('queued', 'started')",
                             (time.time(), "trainer process died mid-run (stale lock reclaimed)", reclaimed))
                conn.execute("DELETE FROM run_lock WHERE id = 1")
            conn.execute("INSERT INTO run_lock (id, run_id, pid, host, heartbeat_at) VALUES (1, ?, ?, ?, ?)",
                         (run_id, pid, socket.gethostname(), time.time()))
            return True, reclaimed

    def heartbeat(self, run_id: str) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE run_lock SET heartbeat_at = ? WHERE id = 1 AND run_id = ?", (time.time(), run_id))

    def release_lock(self, run_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM run_lock WHERE id = 1 AND run_id = ?", (run_id,))

    def fail_orphaned_runs(self, reason: str) -> list[str]:
        """Runs left active with no live lock (the service restarted mid-run): failed."""
        holder = self.lock_holder()
        live = {holder.run_id} if holder else set()
        orphans = [r.run_id for r in self.runs() if r.state in ACTIVE_STATES and r.run_id not in live]
        for run_id in orphans:
            self.set_run_state(run_id, "failed", reason=reason)
        return orphans
