"""The model registry, read side: the one reading of pointers, completeness and
manifests that the trainer, the sampler, the annotation service and the policy
server share.

Layout (written by services/trainer/registry.py, the only writer):

    <registry>/reward/rm-v0001/        model files + manifest.json (written last)
    <registry>/reward/promoted.json    {"version": ...}, also latest.json
    <registry>/reward/rolled_back.json {"versions": [...]}
    <registry>/policy/policy-v0001/ ...

Why one module: a reader that decides on its own what "published" means drifts from
the writer (one copy accepted a directory without its manifest, another a pointer
naming anything at all). Here a version is *complete* when its directory holds the
manifest, because the writer renames a fully fsynced directory with the manifest
already in it; a pointer names a version only if the name is one the writer makes
(`rm-vNNNN`, `policy-vNNNN`) and that version is complete, so a pointer can never
lead a reader outside `<registry>/<kind>/`.

Standard library only, and nothing is ever created: the policy server mounts the
registry read-only and may start before the trainer ever wrote it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

Kind = Literal["reward", "policy"]
Pointer = Literal["latest", "promoted"]
PREFIX: dict[str, str] = {"reward": "rm", "policy": "policy"}
MANIFEST = "manifest.json"


def version_number(kind: Kind, name: str) -> int | None:
    """The number in a version name as the writer makes it (`policy-v0003` -> 3);
    None for anything else, so a name from outside (an event, a pointer file) can be
    refused before it is ever used as a path."""
    match = re.fullmatch(rf"{PREFIX[kind]}-v(\d{{4,}})", name)
    return int(match.group(1)) if match else None


class RegistryReader:
    """Read-only view of a registry directory. Reads raise OSError/ValueError when the
    files are unreadable or corrupt; callers decide whether that is a dependency being
    down (policy server) or a reason to keep what they have (sampler)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, kind: Kind, version: str) -> Path:
        return self.root / kind / version

    def complete(self, kind: Kind, version: str) -> bool:
        """A published version: its directory holds the manifest (written last)."""
        return (self.path(kind, version) / MANIFEST).is_file()

    def versions(self, kind: Kind) -> list[str]:
        """Complete versions, oldest first (a directory counts only with its manifest)."""
        folder = self.root / kind
        if not folder.is_dir():
            return []
        found = [(number, p.name) for p in folder.iterdir()
                 if (number := version_number(kind, p.name)) is not None and self.complete(kind, p.name)]
        return [name for _n, name in sorted(found)]

    def manifest(self, kind: Kind, version: str) -> dict[str, Any]:
        return dict(json.loads((self.path(kind, version) / MANIFEST).read_text()))

    def pointer(self, kind: Kind, name: Pointer) -> str | None:
        """The version `<kind>/<name>.json` names, or None when there is no pointer, or
        it names something that is not a complete version of this registry."""
        file = self.root / kind / f"{name}.json"
        if not file.is_file():
            return None
        version = json.loads(file.read_text()).get("version")
        if not isinstance(version, str) or version_number(kind, version) is None:
            return None
        return version if self.complete(kind, version) else None

    def pointed_path(self, kind: Kind, name: Pointer) -> Path | None:
        """The directory of the version a pointer names (None: see `pointer`)."""
        version = self.pointer(kind, name)
        return self.path(kind, version) if version else None

    def trained_upto(self, kind: Kind, version: str) -> int:
        """The highest preference `seq` the version was trained on (0 if unknown):
        preferences above it are data the version has never seen."""
        seq_range = (self.manifest(kind, version).get("preferences") or {}).get("seq_range")
        return int(seq_range[1]) if seq_range else 0

    def canary_decision(self, kind: Kind, version: str) -> dict[str, Any] | None:
        """The canary judge's decision on `version` (CanaryDecision as JSON: outcome
        graduate/rollback/keep, reason, the counts and the test's numbers), written
        into its manifest when the judge decided; None while undecided."""
        decision = self.manifest(kind, version).get("canary_decision")
        return dict(decision) if isinstance(decision, dict) else None

    def rolled_back(self, kind: Kind) -> list[str]:
        file = self.root / kind / "rolled_back.json"
        return list(json.loads(file.read_text()).get("versions", [])) if file.is_file() else []

    def last_good(self, kind: Kind, version: str) -> str | None:
        """What a rollback of `version` returns to: its parent (the version promoted
        before it), skipping any that were rolled back themselves."""
        rolled_back = set(self.rolled_back(kind))
        parent = self.manifest(kind, version).get("parent_version")
        while parent and parent in rolled_back:
            parent = self.manifest(kind, parent).get("parent_version")
        return parent
