"""Does the loop make the model better? `rlhf-loop up` with its defaults (SmolLM2-135M-
Instruct, simulated annotators with a hidden preference) until K versions were
promoted, then every promoted version measured against the base.

Measurement is separate from the loop: after the loop stops, the base and each
promoted version answer the demo's held-out prompts (never replayed as traffic, never
trained on, never seen by the gates; one seeded sample each, the demo's sampling
settings), and the annotators' own preference scores them. Reported per cycle:

  served version, win rate vs the base with a one-sided sign-test p-value and a 95%
  interval, mean preference score with a 95% interval, the reward model's held-out
  accuracy and its agreement with fresh rankings, the gate's judge verdict, seconds
  per stage, minutes since `up` started, the training job's peak memory;

plus the loop's latencies and each service's resident memory after every run.

Run: .venv/bin/python -m bench.loop_efficacy [--cycles 3 --timeout-s 2400 --eval-prompts 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from services.catalog import EMBEDDED_LOOP
from services.demo.oracles import ORACLES
from services.demo.settings import DemoOptions
from shared.contracts import Preference, RankingResult
from shared.datasets.hh_rlhf import prompt_split
from shared.embedded.ports import free_port_block
from shared.settings import DEFAULT_BASE_MODEL_NAME, KafkaSettings
from shared.stats import compare, mean_interval, wilson_interval
from tests.conftest import read_topic

RESULTS = Path(__file__).parent / "results" / "loop_efficacy.json"
REPO = Path(__file__).resolve().parents[1]


def rss_mb(pattern: str) -> dict[str, float]:
    """Resident memory of each `rlhf-loop run NAME` process."""
    found: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"services.cli" in cmdline and b"run" in cmdline and pattern in cwd:
            name = cmdline[cmdline.index(b"run") + 1].decode()
            kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            found[name] = round(kb / 1024, 1)
    return found


def finished_runs(store: Path) -> list[tuple[str, float, float, str | None]]:
    if not store.exists():
        return []
    with sqlite3.connect(store, timeout=5) as db:
        return list(db.execute("SELECT state, created_at, finished_at, model_version FROM runs "
                               "WHERE finished_at IS NOT NULL ORDER BY created_at"))


def measure(base_model: Path, registry: Path, versions: list[str], oracle_name: str, prompts: int,
            options: DemoOptions) -> dict[str, Any]:
    """Every version and the base on the same held-out prompts and seeds, scored by the
    annotators' preference; each version against the base and against its predecessor."""
    from services.trainer.evaluate import PolicySampler

    oracle = ORACLES[oracle_name]
    held = prompt_split().heldout[:prompts]
    sampler = PolicySampler(str(base_model), {v: registry / "policy" / v for v in versions})
    scores: dict[str, list[float]] = {}
    texts: dict[str, list[str]] = {}
    for version in [None, *versions]:
        answers = sampler.generate(version, held, max_new_tokens=options.max_tokens,
                                   temperature=options.temperature, seed=0)
        name = version or "base"
        scores[name] = [oracle(p[-1]["content"], [a.text])[0] for p, a in zip(held, answers, strict=True)]
        texts[name] = [a.text for a in answers]
    report: dict[str, Any] = {"prompts": len(held), "samples": {k: v[:3] for k, v in texts.items()}, "versions": {}}
    previous = "base"
    for name in ["base", *versions]:
        mean, low, high = mean_interval(scores[name])
        entry: dict[str, Any] = {"oracle_mean": round(mean, 3), "oracle_ci95": [round(low, 3), round(high, 3)],
                                 "words_mean": round(statistics.fmean(len(t.split()) for t in texts[name]), 1)}
        if name != "base":
            vs_base = compare(scores[name], scores["base"])
            vs_prev = compare(scores[name], scores[previous])
            entry.update({"vs_base": {**vs_base.as_dict(), "ci95": [round(x, 3) for x in wilson_interval(
                vs_base.wins + 0.5 * vs_base.ties, vs_base.n)]}, "vs_previous": {"version": previous,
                                                                                   **vs_prev.as_dict()}})
            previous = name
        report["versions"][name] = entry
    return report


