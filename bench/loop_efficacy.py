"""The whole loop, measured: `rlhf-loop up` (embedded, demo on) until K policies were
promoted, then per cycle the reward model's held-out accuracy and the served policy's
oracle score, plus the loop's latencies and the services' memory across cycles.

The simulated annotators follow a fixed hidden preference (the demo's `length`
oracle: longer answers win). If the loop works, the reward model learns to predict
it (accuracy above 0.5) and each promoted policy writes longer answers than the base.

  submission -> preference: from an annotator's submitted_at to the preference event
  threshold -> published:   from the run being queued (threshold reached) to its end
  RSS:                       each service's resident memory after every finished run

Run: .venv/bin/python -m bench.loop_efficacy [--cycles 3 --timeout-s 900]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from services.catalog import EMBEDDED_LOOP
from services.demo.oracles import prefer_longer
from services.demo.replay import replay_prompts
from shared.contracts import Preference, RankingResult
from shared.embedded.ports import free_port_block
from shared.settings import KafkaSettings
from tests.conftest import read_topic

RESULTS = Path(__file__).parent / "results" / "loop_efficacy.json"


def rss_mb(pattern: str) -> dict[str, float]:
    """Resident memory of each `rlhf-loop run NAME` process (children included)."""
    found: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if b"services.cli" in cmdline and b"run" in cmdline and pattern in os.readlink(f"/proc/{pid}/cwd"):
            name = cmdline[cmdline.index(b"run") + 1].decode()
            kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            found[name] = kb / 1024
    return found


def finished_runs(store: Path) -> list[tuple[str, float, float, str | None]]:
    if not store.exists():
        return []
    with sqlite3.connect(store, timeout=5) as db:
        return list(db.execute("SELECT state, created_at, finished_at, model_version FROM runs "
                               "WHERE finished_at IS NOT NULL ORDER BY created_at"))


def oracle_scores(base: Path, registry: Path, versions: list[str], prompts: int = 32) -> dict[str, float]:
    from services.policy_server.models import BASE_VERSION, PolicyPool

    pool = PolicyPool(base)
    for version in versions:
        pool.load(version, registry / "policy" / version)
    held = replay_prompts(limit=2000)[-prompts:]
    scores = {}
    for version in [BASE_VERSION, *versions]:
        values = []
        for i, messages in enumerate(held):
            answers = [g.text for g in pool.generate(messages, version, n=1, max_tokens=24, temperature=1.0,
                                                      top_p=1.0, seed=i)]
            values += prefer_longer("", answers)
        scores[version] = statistics.fmean(values)
    return scores


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=3, help="promoted policies to wait for")
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--env", action="append", default=[], metavar="RLHF_X=VALUE",
                        help="a setting for the loop's services (overrides the demo's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlhf-efficacy-") as tmp:
        data = Path(tmp)
        base = free_port_block(len(EMBEDDED_LOOP))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
        env.update(dict(item.split("=", 1) for item in args.env))
        up = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--data-dir", str(data),
                               "--http-port-base", str(base), "--status-interval", "30"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp)
        assert up.stdout is not None
        banner = ""
        while "Ctrl-C" not in banner:
            banner += up.stdout.readline()
        bootstrap = banner.split("RLHF_KAFKA__BOOTSTRAP_SERVERS=", 1)[1].split()[0]
        store = data / "trainer" / "store.sqlite"
        memory: list[dict[str, float]] = []
        seen_runs = 0
        started = time.monotonic()
        try:
            while time.monotonic() - started < args.timeout_s:
                time.sleep(5)
                runs = finished_runs(store)
                if len(runs) > seen_runs:
                    seen_runs = len(runs)
                    memory.append(rss_mb(tmp))
                    print(f"run {seen_runs} finished: {runs[-1][0]} ({runs[-1][3]})", flush=True)
                if sum(1 for r in runs if r[0] == "succeeded") >= args.cycles:
                    break
            kafka = KafkaSettings(bootstrap_servers=bootstrap)
            rankings = [RankingResult.model_validate_json(r.value)
                        for r in read_topic(kafka, "rlhf.rankings", expected=10**6, timeout_s=5)]
            preferences = [Preference.model_validate_json(r.value)
                           for r in read_topic(kafka, "rlhf.preferences", expected=10**6, timeout_s=5)]
        finally:
            up.send_signal(signal.SIGINT)
            up.communicate(timeout=120)
        runs = finished_runs(store)
        submitted = {r.ranking_id: max(a.submitted_at for a in r.annotations) for r in rankings}
        latencies = [(p.created_at - submitted[p.ranking_id]).total_seconds()
                     for p in preferences if p.ranking_id in submitted]
        registry = data / "registry"
        cycles = []
        for state, created, finished, version in runs:
            kind = "reward" if (version or "").startswith("rm-") else "policy"  # a gated RM ends its run
            manifest_path = registry / kind / (version or "-") / "manifest.json"
            manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
            cycles.append({"state": state, "version": version, "seconds": round(finished - created, 1),
                           "rm_accuracy": manifest.get("metrics", {}).get("rm_accuracy"),
                           "reward_mean": manifest.get("metrics", {}).get("reward_mean"),
                           "gate_passed": manifest.get("gate", {}).get("passed")})
        promoted = [c["version"] for c in cycles if c["state"] == "succeeded" and c["version"]]
        scores = oracle_scores(data / "tiny-models" / "policy", registry, promoted)
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cycles": cycles, "oracle_score_by_version": {k: round(v, 2) for k, v in scores.items()},
        "submission_to_preference_s": {"p50": round(percentile(latencies, 0.5), 2),
                                       "p95": round(percentile(latencies, 0.95), 2), "n": len(latencies)},
        "threshold_to_published_s": {"p50": round(percentile([c["seconds"] for c in cycles], 0.5), 1),
                                     "max": max((c["seconds"] for c in cycles), default=None)},
        "rss_mb_after_each_run": memory,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
