"""`rlhf-loop export preferences|rankings`: the trainer's store, filled through
PreferenceStore with real Preference contracts (one task ranked by two annotators
and then revised), exported by the real CLI, read back with `datasets`, and trained
on with TRL's RewardTrainer as it comes out."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.annotation.preferences import preferences_for
from services.trainer.export import LINEAGE, reconstruct_scores
from services.trainer.store import NEW, UNCHANGED, PreferenceStore
from shared.contracts import AnnotatorRanking, CandidateRank, RankingResult, ranking_id_for
from tests import factories
from tests.helpers.cli import CLI, cli_env
from tests.trainer_support import make_preference

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 29, tzinfo=UTC)
PREFERENCE_COLUMNS = ["prompt", "chosen", "rejected", "margin", *LINEAGE]
RANKING_COLUMNS = ["prompt", "completions", "ranking_id", "task_id", "output_id", "guideline_version",
                   "annotator_count", "pair_count", "complete", "consistent", "preference_ids", "created_at",
                   "stored_at", "revision_at", "superseded_by", "prompt_hash"]


def _result(task, revision: str, *ranks: dict[str, int]) -> RankingResult:  # type: ignore[no-untyped-def]
    rid = ranking_id_for(task.task_id, revision)
    annotations = [AnnotatorRanking(annotator_id=f"ann-{i}", submitted_at=NOW,
                                    ranks=[CandidateRank(candidate_id=c, rank=r) for c, r in rank.items()])
                   for i, rank in enumerate(ranks, 1)]
    return RankingResult(event_id=rid, ranking_id=rid, task_id=task.task_id, output_id=task.output_id,
                         record_id="rec-1", guideline_version="g1", annotations=annotations, completed_at=NOW)


class Filled:
    """What the store holds (see `filled`)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "data" / "trainer" / "store.sqlite"
        store = PreferenceStore(self.path)
        for i in range(6):
            assert store.store_preference(make_preference(i, guideline="g1")) == NEW
        # four answers, two annotators: Borda 3, 1.5, 1.5, 0 -> 5 pairs (c1 and c2 tie)
        self.task = factories.ranking_task(factories.model_output("req-4", n=4))
        self.rev1 = _result(self.task, "rev-1", {"c0": 1, "c1": 2, "c2": 3, "c3": 4},
                            {"c0": 1, "c1": 3, "c2": 2, "c3": 4})
        for pref in preferences_for(self.rev1, self.task, revision_at=NOW):
            assert store.store_preference(pref) == NEW
        time.sleep(0.05)
        self.mid = time.time()
        time.sleep(0.05)
        for i in (6, 7):
            assert store.store_preference(make_preference(i, guideline="g2")) == NEW
        # ann-1 revises: Borda 2.5, 2, 1.5, 0 -> 6 pairs; c2 > c3 (1.5) is unchanged
        self.rev2 = _result(self.task, "rev-2", {"c0": 2, "c1": 1, "c2": 3, "c3": 4},
                            {"c0": 1, "c1": 3, "c2": 2, "c3": 4})
        outcomes = [store.store_preference(p)
                    for p in preferences_for(self.rev2, self.task, revision_at=NOW + timedelta(hours=1))]
        assert sorted(outcomes) == sorted([NEW] * 5 + [UNCHANGED])
        assert store.preference_count() == 14
        store.close()
        self.data_dir = root / "data"


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    return Filled(tmp_path_factory.mktemp("export-store"))


def export(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "export", *args], capture_output=True, text=True, timeout=120, check=False,
                          env=cli_env(**(env or {})))


