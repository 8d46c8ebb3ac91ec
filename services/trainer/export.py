"""`rlhf-loop export preferences|rankings`: the trainer's store as a dataset file.

Preferences come out as TRL's conversational preference rows, what `RewardTrainer` and
`DPOTrainer` read unchanged (`reward_model.pair_rows` builds the same rows for the
trainer's own finetune step):

    prompt   = the conversation before the answer, [{"role", "content"}, ...]
    chosen   = [{"role": "assistant", "content": text}]
    rejected = [{"role": "assistant", "content": text}]
    margin   = the Borda score gap of the pair (mean rank distance over annotators)

plus lineage columns (LINEAGE). `--text` gives TRL's standard (plain string) format
instead. Rankings are rebuilt from the stored pairs, one row per ranking revision (see
`ranking_record` for what the pairs can and cannot tell).

Streaming: one read-only SQLite connection, one read transaction (the count and the
rows see one snapshot; WAL, so the trainer keeps writing meanwhile), rows fetched
FETCH_ROWS at a time and written as they come: jsonl line by line, parquet in row
groups of at most BATCH_ROWS rows / BATCH_BYTES bytes of text, hf through
`datasets.Dataset.from_generator` (Arrow batches on disk) then `save_to_disk`. Memory
is bounded by one batch, not by the store. A file is written under a temporary name
and renamed when complete, so a failed export leaves no half file behind.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .store import LIVE, PreferenceStore

FORMATS = ("jsonl", "parquet", "hf")
FETCH_ROWS = 1_000
BATCH_ROWS = 2_000
BATCH_BYTES = 32 * 2**20
SCORE_EPS = 1e-6

# Lineage columns of a preference row, after prompt/chosen/rejected/margin.
LINEAGE = ("preference_id", "ranking_id", "task_id", "output_id", "guideline_version", "annotator_count",
           "agreement", "created_at", "stored_at", "revision_at", "superseded_by", "seq", "prompt_hash")


class ExportError(Exception):
    """What the user must fix (no store, a bad --since): exit status 2."""


# -- what to export ------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFilter:
    since: float | None = None  # stored_at >= since (epoch seconds, the trainer's clock)
    guideline_versions: tuple[str, ...] = ()
    include_superseded: bool = False

    def where(self, since_column: str = "stored_at") -> tuple[str, list[Any]]:
        clauses: list[str] = [] if self.include_superseded else [LIVE]
        args: list[Any] = []
        if self.since is not None:
            clauses.append(f"{since_column} >= ?")
            args.append(self.since)
        if self.guideline_versions:
            clauses.append(f"guideline_version IN ({','.join('?' * len(self.guideline_versions))})")
            args.extend(self.guideline_versions)
        return (" AND ".join(clauses) or "1"), args


def parse_since(value: str) -> float:
    """Unix seconds (`1764460800`, `1764460800.5`) or an ISO 8601 date or time
    (`2026-11-30`, `2026-11-30T12:00:00+01:00`; without an offset: UTC)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ExportError(f"--since {value!r}: neither unix seconds nor an ISO 8601 date/time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def default_store_path() -> Path:
    """Where the trainer keeps it: DATA_DIR/trainer/store.sqlite (RLHF_DATA_DIR)."""
    from .settings import TrainerSettings

    return Path(TrainerSettings().data_dir) / "trainer" / "store.sqlite"


# -- reading -------------------------------------------------------------------------


@contextmanager
def read_snapshot(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection inside one read transaction. The store is opened once
    the normal way first, which brings a store from before revision tracking up to
    date (what the trainer does on start) and writes nothing otherwise."""
    if not path.is_file():
        raise ExportError(f"no trainer store at {path} (set --store, --data-dir or RLHF_DATA_DIR)")
    try:
        PreferenceStore(path).close()
    except sqlite3.OperationalError:  # a read-only copy: fine if its schema is current
        pass
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("BEGIN")
        yield conn
    finally:
        conn.close()


def _fetch(conn: sqlite3.Connection, sql: str, args: list[Any]) -> Iterator[sqlite3.Row]:
    cursor = conn.execute(sql, args)
    while batch := cursor.fetchmany(FETCH_ROWS):
        yield from batch


def _progress(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=" rows", file=sys.stderr, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def prompt_text(messages: list[dict[str, str]]) -> str:
    """A conversation as one string (`--text`): a lone user turn is its content, a
    longer one `role: content` blocks separated by a blank line."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def preference_record(row: sqlite3.Row, text: bool = False) -> dict[str, Any]:
    prompt = json.loads(row["prompt_json"])
    record: dict[str, Any]
    if text:
        record = {"prompt": prompt_text(prompt), "chosen": row["chosen"], "rejected": row["rejected"]}
    else:
        record = {"prompt": prompt, "chosen": [{"role": "assistant", "content": row["chosen"]}],
                  "rejected": [{"role": "assistant", "content": row["rejected"]}]}
    record["margin"] = float(row["margin"])
    for name in LINEAGE:
        record[name] = row[name]
    return record


def _preference_queries(filt: ExportFilter) -> tuple[str, str, list[Any]]:
    where, args = filt.where()
    return (f"SELECT COUNT(*) FROM preferences WHERE {where}",
            f"SELECT * FROM preferences WHERE {where} ORDER BY seq", args)


def preference_records(path: Path, filt: ExportFilter, text: bool = False,
                       progress: bool = False) -> Iterator[dict[str, Any]]:
    """The store's preferences in `seq` order (the order the trainer received them)."""
    count_sql, rows_sql, args = _preference_queries(filt)
    with read_snapshot(path) as conn:
        total = conn.execute(count_sql, args).fetchone()[0]
        with _progress(total, "preferences", progress) as bar:
            for row in _fetch(conn, rows_sql, args):
                yield preference_record(row, text)
                bar.update(1)


def reconstruct_scores(pairs: Iterable[tuple[str, str, float]]) -> tuple[dict[str, float], bool]:
    """Aggregated Borda scores (the lowest 0) from (chosen, rejected, margin) pairs, and
    whether the pairs agree with one score per answer (margin = score gap, connected)."""
    edges = list(pairs)
    neighbours: dict[str, list[tuple[str, float]]] = {}
    for chosen, rejected, margin in edges:
        neighbours.setdefault(chosen, []).append((rejected, -margin))
        neighbours.setdefault(rejected, []).append((chosen, margin))
    scores: dict[str, float] = {}
    components = 0
    for start in neighbours:
        if start in scores:
            continue
        components += 1
        scores[start] = 0.0
        stack = [start]
        while stack:
            node = stack.pop()
            for other, step in neighbours[node]:
                if other not in scores:
                    scores[other] = scores[node] + step
                    stack.append(other)
    consistent = components <= 1 and all(
        chosen != rejected and abs(scores[chosen] - scores[rejected] - margin) <= SCORE_EPS
        for chosen, rejected, margin in edges)
    low = min(scores.values(), default=0.0)
    return {answer: round(score - low, 6) for answer, score in scores.items()}, consistent


def ranking_record(rows: list[sqlite3.Row]) -> dict[str, Any]:
    """One ranking revision from its stored pairs.

    Every answer of a task is in some pair unless all answers tie (then the task has
    no pair and is not in the store at all), and every two answers with different
    scores make a pair, so the pairs give all N answers and their aggregated Borda
    scores up to a constant; `rank` is 1 for the best, ties share (1, 1, 3).
    `complete`: the pairs are exactly the ones such a ranking yields (false for a
    superseded revision, whose unchanged pairs moved on to the newer one, or one whose
    pairs are still arriving). Not in the store, so not here: each annotator's ranks
    and id (only `annotator_count` and each pair's `agreement`), candidate ids and
    models (answers are identified by their text: two identical texts are one answer).
    """
    first = rows[0]
    pairs = {(r["chosen"], r["rejected"]): float(r["margin"]) for r in rows}
    scores, consistent = reconstruct_scores((c, r, m) for (c, r), m in pairs.items())
    ordered = sorted(scores.items(), key=lambda item: -item[1])
    completions = []
    for position, (answer, score) in enumerate(ordered):
        tied = position > 0 and abs(completions[-1]["score"] - score) <= SCORE_EPS
        completions.append({"content": answer, "score": score,
                            "rank": completions[-1]["rank"] if tied else position + 1})
    levels = [len(list(group)) for _, group in itertools.groupby(c["rank"] for c in completions)]
    n = len(completions)
    expected = n * (n - 1) // 2 - sum(k * (k - 1) // 2 for k in levels)
    revision_at = [r["revision_at"] for r in rows if r["revision_at"] is not None]
    return {
        "prompt": json.loads(first["prompt_json"]),
        "completions": completions,
        "ranking_id": first["ranking_id"], "task_id": first["task_id"], "output_id": first["output_id"],
        "guideline_version": first["guideline_version"],
        "annotator_count": max(int(r["annotator_count"]) for r in rows),
        "pair_count": len(rows),
        "complete": consistent and len(pairs) == len(rows) == expected,
        "consistent": consistent,
        "preference_ids": [r["preference_id"] for r in rows],
        "created_at": max(r["created_at"] for r in rows),
        "stored_at": max(float(r["stored_at"]) for r in rows),
        "revision_at": max(revision_at) if revision_at else None,
        "superseded_by": first["superseded_by"],
        "prompt_hash": first["prompt_hash"],
    }


def _ranking_queries(filt: ExportFilter) -> tuple[str, str, list[Any]]:
    base = ExportFilter(guideline_versions=filt.guideline_versions, include_superseded=filt.include_superseded)
    where, args = base.where()
    if filt.since is not None:
        where += " AND (task_id, ranking_id) IN (SELECT task_id, ranking_id FROM preferences WHERE stored_at >= ?)"
        args = [*args, filt.since]
    return (f"SELECT COUNT(*) FROM (SELECT 1 FROM preferences WHERE {where} GROUP BY task_id, ranking_id)",
            f"SELECT * FROM preferences WHERE {where} ORDER BY task_id, ranking_id, seq", args)


def ranking_records(path: Path, filt: ExportFilter, text: bool = False,
                    progress: bool = False) -> Iterator[dict[str, Any]]:
    """One row per ranking revision (live only by default). `--since` selects whole
    rankings: those with a pair stored since then."""
    del text  # rankings keep the conversational prompt
    count_sql, rows_sql, args = _ranking_queries(filt)
    with read_snapshot(path) as conn:
        total = conn.execute(count_sql, args).fetchone()[0]
        rows = _fetch(conn, rows_sql, args)
        with _progress(total, "rankings", progress) as bar:
            for _, group in itertools.groupby(rows, key=lambda r: (r["task_id"], r["ranking_id"])):
                yield ranking_record(list(group))
                bar.update(1)


def count_records(kind: str, path: Path, filt: ExportFilter) -> int:
    count_sql, _, args = (_preference_queries if kind == "preferences" else _ranking_queries)(filt)
    with read_snapshot(path) as conn:
        return int(conn.execute(count_sql, args).fetchone()[0])


# -- schemas -------------------------------------------------------------------------


def arrow_schema(kind: str, text: bool = False):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    if kind == "preferences":
        body = pa.string() if text else messages
        return pa.schema([
            ("prompt", body), ("chosen", body), ("rejected", body), ("margin", pa.float64()),
            ("preference_id", pa.string()), ("ranking_id", pa.string()), ("task_id", pa.string()),
            ("output_id", pa.string()), ("guideline_version", pa.string()), ("annotator_count", pa.int64()),
            ("agreement", pa.float64()), ("created_at", pa.string()), ("stored_at", pa.float64()),
            ("revision_at", pa.float64()), ("superseded_by", pa.string()), ("seq", pa.int64()),
            ("prompt_hash", pa.string()),
        ])
    completion = pa.struct([("content", pa.string()), ("score", pa.float64()), ("rank", pa.int64())])
    return pa.schema([
        ("prompt", messages), ("completions", pa.list_(completion)), ("ranking_id", pa.string()),
        ("task_id", pa.string()), ("output_id", pa.string()), ("guideline_version", pa.string()),
        ("annotator_count", pa.int64()), ("pair_count", pa.int64()), ("complete", pa.bool_()),
        ("consistent", pa.bool_()), ("preference_ids", pa.list_(pa.string())), ("created_at", pa.string()),
        ("stored_at", pa.float64()), ("revision_at", pa.float64()), ("superseded_by", pa.string()),
        ("prompt_hash", pa.string()),
    ])


# -- writing -------------------------------------------------------------------------


def _record_bytes(record: dict[str, Any]) -> int:
    size = 0
    for key in ("prompt", "chosen", "rejected", "completions"):
        value = record.get(key)
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, list):
            size += sum(len(item.get("content", "")) for item in value)
    return size


@contextmanager
def _replacing(target: Path) -> Iterator[Path]:
    """A temporary sibling of `target`, renamed over it once the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        yield partial
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(partial, target)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        elif partial.exists():
            partial.unlink()


def write_jsonl(records: Iterable[dict[str, Any]], output: Path | None) -> int:
    """One JSON object a line; `output` None: stdout."""
    count = 0
    if output is None:
        for count, record in enumerate(records, 1):
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return count
    with _replacing(output) as partial, partial.open("w", encoding="utf-8") as sink:
        for count, record in enumerate(records, 1):
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    return count


def write_parquet(records: Iterable[dict[str, Any]], output: Path, schema) -> int:  # type: ignore[no-untyped-def]
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = 0
    with _replacing(output) as partial, pq.ParquetWriter(partial, schema, compression="zstd") as writer:
        batch: list[dict[str, Any]] = []
        size = 0

        def flush() -> None:
            nonlocal size
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch.clear()
                size = 0

        for record in records:
            batch.append(record)
            size += _record_bytes(record)
            count += 1
            if len(batch) >= BATCH_ROWS or size >= BATCH_BYTES:
                flush()
        flush()
    return count


def write_hf(kind: str, path: Path, filt: ExportFilter, text: bool, progress: bool, output: Path,
             schema) -> int:  # type: ignore[no-untyped-def]
    """`datasets.Dataset.from_generator` (Arrow batches into a scratch cache next to
    the output) then `save_to_disk(output)`; `load_from_disk(output)` reads it."""
    import datasets

    datasets.disable_progress_bars()  # ours counts the rows
    features = datasets.Features.from_arrow_schema(schema)
    make = preference_records if kind == "preferences" else ranking_records
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.cache-", dir=output.parent) as cache, \
            _replacing(output) as partial:
        if count_records(kind, path, filt) == 0:  # from_generator refuses to make an empty split
            datasets.Dataset.from_dict({name: [] for name in schema.names}, features=features).save_to_disk(
                str(partial), num_shards=1)  # else no shard at all, which load_from_disk cannot read
            return 0
        dataset = datasets.Dataset.from_generator(
            make, features=features, cache_dir=cache,
            writer_batch_size=BATCH_ROWS,
            gen_kwargs={"path": path, "filt": filt, "text": text, "progress": progress})
        count = dataset.num_rows
        dataset.save_to_disk(str(partial), max_shard_size="500MB")
        del dataset
    return count


def export(kind: str, fmt: str, store: Path, output: Path | None, filt: ExportFilter, *, text: bool = False,
           progress: bool = True) -> int:
    """Write the store's `kind` ("preferences" or "rankings") as `fmt`; returns the row count."""
    make = preference_records if kind == "preferences" else ranking_records
    schema = arrow_schema(kind, text)
    if fmt != "jsonl" and output is None:
        raise ExportError(f"--format {fmt} needs --output PATH (stdout is for jsonl)")
    if not store.is_file():  # before anything is created at the output
        raise ExportError(f"no trainer store at {store} (set --store, --data-dir or RLHF_DATA_DIR)")
    if output is not None and output.is_dir() and not (fmt == "hf" and (output / "state.json").is_file()):
        raise ExportError(f"{output} is a directory" + ("" if fmt != "hf" else " and not a saved dataset (kept)"))
    if output is not None and output.exists() and not output.is_dir() and fmt == "hf":
        raise ExportError(f"{output} is a file; --format hf writes a directory")
    if fmt == "jsonl":
        return write_jsonl(make(store, filt, text, progress), output)
    if fmt == "parquet":
        assert output is not None
        return write_parquet(make(store, filt, text, progress), output, schema)
    assert output is not None
    return write_hf(kind, store, filt, text, progress, output, schema)


# -- the command ---------------------------------------------------------------------


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`rlhf-loop export preferences|rankings ...` (services/cli.py)."""
    parser = commands.add_parser("export", help="write the trainer's preferences or rankings as a dataset")
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind, help_text in (("preferences", "TRL preference rows: prompt/chosen/rejected/margin + lineage"),
                            ("rankings", "one row per ranking: all of a task's answers with ranks, from its pairs")):
        sub = kinds.add_parser(kind, help=help_text)
        sub.add_argument("--format", choices=FORMATS, default="parquet",
                         help="jsonl: a line per row; parquet: one file; hf: a datasets.Dataset directory"
                              " (save_to_disk). Default: parquet")
        sub.add_argument("-o", "--output", help="file (jsonl, parquet) or directory (hf); jsonl: '-' or none is"
                                                " stdout")
        sub.add_argument("--store", help="the store file (default: DATA_DIR/trainer/store.sqlite)")
        sub.add_argument("--data-dir", help="the trainer's data dir (default: RLHF_DATA_DIR or ./.rlhf-loop)")
        sub.add_argument("--since", help="only rows stored by the trainer at or after this: unix seconds or an"
                                         " ISO 8601 date/time (UTC without an offset)")
        sub.add_argument("--guideline-version", action="append", default=[], metavar="VERSION",
                         help="only these annotation guideline versions (repeatable)")
        sub.add_argument("--include-superseded", action="store_true",
                         help="also the older revisions of revised rankings (superseded_by set)")
        if kind == "preferences":
            sub.add_argument("--text", action="store_true",
                             help="plain strings (TRL standard format) instead of chat messages")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar (none when not a TTY anyway)")


def cmd_export(args: argparse.Namespace) -> int:
    if args.store:
        store = Path(args.store)
    elif args.data_dir:
        store = Path(args.data_dir) / "trainer" / "store.sqlite"
    else:
        store = default_store_path()
    output = None if args.output in (None, "-") else Path(args.output)
    try:
        filt = ExportFilter(since=parse_since(args.since) if args.since else None,
                            guideline_versions=tuple(args.guideline_version),
                            include_superseded=args.include_superseded)
        count = export(args.kind, args.format, store, output, filt, text=getattr(args, "text", False),
                       progress=not args.no_progress)
    except ExportError as error:
        print(f"rlhf-loop export: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    where = output if output is not None else "stdout"
    print(f"exported {count} {args.kind} ({args.format}) to {where}", file=sys.stderr if output is None else
          sys.stdout, flush=True)
    return 0
