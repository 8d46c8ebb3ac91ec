"""Manual trigger without the service: `python -m services.trainer.cli run [--reason R]`.

Uses the same store, lock and job process as the service, so it refuses to start
while the service (or another CLI) holds the run lock."""

from __future__ import annotations

import argparse
import sys

from prometheus_client import CollectorRegistry

from shared.bus import EventProducer

from .metrics import TrainerMetrics
from .runs import RunRejected
from .service import build_coordinator, open_store
from .settings import TrainerSettings


def trigger_run(settings: TrainerSettings, reason: str = "manual (cli)", timeout_s: float = 24 * 3600) -> tuple[str, str | None]:
    """Start a run and wait for it; returns (run_id, final state)."""
    store = open_store(settings)
    producer = EventProducer(settings.kafka)
    try:
        coordinator = build_coordinator(settings, store, producer, TrainerMetrics(CollectorRegistry()))
        coordinator.recover()
        run_id = coordinator.start_run(reason)
        return run_id, coordinator.wait(run_id, timeout_s)
    finally:
        producer.close()
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.trainer.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start a training run now and wait for it")
    run.add_argument("--reason", default="manual (cli)")
    args = parser.parse_args(argv)
    try:
        run_id, state = trigger_run(TrainerSettings(), args.reason)
    except RunRejected as error:
        print(f"no run: {error}", file=sys.stderr)
        return 1
    print(f"{run_id} {state}")
    return 0 if state in ("succeeded", "gated") else 1


if __name__ == "__main__":
    raise SystemExit(main())
