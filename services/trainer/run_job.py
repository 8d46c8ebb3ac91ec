"""The training job process: `python -m services.trainer.run_job JOB_JSON`.

The service (or a Kubernetes Job) starts one per run, so a crash, an OOM or a
SIGKILL takes down only the run, and the memory of a run is returned to the OS
when it ends (the daemon's RSS stays flat across cycles). The job reports its own
transitions; the service reports `failed` for a job that died without doing so.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

EXIT_FAILED = 1


def job_payload(run_id: str, watermark: int, settings: Any) -> dict[str, Any]:
    """What a job needs, as JSON. Secrets are left out: the job reads them from its
    environment (inherited locally, a Kubernetes Secret in a Job)."""
    dumped = settings.model_dump(mode="json", exclude={"kafka": {"sasl_password"}})
    return {"run_id": run_id, "watermark": watermark, "settings": dumped}


def run(job: dict[str, Any]) -> int:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from shared.bus import EventProducer

    from .device import resolve_device
    from .distributed import Ranks
    from .pipeline import RunAborted, TrainingRun
    from .registry import ModelRegistry
    from .reporting import RunReporter
    from .settings import TrainerSettings
    from .store import PreferenceStore

    settings = TrainerSettings(**job["settings"])
    data_dir = Path(settings.data_dir)
    run_id = job["run_id"]
    device = resolve_device(settings.trainer.device)
    ranks = Ranks.from_launcher(device)  # rank 0 of 1 without `accelerate launch`
    if ranks.distributed:
        _die_with_launcher()
    store = PreferenceStore(data_dir / "trainer" / "store.sqlite")
    producer = EventProducer(settings.kafka) if ranks.is_main else None  # rank 0 alone reports
    reporter = RunReporter(store, lambda topic, event: producer.publish(topic, event, timeout_s=30))
    try:
        for path in {settings.trainer.base_model, settings.trainer.reward_base_model}:
            if not (Path(path) / "config.json").is_file():
                raise FileNotFoundError(f"no model at {path}: run `rlhf-loop models smollm2 {path}` or set "
                                        "RLHF_TRAINER__BASE_MODEL / RLHF_TRAINER__REWARD_BASE_MODEL")
        import torch

        if settings.trainer.torch_threads:
            torch.set_num_threads(settings.trainer.torch_threads)
        torch.manual_seed(settings.trainer.hyper.seed)
        logging.getLogger(__name__).info("run %s on %s (rank %d of %d)", run_id, device, ranks.rank,
                                         ranks.world_size)
        TrainingRun(run_id=run_id, watermark=int(job["watermark"]), options=settings.trainer, store=store,
                    registry=ModelRegistry(data_dir / "registry"), reporter=reporter, device=device,
                    work_dir=data_dir / "trainer", ranks=ranks).execute()
        return 0
    except RunAborted as error:
        logging.getLogger(__name__).error("%s", error)
        return EXIT_FAILED
    except Exception as error:
        traceback.print_exc()
        if ranks.is_main:
            reporter.state(run_id, "failed", reason=f"{type(error).__name__}: {error}")
        else:  # the launcher stops rank 0, which cannot report why: the coordinator marks the run failed
            logging.getLogger(__name__).error("rank %d failed: %s: %s", ranks.rank, type(error).__name__, error)
        return EXIT_FAILED
    finally:
        if producer is not None:
            producer.close()
        store.close()


def _die_with_launcher() -> None:
    """A rank is the launcher's child: it gets SIGKILL when the launcher dies (the
    coordinator kills the launcher on cancel or shutdown), so no rank outlives its run."""
    from .executor import _die_with_parent

    _die_with_parent()


def main(argv: list[str]) -> int:
    from shared.lifecycle import configure_logging

    configure_logging(os.environ.get("RLHF_LOG_LEVEL", "INFO"))
    job = json.loads(Path(argv[0]).read_text())
    return run(job)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