def ok(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    done = export(*args, **kwargs)
    assert done.returncode == 0, done.stderr
    return done


def read_jsonl(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_parquet_export_loads_in_datasets_with_trl_rows_and_lineage(filled: Filled, tmp_path: Path) -> None:
    from datasets import load_dataset

    out = tmp_path / "prefs.parquet"
    done = ok("preferences", "--store", str(filled.path), "--format", "parquet", "-o", str(out))
    assert "exported 14 preferences (parquet)" in done.stdout
    assert done.stderr == ""  # no progress bar when stderr is not a TTY
    assert [p.name for p in tmp_path.iterdir()] == ["prefs.parquet"]  # no partial file left
    ds = load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == PREFERENCE_COLUMNS
    assert len(ds) == 14 and ds["superseded_by"] == [None] * 14  # live rows only
    assert ds["seq"] == sorted(ds["seq"])
    first = ds[0]
    assert first["prompt"] == [{"role": "user", "content": "question number 0?"}]
    assert first["chosen"] == [{"role": "assistant", "content": "here is a helpful answer 0"}]
    assert first["rejected"] == [{"role": "assistant", "content": "I am sorry, I cannot help"}]
    assert (first["task_id"], first["ranking_id"], first["output_id"], first["guideline_version"]) == (
        "task-0", "rank-0", "out-0", "g1")
    ranked = [r for r in ds if r["task_id"] == filled.task.task_id]
    assert {r["ranking_id"] for r in ranked} == {filled.rev2.ranking_id}
    assert {r["output_id"] for r in ranked} == {filled.task.output_id}
    assert {r["annotator_count"] for r in ranked} == {2}
    pairs = {(r["chosen"][0]["content"], r["rejected"][0]["content"]): r["margin"] for r in ranked}
    assert pairs == {("answer 0", "answer 1"): 0.5, ("answer 0", "answer 2"): 1.0, ("answer 0", "answer 3"): 2.5,
                     ("answer 1", "answer 2"): 0.5, ("answer 1", "answer 3"): 2.0, ("answer 2", "answer 3"): 1.5}
    assert {r["agreement"] for r in ranked} <= {0.5, 1.0}


def test_hf_export_is_a_datasets_directory_with_the_parquet_features(filled: Filled, tmp_path: Path) -> None:
    from datasets import load_dataset, load_from_disk

    ok("preferences", "--data-dir", str(filled.data_dir), "--format", "hf", "-o", str(tmp_path / "prefs-hf"))
    ok("preferences", "--data-dir", str(filled.data_dir), "-o", str(tmp_path / "prefs.parquet"))  # default parquet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefs-hf", "prefs.parquet"]  # scratch cache gone
    hf = load_from_disk(str(tmp_path / "prefs-hf"))
    pq = load_dataset("parquet", data_files=str(tmp_path / "prefs.parquet"), split="train",
                      cache_dir=str(tmp_path / "cache"))
    assert hf.features == pq.features and len(hf) == 14
    assert hf.to_list() == pq.to_list()


def test_history_filters_and_text_format(filled: Filled, tmp_path: Path) -> None:
    from datasets import load_from_disk

    out = tmp_path / "p.jsonl"
    store = ["--store", str(filled.path), "--format", "jsonl", "-o", str(out)]
    ok("preferences", *store, "--include-superseded")
    rows = read_jsonl(out)
    assert len(rows) == 18
    old = [r for r in rows if r["superseded_by"] is not None]
    assert len(old) == 4 and {r["superseded_by"] for r in old} == {filled.rev2.ranking_id}
    assert {r["ranking_id"] for r in old} == {filled.rev1.ranking_id}

    ok("preferences", *store, "--guideline-version", "g2")
    assert [r["task_id"] for r in read_jsonl(out)] == ["task-6", "task-7"]
    ok("preferences", *store, "--guideline-version", "g2", "--guideline-version", "g1")
    assert len(read_jsonl(out)) == 14

    # --since is the trainer's stored_at: the unchanged pair of rev-2 kept its rev-1 row
    ok("preferences", *store, "--since", str(filled.mid))
    rows = read_jsonl(out)
    assert len(rows) == 7 and all(r["stored_at"] >= filled.mid for r in rows)
    ok("preferences", *store, "--since", "2026-01-01")
    assert len(read_jsonl(out)) == 14
    ok("preferences", *store, "--since", "2999-01-01T00:00:00+00:00")
    assert read_jsonl(out) == []
    ok("preferences", "--store", str(filled.path), "--since", "2999-01-01", "--format", "hf",
       "-o", str(tmp_path / "hf"))
    assert len(load_from_disk(str(tmp_path / "hf"))) == 0  # an empty selection is an empty dataset

    text = ok("preferences", "--store", str(filled.path), "--format", "jsonl", "--text").stdout  # stdout
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == 14
    assert (rows[0]["prompt"], rows[0]["chosen"]) == ("question number 0?", "here is a helpful answer 0")


def test_progress_bar_on_a_terminal_only(filled: Filled, tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        done = subprocess.run([*CLI, "export", "preferences", "--store", str(filled.path), "-o",
                               str(tmp_path / "p.parquet")], stdout=subprocess.PIPE, stderr=follower, text=True,
                              timeout=120, env=cli_env(), check=False)
    finally:
        os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: drained, no writer left
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert done.returncode == 0 and "exported 14" in done.stdout
    assert "preferences: 100%" in shown.decode() and "14/14" in shown.decode()


def test_rankings_are_rebuilt_whole_from_the_pairs(filled: Filled, tmp_path: Path) -> None:
    from datasets import load_dataset

    out = tmp_path / "rankings.parquet"
    ok("rankings", "--store", str(filled.path), "-o", str(out))
    ds = load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == RANKING_COLUMNS and len(ds) == 9
    [four] = [r for r in ds if r["task_id"] == filled.task.task_id]
    assert four["ranking_id"] == filled.rev2.ranking_id and four["superseded_by"] is None
    assert four["completions"] == [{"content": "answer 0", "score": 2.5, "rank": 1},
                                   {"content": "answer 1", "score": 2.0, "rank": 2},
                                   {"content": "answer 2", "score": 1.5, "rank": 3},
                                   {"content": "answer 3", "score": 0.0, "rank": 4}]
    assert (four["pair_count"], four["complete"], four["consistent"], four["annotator_count"]) == (6, True, True, 2)
    assert four["prompt"] == [{"role": "user", "content": "question req-4"}]
    assert all(r["complete"] for r in ds)

    out = tmp_path / "rankings.jsonl"
    ok("rankings", "--store", str(filled.path), "--format", "jsonl", "-o", str(out), "--include-superseded")
    rows = read_jsonl(out)
    assert len(rows) == 10
    [old] = [r for r in rows if r["superseded_by"] is not None]
    # rev-1 had 5 pairs; its unchanged one moved to rev-2, so history holds 4: a tie kept, not complete
    assert old["ranking_id"] == filled.rev1.ranking_id
    assert [(c["content"], c["score"], c["rank"]) for c in old["completions"]] == [
        ("answer 0", 3.0, 1), ("answer 1", 1.5, 2), ("answer 2", 1.5, 2), ("answer 3", 0.0, 4)]
    assert (old["pair_count"], old["complete"], old["consistent"]) == (4, False, True)

    ok("rankings", "--store", str(filled.path), "--format", "jsonl", "-o", str(out), "--since", str(filled.mid))
    rows = read_jsonl(out)
    assert sorted(r["task_id"] for r in rows) == sorted(["task-6", "task-7", filled.task.task_id])
    assert [r["pair_count"] for r in rows if r["task_id"] == filled.task.task_id] == [6]  # the whole ranking


def test_reconstruct_scores_flags_pairs_that_disagree() -> None:
    assert reconstruct_scores([("a", "b", 1.0), ("b", "c", 1.0), ("a", "c", 2.0)]) == (
        {"a": 2.0, "b": 1.0, "c": 0.0}, True)
    assert reconstruct_scores([("a", "b", 1.0), ("b", "c", 1.0), ("a", "c", 3.0)])[1] is False
    assert reconstruct_scores([("a", "b", 1.0), ("c", "d", 1.0)])[1] is False  # two islands: no common scale


def test_errors_are_reported_not_raised(tmp_path: Path, filled: Filled) -> None:
    done = export("preferences", "--store", str(tmp_path / "missing.sqlite"), "-o", str(tmp_path / "x.parquet"))
    assert done.returncode == 2 and "no trainer store at" in done.stderr
    assert not (tmp_path / "missing.sqlite").exists() and not (tmp_path / "x.parquet").exists()
    done = export("preferences", "--store", str(filled.path), "--since", "last tuesday")
    assert done.returncode == 2 and "--since" in done.stderr
    done = export("preferences", "--store", str(filled.path), "--format", "parquet")
    assert done.returncode == 2 and "needs --output" in done.stderr
    keep = tmp_path / "keep"
    (keep / "mine.txt").parent.mkdir()
    (keep / "mine.txt").write_text("not a dataset")
    for fmt in ("parquet", "hf"):
        done = export("preferences", "--store", str(filled.path), "--format", fmt, "-o", str(keep))
        assert done.returncode == 2 and "is a directory" in done.stderr
    assert (keep / "mine.txt").read_text() == "not a dataset"
    # the default location: RLHF_DATA_DIR/trainer/store.sqlite
    done = ok("preferences", "--format", "jsonl", "-o", str(tmp_path / "d.jsonl"),
              env={"RLHF_DATA_DIR": str(filled.data_dir)})
    assert len(read_jsonl(tmp_path / "d.jsonl")) == 14


def test_reward_trainer_trains_on_the_exported_parquet_unchanged(filled: Filled, tiny_models: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    from datasets import load_dataset
    from trl import RewardConfig, RewardTrainer

    out = tmp_path / "prefs.parquet"
    ok("preferences", "--store", str(filled.path), "-o", str(out))
    ds = load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    args = RewardConfig(output_dir=str(tmp_path / "rm"), max_steps=2, per_device_train_batch_size=4,
                        learning_rate=1e-3, max_length=64, use_cpu=True, report_to=[], save_strategy="no",
                        logging_steps=1, disable_tqdm=True)
    trainer = RewardTrainer(model=str(tiny_models[1]), args=args, train_dataset=ds)
    result = trainer.train()
    assert trainer.state.global_step == 2 and math.isfinite(result.training_loss)
    assert len(trainer.train_dataset) == 14  # nothing dropped by the length filter


# -- streaming: memory does not grow with the store ------------------------------------


def _synthetic_store(path: Path, rows: int, seed: int = 0) -> int:
    """`rows` random, incompressible preferences written straight into the store's
    table (the same columns store_preference fills); returns their text bytes."""
    PreferenceStore(path).close()
    rng = __import__("random").Random(seed)
    text_bytes = 0
    conn = sqlite3.connect(path)
    with conn:
        batch = []
        for i in range(rows):
            prompt = json.dumps([{"role": "user", "content": rng.randbytes(300).hex()}])
            chosen, rejected = rng.randbytes(350).hex(), rng.randbytes(350).hex()
            text_bytes += len(prompt) + len(chosen) + len(rejected)
            batch.append((f"p{i}", f"r{i}", f"t{i}", f"o{i}", prompt, f"h{i}", chosen, rejected, 1.0, 1.0, 1, "g1",
                          NOW.isoformat(), 1e9 + i, f"k{i}", 1e9))
            if len(batch) == 5_000 or i == rows - 1:
                conn.executemany("INSERT INTO preferences (preference_id, ranking_id, task_id, output_id,"
                                 " prompt_json, prompt_hash, chosen, rejected, margin, agreement,"
                                 " annotator_count, guideline_version, created_at, stored_at, pair_key,"
                                 " revision_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", batch)
                batch.clear()
    conn.close()
    return text_bytes


# The real `main`, reporting its own peak RSS at exit: VmHWM belongs to the process's
# memory map, which exec makes new (ru_maxrss of a child would start at the forking
# pytest process's size).
PEAK_RSS = """import atexit, sys
def peak():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    open(sys.argv[1], "w").write(line.split()[1])
atexit.register(peak)
from services.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _peak_rss_mb(tmp_path: Path, *args: str) -> tuple[float, float]:
    """Run `rlhf-loop export ARGS`: its peak RSS (VmHWM, exact) and its peak anonymous
    RSS (RssAnon sampled every 20 ms: the heap, without memory-mapped files), MiB."""
    report = tmp_path / "vmhwm"
    process = subprocess.Popen([CLI[0], "-c", PEAK_RSS, str(report), "export", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=cli_env())
    anon = 0
    while process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/status") as status:
                line = next(x for x in status if x.startswith("RssAnon:"))
            anon = max(anon, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            pass
        time.sleep(0.02)
    assert process.wait(timeout=120) == 0, process.stderr.read() if process.stderr else ""
    return int(report.read_text()) / 1024, anon / 1024  # kB


@pytest.mark.timeout(240)
def test_streaming_export_memory_does_not_grow_with_the_store(tmp_path: Path) -> None:
    """50k rows (~100 MiB of text) take no more memory to export than 1k rows, give or
    take a batch. hf is judged on its heap: `datasets` memory-maps the Arrow file it
    builds while save_to_disk copies it, which adds the file's pages to RSS (page
    cache the kernel can drop, not memory the export holds)."""
    from datasets import load_dataset, load_from_disk

    small, big = tmp_path / "small.sqlite", tmp_path / "big.sqlite"
    _synthetic_store(small, 1_000)
    data_mb = _synthetic_store(big, 50_000, seed=1) / 2**20
    growth = {}
    lines = []
    for fmt in ("parquet", "jsonl", "hf"):
        base = _peak_rss_mb(tmp_path, "preferences", "--store", str(small), "--format", fmt,
                            "-o", str(tmp_path / f"s.{fmt}"))
        started = time.perf_counter()
        peak = _peak_rss_mb(tmp_path, "preferences", "--store", str(big), "--format", fmt,
                            "-o", str(tmp_path / f"b.{fmt}"))
        seconds = time.perf_counter() - started
        growth[fmt] = peak[1] - base[1] if fmt == "hf" else peak[0] - base[0]
        lines.append(f"{fmt}: peak RSS {base[0]:.0f} -> {peak[0]:.0f} MiB, heap {base[1]:.0f} -> {peak[1]:.0f} MiB,"
                     f" {seconds:.1f} s")
    print(f"\nexport of 1k vs 50k rows ({data_mb:.0f} MiB of text): " + "; ".join(lines))
    assert all(mb < data_mb / 4 for mb in growth.values()), (growth, lines)
    assert sum(1 for _ in (tmp_path / "b.jsonl").open()) == 50_000
    ds = load_dataset("parquet", data_files=str(tmp_path / "b.parquet"), split="train",
                      cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 50_000 and ds[49_999]["preference_id"] == "p49999"
    assert len(load_from_disk(str(tmp_path / "b.hf"))) == 50_000
