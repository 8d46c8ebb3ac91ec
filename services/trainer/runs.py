"""Starts runs, one at a time, and watches them.

The lock is a row in the store (pid, host, heartbeat), so it survives a restart of
the service: a lock whose holder is dead is reclaimed and its run marked failed.
While a job runs, a watcher thread heartbeats the lock and, when the job exits,
reports `failed` if the job died without reporting an end itself (SIGKILL, OOM).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from shared.contracts import CanaryDecision, random_id

from .executor import Executor, JobHandle, JobSpec
from .metrics import TrainerMetrics
from .registry import ModelRegistry
from .reporting import RunReporter
from .run_job import job_payload
from .settings import TrainerSettings
from .store import ACTIVE_STATES, PreferenceStore

log = logging.getLogger(__name__)


class RunRejected(Exception):
    """A run could not start; `status` is the HTTP status that says why."""

    def __init__(self, reason: str, status: int = 409) -> None:
        super().__init__(reason)
        self.status = status


class RunCoordinator:
    def __init__(self, settings: TrainerSettings, store: PreferenceStore, registry: ModelRegistry,
                 reporter: RunReporter, executor: Executor, metrics: TrainerMetrics,
                 heartbeat_s: float = 2.0) -> None:
        self.settings, self.store, self.registry = settings, store, registry
        self.reporter, self.executor, self.metrics = reporter, executor, metrics
        self.heartbeat_s = heartbeat_s
        self.runs_dir = Path(settings.data_dir) / "trainer" / "runs"
        self._guard = threading.Lock()
        self._watchers: dict[str, threading.Thread] = {}
        self._handles: dict[str, JobHandle] = {}
        self._closing = threading.Event()
        self.on_finished: Callable[[str, str], None] | None = None

    # -- start-up ---------------------------------------------------------------------

    def recover(self) -> list[str]:
        """After a restart: reclaim a dead holder's lock, fail runs left active, and
        delete half-written staging directories. Returns the runs marked failed."""
        failed: list[str] = []
        holder = self.store.lock_holder()
        if holder and self.store.is_stale(holder, self.settings.trainer.lock_stale_s):
            self.store.release_lock(holder.run_id)
        for run_id in self.store.fail_orphaned_runs("trainer restarted mid-run"):
            self.reporter.state(run_id, "failed", reason="trainer restarted mid-run")
            self.metrics.observe_run("failed", {})
            failed.append(run_id)
        holder = self.store.lock_holder()
        self.registry.clean_staging(keep={holder.run_id} if holder else set())
        self.refresh_gauges()
        return failed

    def refresh_gauges(self) -> None:
        self.metrics.new_preferences.set(self.store.new_since_last_training())
        self.metrics.set_run_counts(self.store.run_counts())
        self.metrics.set_versions({(kind, pointer): self.registry.pointer(kind, pointer)  # type: ignore[arg-type]
                                   for kind in ("reward", "policy") for pointer in ("latest", "promoted")})

    # -- runs -------------------------------------------------------------------------

    def start_run(self, trigger: str) -> str:
        """Queue and launch a run now; raises RunRejected (busy, too little data)."""
        with self._guard:
            if self._closing.is_set():
                raise RunRejected("trainer is shutting down", 503)
            count = self.store.preference_count()
            if count < self.settings.trainer.min_preferences:
                raise RunRejected(f"{count} preferences stored; a run needs {self.settings.trainer.min_preferences}",
                                  422)
            run_id = random_id()
            taken, reclaimed = self.store.try_lock(run_id, self.settings.trainer.lock_stale_s)
            if not taken:
                holder = self.store.lock_holder()
                raise RunRejected(f"run {holder.run_id if holder else '?'} is in progress")
            if reclaimed:
                self.reporter.state(reclaimed, "failed", reason="trainer process died mid-run (stale lock reclaimed)")
            watermark = self.store.max_seq()
            self.store.create_run(run_id, trigger, watermark, count)
            self.reporter.state(run_id, "queued", reason=f"trigger: {trigger}", preference_count=count)
            self.metrics.run_active.set(1)
            try:
                handle = self.executor.submit(self._job_spec(run_id, watermark))
            except Exception as error:
                self._end(run_id, None, f"could not start the job: {type(error).__name__}: {error}")
                raise RunRejected(str(error), 500) from error
            self._handles[run_id] = handle
            watcher = threading.Thread(target=self._watch, args=(run_id, handle), name=f"run-{run_id[:8]}", daemon=True)
            self._watchers[run_id] = watcher
            watcher.start()
            log.info("run %s started (%s, %d preferences, job pid %d)", run_id, trigger, count, handle.pid)
            return run_id

    def _job_spec(self, run_id: str, watermark: int) -> JobSpec:
        run_dir = self.runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        job_file = run_dir / "job.json"
        job_file.write_text(json.dumps(job_payload(run_id, watermark, self.settings)))
        return JobSpec(run_id=run_id, job_file=job_file, log_file=run_dir / "run.log")

    def _watch(self, run_id: str, handle: JobHandle) -> None:
        code = None
        while code is None:
            code = handle.wait(self.heartbeat_s)
            if code is None:
                self.store.heartbeat(run_id)
        self._end(run_id, code, None)

    def _end(self, run_id: str, code: int | None, reason: str | None) -> None:
        """The job is gone: settle its state, release the lock, update gauges."""
        run = self.store.get_run(run_id)
        if run is not None and run.state in ACTIVE_STATES:
            reason = reason or (f"job exited with code {code}" if code is not None and code >= 0
                                else f"job killed by signal {-code}" if code is not None else "job vanished")
            if self._closing.is_set():
                reason = f"trainer shut down mid-run ({reason})"
            self.reporter.state(run_id, "failed", reason=reason)
            run = self.store.get_run(run_id)
        self.store.release_lock(run_id)
        self._handles.pop(run_id, None)
        outcome = run.state if run else "failed"
        self.metrics.observe_run(outcome, run.metrics if run else {})
        self.metrics.run_active.set(0)
        self.refresh_gauges()
        log.info("run %s ended: %s%s", run_id, outcome, f" ({run.reason})" if run and run.reason else "")
        if self.on_finished:
            self.on_finished(run_id, outcome)

    def rollback(self, version: str | None, reason: str,
                 decision: CanaryDecision | None = None) -> tuple[str, str | None]:
        """An operator's (or the canary judge's, with its `decision`) rollback: `version`
        (default: the promoted one) is marked rolled back, the promoted pointer returns
        to its last good version, and `rolled_back` tells every policy server. Returns
        (rolled back, now promoted)."""
        with self._guard:
            version = version or self.registry.pointer("policy", "promoted")
            if not version or version not in self.registry.versions("policy"):
                raise RunRejected(f"no such policy version: {version!r}", 404 if version else 409)
            target = self.registry.rollback("policy", version)
            manifest = self.registry.manifest("policy", version)
            self.reporter.model_update(
                action="rolled_back", model_version=version, run_id=manifest.get("run_id"),
                base_model=str(manifest.get("base_model") or self.settings.trainer.base_model),
                adapter_uri=self.registry.path("policy", version).resolve().as_uri(),
                reward_model_version=manifest.get("reward_model_version"), previous_version=target,
                gate_passed=bool(manifest.get("gate", {}).get("passed", False)), gate_reasons=[reason[:500]],
                metrics=decision.numbers() if decision else {}, decision=decision)
            self.refresh_gauges()
            log.warning("policy %s rolled back (%s); promoted is now %s", version, reason, target or "the base")
            return version, target

    def active_run(self) -> str | None:
        holder = self.store.lock_holder()
        return holder.run_id if holder else None

    def handle(self, run_id: str) -> JobHandle | None:
        return self._handles.get(run_id)

    def wait(self, run_id: str, timeout_s: float) -> str | None:
        """Block until `run_id` ended; returns its final state (tests, the CLI)."""
        watcher = self._watchers.get(run_id)
        if watcher is not None:
            watcher.join(timeout_s)
        run = self.store.get_run(run_id)
        return run.state if run and run.state not in ACTIVE_STATES else None

    def close(self, grace_s: float = 10.0) -> None:
        """Shutdown: a run in flight is killed and reported failed (a restart would
        fail it anyway; this says so at once)."""
        self._closing.set()
        for handle in list(self._handles.values()):
            handle.kill()
        for watcher in list(self._watchers.values()):
            watcher.join(grace_s)