def copy_lines(stream: Any, path: Path, first: str) -> None:
    with open(path, "w") as out:
        out.write(first)
        for line in stream:
            out.write(line)
            out.flush()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=3, help="promoted versions to wait for")
    parser.add_argument("--timeout-s", type=float, default=2400)
    parser.add_argument("--eval-prompts", type=int, default=128, help="held-out prompts per measured version")
    parser.add_argument("--env", action="append", default=[], metavar="RLHF_X=VALUE",
                        help="a setting for the loop's services (overrides the demo's)")
    args = parser.parse_args()
    models_dir = Path(os.environ.get("RLHF_MODELS_DIR", REPO / ".rlhf-loop" / "models"))
    settings = dict(item.split("=", 1) for item in args.env)
    options = DemoOptions(**{k.removeprefix("RLHF_DEMO__").lower(): v for k, v in settings.items()
                             if k.startswith("RLHF_DEMO__")})
    with tempfile.TemporaryDirectory(prefix="rlhf-efficacy-") as tmp:
        data = Path(tmp)
        base_port = free_port_block(len(EMBEDDED_LOOP))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
        env.update({"RLHF_MODELS_DIR": str(models_dir), **settings})
        started_wall = time.time()
        up = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--data-dir", str(data),
                               "--http-port-base", str(base_port), "--status-interval", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp)
        assert up.stdout is not None
        banner = ""
        while "Ctrl-C" not in banner:
            line = up.stdout.readline()
            assert line, banner
            banner += line
        bootstrap = banner.split("RLHF_KAFKA__BOOTSTRAP_SERVERS=", 1)[1].split()[0]
        # keep draining up's output (status lines) into a file: a full pipe would block it
        up_log = RESULTS.with_name("loop_efficacy.up.log")
        up_log.parent.mkdir(parents=True, exist_ok=True)
        drain = threading.Thread(target=copy_lines, args=(up.stdout, up_log, banner), daemon=True)
        drain.start()
        store = data / "trainer" / "store.sqlite"
        memory: list[dict[str, float]] = []
        seen_runs = 0
        try:
            while time.time() - started_wall < args.timeout_s:
                time.sleep(5)
                runs = finished_runs(store)
                if len(runs) > seen_runs:
                    seen_runs = len(runs)
                    memory.append(rss_mb(tmp))
                    print(f"{(time.time() - started_wall) / 60:5.1f} min: run {seen_runs} {runs[-1][0]}"
                          f" ({runs[-1][3]})", flush=True)
                if sum(1 for r in runs if r[0] == "succeeded") >= args.cycles:
                    break
            kafka = KafkaSettings(bootstrap_servers=bootstrap)
            rankings = [RankingResult.model_validate_json(r.value)
                        for r in read_topic(kafka, "rlhf.rankings", expected=10**6, timeout_s=5)]
            preferences = [Preference.model_validate_json(r.value)
                           for r in read_topic(kafka, "rlhf.preferences", expected=10**6, timeout_s=5)]
        finally:
            loop_seconds = time.time() - started_wall
            up.send_signal(signal.SIGINT)
            up.wait(timeout=180)
        runs = finished_runs(store)
        registry = data / "registry"
        submitted = {r.ranking_id: max(a.submitted_at for a in r.annotations) for r in rankings}
        latencies = [(p.created_at - submitted[p.ranking_id]).total_seconds()
                     for p in preferences if p.ranking_id in submitted]
        cycles = []
        for state, created, finished, version in runs:
            kind = "reward" if (version or "").startswith("rm-") else "policy"
            manifest_path = registry / kind / (version or "-") / "manifest.json"
            manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
            metrics = manifest.get("metrics", {})
            cycles.append({
                "state": state, "version": version, "minutes_since_up": round((finished - started_wall) / 60, 1),
                "run_seconds": round(finished - created, 1), "init": manifest.get("init"),
                "preferences": (manifest.get("preferences") or {}).get("preference_count"),
                "rm_accuracy": metrics.get("rm_accuracy"), "rm_heldout_pairs": metrics.get("rm_heldout_pairs"),
                "rm_live_agreement": metrics.get("rm_live_agreement"), "rm_live_pairs": metrics.get("rm_live_pairs"),
                "gate": manifest.get("gate"), "judge_win_rate": metrics.get("win_rate"),
                "judge_p_value": metrics.get("p_value"), "kl": metrics.get("kl"),
                "stage_seconds": {k.removeprefix("stage_seconds_"): round(v, 1) for k, v in metrics.items()
                                  if k.startswith("stage_seconds_")},
                "job_peak_rss_mb": metrics.get("job_peak_rss_mb")})
        promoted = [c["version"] for c in cycles if c["state"] == "succeeded" and c["version"]]
        measured = measure(models_dir / DEFAULT_BASE_MODEL_NAME, registry, promoted, options.oracle,
                           args.eval_prompts, options)
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "loop_minutes": round(loop_seconds / 60, 1), "oracle": options.oracle, "cycles": cycles,
        "first_promoted_minutes": next((c["minutes_since_up"] for c in cycles if c["state"] == "succeeded"), None),
        "measurement": measured,
        "submission_to_preference_s": {"p50": round(percentile(latencies, 0.5), 2),
                                       "p95": round(percentile(latencies, 0.95), 2), "n": len(latencies)},
        "rss_mb_after_each_run": memory,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
