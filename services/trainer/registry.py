"""A model registry in a directory: versioned reward models and policies.

    <data_dir>/registry/
      reward/rm-v0001/      model files + manifest.json
      reward/latest.json    {"version": ...}   newest published
      reward/promoted.json  {"version": ...}   what training warm-starts from / serves
      policy/policy-v0001/  LoRA adapter + value/ + manifest.json
      policy/latest.json, policy/promoted.json
      .staging/<run>-<kind>/ work in progress, never read

A version appears by one `os.rename` of a complete staging directory (manifest
written last, everything fsynced), so a crash leaves either nothing or a whole
model. Pointers are small JSON files replaced with `os.replace`.

This module is the only writer. Reading (pointers, completeness, manifests) lives
in shared/registry_reader.py, which every service reads through; `ModelRegistry`
extends it, so the trainer reads exactly as the sampler and the policy server do.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from shared.registry_reader import (
    MANIFEST,
    PREFIX,
    Kind,
    RegistryReader,
    version_number,
)

__all__ = ["MANIFEST", "PREFIX", "Kind", "ModelRegistry", "version_number", "write_json_atomic"]


def _fsync_dir(path: Path) -> None:
    """A directory's entries are durable only once the directory itself is fsynced
    (a rename or a new file is an entry)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Every file and every directory under `path`, deepest first."""
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)  # the replace itself survives a crash


class ModelRegistry(RegistryReader):
    def __init__(self, root: str | Path, create: bool = True) -> None:
        """`create=False` for a writer that must not create the layout yet (readers
        use shared.registry_reader.RegistryReader, which never writes)."""
        super().__init__(root)
        self.staging_root = self.root / ".staging"
        if not create:
            return
        for kind in PREFIX:
            (self.root / kind).mkdir(parents=True, exist_ok=True)
        self.staging_root.mkdir(parents=True, exist_ok=True)

    # -- writing ----------------------------------------------------------------------

    def rollback(self, kind: Kind, version: str) -> str | None:
        """Mark `version` rolled back and, if it is promoted, move the promoted pointer
        to its last good version (None: back to the base). Idempotent: a rollback
        heard twice changes nothing the second time. Returns the version now promoted."""
        marked = self.rolled_back(kind)
        if version not in marked:
            write_json_atomic(self.root / kind / "rolled_back.json", {"versions": [*marked, version]})
        target = self.last_good(kind, version)
        if self.pointer(kind, "promoted") == version:
            if target:
                self.set_pointer(kind, "promoted", target)
            else:
                (self.root / kind / "promoted.json").unlink(missing_ok=True)
        return self.pointer(kind, "promoted")

    def record_decision(self, kind: Kind, version: str, decision: dict[str, Any]) -> None:
        """Write the canary judge's decision into the version's manifest (replaced
        atomically: a reader sees the old manifest or the new one, never none, so the
        version stays complete). Readers: RegistryReader.canary_decision."""
        manifest = self.manifest(kind, version)
        write_json_atomic(self.path(kind, version) / MANIFEST, {**manifest, "canary_decision": decision})

    def next_version(self, kind: Kind) -> str:
        numbers = [int(v.rsplit("-v", 1)[1]) for v in self.versions(kind)]
        return f"{PREFIX[kind]}-v{(max(numbers) + 1 if numbers else 1):04d}"

    def staging(self, run_id: str, kind: Kind) -> Path:
        """A fresh directory to save a model into before it is published."""
        path = self.staging_root / f"{run_id}-{kind}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def publish(self, kind: Kind, staged: Path, manifest: dict[str, Any]) -> str:
        """Make `staged` a version: manifest last, fsync, one rename. Returns the version."""
        version = self.next_version(kind)
        manifest = {**manifest, "version": version, "kind": kind, "published_at": time.time()}
        with open(staged / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        _fsync_tree(staged)
        os.rename(staged, self.path(kind, version))  # atomic; fails if the version exists
        _fsync_dir(self.root / kind)
        self.set_pointer(kind, "latest", version)
        return version

    def set_pointer(self, kind: Kind, name: Literal["latest", "promoted"], version: str) -> None:
        write_json_atomic(self.root / kind / f"{name}.json", {"version": version, "updated_at": time.time()})

    def clean_staging(self, keep: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
        """Remove leftovers of crashed runs (names not starting with a run id in `keep`)."""
        removed = []
        for path in self.staging_root.iterdir():
            if not any(path.name.startswith(run_id) for run_id in keep):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed
