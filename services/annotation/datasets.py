"""Finds, creates and checks the ranking datasets (one per candidate count) and the
comparison dataset (blind canary A/B pairs, key `COMPARISON`).

Created if missing; if present, checked against the configured layout and refused
with `DatasetMismatch` on a difference that would make responses unreadable. The
guidelines are the one thing updated in place: rolling out guidelines v2 means
pointing the service at `v2.md`; records keep the version they were pushed with.
The comparison dataset has guidelines (and a version) of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import argilla as rg

from shared.contracts import RankingTask
from shared.contracts.tasks import MAX_RANKED, MIN_RANKED

from .argilla_api import unavailable_as_dependency
from .schema import DatasetMismatch, Layout, dataset_name
from .settings import AnnotationOptions

log = logging.getLogger(__name__)

COMPARISON = "ab"
DatasetKey = int | str  # a candidate count (a ranking dataset), or COMPARISON


def key_for(task: RankingTask) -> DatasetKey:
    """Where a task goes: an A/B comparison to the comparison dataset, any other task to
    the ranking dataset for its candidate count."""
    return COMPARISON if task.ab is not None else len(task.candidates)


def read_guidelines(path: Path) -> str:
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"guidelines file {path} is empty")
    return text


class RankingDatasets:
    """Dataset handles by key (candidate count, or COMPARISON), looked up or created
    once, thread-safe (the pusher runs on the consumer thread, the collector on the
    scheduler's)."""

    def __init__(self, client: rg.Argilla | Callable[[], rg.Argilla], options: AnnotationOptions) -> None:
        # A factory defers connecting: the SDK client checks the server when built,
        # and a service must start (and report the outage) while Argilla is down.
        self._client_or_factory = client
        self._connected: rg.Argilla | None = client if isinstance(client, rg.Argilla) else None
        self._options = options
        self._guidelines = read_guidelines(options.guidelines_path)
        self._comparison_guidelines = read_guidelines(options.comparison_guidelines_path)
        self._by_k: dict[DatasetKey, rg.Dataset] = {}
        self._missing_until: dict[DatasetKey, float] = {}  # key -> monotonic time to look again
        self._lock = threading.Lock()

    @property
    def client(self) -> rg.Argilla:
        """The SDK client, connected on first use (DependencyUnavailable while down)."""
        return self._client

    @property
    def _client(self) -> rg.Argilla:
        if self._connected is None:
            factory = self._client_or_factory
            assert callable(factory)
            self._connected = unavailable_as_dependency(factory, "connecting to Argilla")
        return self._connected

    def layout(self, k: DatasetKey) -> Layout:
        o = self._options
        if k == COMPARISON:
            return Layout.comparison(rationale=o.rationale, min_submitted=o.min_submitted)
        assert isinstance(k, int)
        return Layout(k=k, rating_axes=tuple(o.rating_axes), rationale=o.rationale, min_submitted=o.min_submitted)

    def name(self, k: DatasetKey) -> str:
        if k == COMPARISON:
            return self._options.comparison_dataset
        assert isinstance(k, int)
        return dataset_name(self._options.dataset, k)

    def guidelines(self, k: DatasetKey) -> tuple[str, str]:
        """The guidelines text of the dataset and their version."""
        if k == COMPARISON:
            return self._comparison_guidelines, self._options.comparison_version
        return self._guidelines, self._options.version

    def ensure(self, k: DatasetKey) -> rg.Dataset:
        """The dataset for k candidates (or the comparison one), created if missing,
        checked if present."""
        with self._lock:
            if k not in self._by_k:
                self._by_k[k] = unavailable_as_dependency(lambda: self._ensure(k), f"dataset setup (k={k})")
            return self._by_k[k]

    def forget(self, k: DatasetKey) -> None:
        """Drop the cached handle (Argilla said the dataset is gone): the next `ensure`
        looks it up again, or creates it."""
        with self._lock:
            self._by_k.pop(k, None)

    def existing(self, recheck_s: float = 60.0) -> dict[DatasetKey, rg.Dataset]:
        """Every ranking dataset, and the comparison dataset, that exists now (checked),
        for the collector. A dataset found missing is looked up again after `recheck_s`
        (the pusher creates its own through `ensure`, which this sees at once)."""
        keys: list[DatasetKey] = [*range(MIN_RANKED, MAX_RANKED + 1), COMPARISON]
        for k in keys:
            with self._lock:
                skip = k in self._by_k or self._missing_until.get(k, 0.0) > time.monotonic()
            if not skip:
                found = unavailable_as_dependency(lambda: self._find(k), f"dataset lookup (k={k})")
                if found is not None:
                    self.ensure(k)
                else:
                    with self._lock:
                        self._missing_until[k] = time.monotonic() + recheck_s
        with self._lock:
            return dict(self._by_k)

    def _find(self, k: DatasetKey) -> rg.Dataset | None:
        return self._client.datasets(name=self.name(k), workspace=self._options.workspace)

    def _ensure(self, k: DatasetKey) -> rg.Dataset:
        layout = self.layout(k)
        guidelines, version = self.guidelines(k)
        dataset = self._find(k)
        if dataset is None:
            if self._client.workspaces(self._options.workspace) is None:
                rg.Workspace(name=self._options.workspace, client=self._client).create()
            dataset = rg.Dataset(name=self.name(k), workspace=self._options.workspace,
                                 settings=layout.settings(guidelines, self._client), client=self._client).create()
            log.info("created Argilla dataset %s in workspace %s", self.name(k), self._options.workspace)
            return dataset
        problems = layout.mismatches(dataset.settings)
        if problems:
            raise DatasetMismatch(
                f"Argilla dataset {self.name(k)!r} (workspace {self._options.workspace!r}) does not match "
                f"the configured layout: {'; '.join(problems)}. Fix or rename it, or change "
                f"RLHF_ANNOTATION__DATASET / __COMPARISON_DATASET / __RATING_AXES / __RATIONALE / __MIN_SUBMITTED."
            )
        if (dataset.settings.guidelines or "").strip() != guidelines:
            dataset.settings.guidelines = guidelines
            dataset.settings.update()
            log.info("updated the guidelines of %s to %s", self.name(k), version)
        return dataset
